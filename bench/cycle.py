"""In-memory request cycles: µs per keep-alive request through spcore's stack, per HTTP codec.

A server ``Connection`` and a client (a TLS client engine, or nothing for plain HTTP) are
joined in memory: no socket, no driver, no event loop. The client sends a keep-alive
``GET /hello`` and reads the response; the server side is called exactly as a driver would
(``receive_data``, ``next_action``, ``sent``). Only the CPU time of the server's calls is
counted (``time.thread_time``: a shared machine's other work, which takes the core away,
does not count), so the figure is the core's cost per request, without the client's work or
wrk's noise. Each configuration runs ``--rounds`` times (interleaved) and the median is
printed.

    python bench/cycle.py                 # every codec, plain and TLS
    python bench/cycle.py --profile h11   # cProfile of one configuration, by own time

This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import inspect
import pathlib
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from spcore.certs import CertPair, dev_certificate
from spcore.config import Limits
from spcore.connection import Connection
from spcore.http.messages import Request, Response
from spcore.http.protocol import HTTPProtocol
from spcore.server import Listener, Server

REQUEST = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nUser-Agent: cycle\r\nAccept: */*\r\n\r\n"
BODY = b"Hello, world!"
HEADERS = [("content-type", "text/plain; charset=utf-8")]


def hello(request: Request) -> Response:
    """The benchmark app (``bench/spcore_hello.py``): ``Hello, world!`` as text/plain."""
    return Response(200, HEADERS, BODY)


def codecs() -> list[str]:
    """The codecs this spcore has. (The script also runs on commits from before the codecs,
    where the HTTP layer was h11 alone and had no choice, to compare with them.)"""
    if "http" not in inspect.signature(HTTPProtocol).parameters:
        return ["h11"]
    from spcore.http.codecs import available_codecs

    return available_codecs()


def protocol_factory(codec: str) -> Callable[[], HTTPProtocol]:
    if "http" not in inspect.signature(HTTPProtocol).parameters:
        return lambda: HTTPProtocol(hello)
    return lambda: HTTPProtocol(hello, http=codec)  # type: ignore[call-arg]


def tls_ends(pair: CertPair) -> tuple[object, Any]:
    """The listener's TLS setting and a client engine for ``pair`` (through the neutral
    configuration; on commits from before it, through an ``ssl.SSLContext``)."""
    try:
        from spcore.tls import Certificate, ClientContext, ClientTLS, ServerTLS
    except ImportError:
        from spcore.tls import client_context, server_context  # type: ignore[attr-defined]
        from spcore.tls.openssl import OpenSSLEngine

        context = client_context(cafile=pair.certfile)
        client = OpenSSLEngine(context, server_side=False, server_hostname="localhost")
        return server_context(pair.certfile, pair.keyfile), client
    client = ClientContext(ClientTLS(trust=pair.certfile)).new_engine("localhost")
    return ServerTLS(Certificate(pair.certfile, pair.keyfile)), client


class Cycle:
    """One server connection and its client, joined in memory."""

    def __init__(self, codec: str, tls: bool, certs: pathlib.Path) -> None:
        server_tls: Any = None
        client: Any = None
        if tls:
            pair = dev_certificate(datetime.datetime.now(datetime.timezone.utc), certs)
            server_tls, client = tls_ends(pair)
        listener = Listener(protocol_factory(codec), tls=server_tls)
        self.server = Server([listener], Limits())
        self.server.start(1000.0, 1_700_000_000.0)
        self.now = 1000.0
        self.conn: Connection = self.server.accept(listener, ("127.0.0.1", 1), ("127.0.0.1", 2), 0)
        self.client = client
        self.busy = 0.0  # CPU seconds spent inside the server's calls
        if client is not None:
            client.start()
            for _ in range(10):  # the handshake
                self._to_server(client.data_to_send())
                answer = self._from_server()
                if answer:
                    client.receive_data(answer)
            assert client.info is not None, "the TLS handshake did not complete"
        self.expected = len(self.request())

    def _to_server(self, data: bytes) -> None:
        if data:
            start = time.thread_time()
            self.conn.receive_data(data, self.now)
            self.busy += time.thread_time() - start

    def _from_server(self) -> bytes:
        """What the server writes now: its ``Send`` actions, each taken whole, as a driver
        whose socket takes everything would (``outgoing()`` on commits from before them)."""
        conn: Any = self.conn
        start = time.thread_time()
        if hasattr(conn, "outgoing"):
            data = b"".join(conn.outgoing())
            if data:
                conn.sent(len(data), self.now)
        else:
            from spcore.actions import Close, Send

            data = b""
            while (action := conn.next_action()) is not None and type(action) is not Close:
                if type(action) is Send:
                    chunk = b"".join(action.buffers)
                    conn.sent(len(chunk), self.now)
                    data += chunk
        self.busy += time.thread_time() - start
        return data

    def request(self) -> bytes:
        """One request and its response, as the client application sees it."""
        client = self.client
        if client is None:
            self._to_server(REQUEST)
            return self._from_server()
        client.send(REQUEST)
        self._to_server(client.data_to_send())
        got = b""
        for event in client.receive_data(self._from_server()):
            got += getattr(event, "data", b"")
        return got

    def run(self, n: int) -> float:
        """µs of server time per request over ``n`` requests."""
        self.busy = 0.0
        for _ in range(n):
            response = self.request()
            if len(response) != self.expected or not response.endswith(BODY):
                raise AssertionError(f"unexpected response: {response[:200]!r}")
        return self.busy / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--codec", action="append", help="only these codecs (repeatable)")
    parser.add_argument("--transport", choices=("plain", "tls"), action="append")
    parser.add_argument("--profile", metavar="CODEC", help="profile one codec (with --transport)")
    args = parser.parse_args(argv)
    names = args.codec or codecs()
    transports = args.transport or ["plain", "tls"]
    with tempfile.TemporaryDirectory() as tmp:
        certs = pathlib.Path(tmp)
        if args.profile:
            cycle = Cycle(args.profile, transports[0] == "tls", certs)
            cycle.run(1000)
            profile = cProfile.Profile()
            profile.runcall(cycle.run, args.n)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return 0
        configs = [(name, transport) for transport in transports for name in names]
        cycles = {c: Cycle(c[0], c[1] == "tls", certs) for c in configs}
        for cycle in cycles.values():
            cycle.run(min(2000, args.n))  # warm up
        figures: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for config, cycle in cycles.items():
                figures[config].append(cycle.run(args.n))
    print(f"{'codec':<10} {'transport':<9} {'µs/request (median)':>20}  rounds")
    for (name, transport), values in figures.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<10} {transport:<9} {statistics.median(values):>20.1f}  {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
