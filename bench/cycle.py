"""In-memory request cycles: µs per keep-alive request through spcore's stack, per HTTP codec
and application interface.

A server ``Connection`` and a client (a TLS client engine, or nothing for plain HTTP) are
joined in memory: no socket, no driver. The client sends a keep-alive ``GET /hello`` and
reads the response; the server side is called exactly as a driver would (``receive_data``,
then every ``next_action()``, ``sent``). The app is the benchmarks' hello world as an spcore
app, an ASGI app (``--interface asgi``: its coroutines on an asyncio loop of this thread, as
the asyncio driver lends its own, the calls it hands back run as the driver runs them) or a
WSGI app (``--interface wsgi``: its job run here, as a worker would). Only the CPU time of the
server's side is counted (``time.thread_time``: a shared machine's other work, which takes
the core away, does not count), so the figure is the core's cost per request, without the
client's work or wrk's noise. Each configuration runs ``--rounds`` times (interleaved) and
the median is printed.

    python bench/cycle.py                                # every codec, plain and TLS
    python bench/cycle.py --interface asgi --interface wsgi
    python bench/cycle.py --profile h11   # cProfile of one configuration, by own time

This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
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

from asgi_hello import app as asgi_hello
from wsgi_hello import app as wsgi_hello

from spcore.actions import RunJobs, Send
from spcore.certs import dev_certificate
from spcore.config import Limits
from spcore.connection import Connection
from spcore.http.messages import App, Request, Response
from spcore.http.protocol import HTTPProtocol
from spcore.server import Listener, Server
from spcore.tls import Certificate, ClientContext, ClientTLS, ServerTLS

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


def protocol_factory(codec: str, app: App = hello) -> Callable[[], HTTPProtocol]:
    if "http" not in inspect.signature(HTTPProtocol).parameters:
        return lambda: HTTPProtocol(app)
    return lambda: HTTPProtocol(app, http=codec)  # type: ignore[call-arg]


INTERFACES = ("spcore", "asgi", "wsgi")


def hosted(interface: str, loop: asyncio.AbstractEventLoop) -> App:
    """The hello-world app of ``interface``, hosted as ``spcore serve --app`` hosts it."""
    if interface == "spcore":
        return hello
    from spcore.drivers.gateway.apploop import OwnLoop
    from spcore.drivers.gateway.asgi import AsgiRunner
    from spcore.drivers.gateway.wsgi import BlockingChannel
    from spcore.gateway.asgi import ASGIHost
    from spcore.gateway.wsgi import WSGIHost

    if interface == "wsgi":
        return WSGIHost(wsgi_hello, BlockingChannel)
    return ASGIHost(AsgiRunner(asgi_hello, OwnLoop(loop)))  # type: ignore[arg-type]


class Cycle:
    """One server connection and its client, joined in memory."""

    def __init__(
        self, codec: str, tls: bool, certs: pathlib.Path, interface: str = "spcore"
    ) -> None:
        server_tls = client = None
        if tls:
            pair = dev_certificate(datetime.datetime.now(datetime.timezone.utc), certs)
            server_tls = ServerTLS(Certificate(pair.certfile, pair.keyfile))
            client = ClientContext(ClientTLS(trust=pair.certfile)).new_engine("localhost")
        self.loop = asyncio.new_event_loop()
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        app = hosted(interface, self.loop)
        runner = getattr(app, "runner", None)
        #: The app's live tasks (an ASGI app's).
        self.tasks: Callable[[], Any] = (lambda: runner._tasks) if runner else lambda: ()
        listener = Listener(protocol_factory(codec, app), tls=server_tls)
        self.server = Server([listener], Limits())
        self.server.attach(self._post)
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

    def _post(self, fn: Callable[..., object], *args: object) -> bool:
        self.calls.append((fn, args))  # (the driver's call_soon_threadsafe)
        return True

    def _from_server(self) -> bytes:
        start = time.thread_time()
        out: list[Any] = []
        while True:
            progressed = self._actions(out)
            if self.calls:  # what the app handed back, as the driver runs it
                calls, self.calls = self.calls, []
                for fn, args in calls:
                    self.server.call(fn, args, self.now)
                progressed = True
            if self.tasks():  # the app's coroutines: one pass of their loop
                self.loop.call_soon(self.loop.stop)
                self.loop.run_forever()
                progressed = True
            if not progressed:
                break
        data = b"".join(out)
        self.busy += time.thread_time() - start
        return data

    def _actions(self, out: list[Any]) -> bool:
        """Carry out the connection's actions (sends, jobs); whether there were any."""
        progressed = False
        while (action := self.conn.next_action()) is not None:
            progressed = True
            if type(action) is Send:
                out.extend(action.buffers)
                self.conn.sent(action.nbytes, self.now)
            elif type(action) is RunJobs:
                for job in action.jobs:
                    job.run()  # (a worker's part)
                    self.conn.job_done(job, self.now)
        return progressed

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
    parser.add_argument(
        "--interface", choices=INTERFACES, action="append", help="the app's (default spcore)"
    )
    parser.add_argument("--profile", metavar="CODEC", help="profile one codec (with --transport)")
    args = parser.parse_args(argv)
    names = args.codec or codecs()
    transports = args.transport or ["plain", "tls"]
    interfaces = args.interface or ["spcore"]
    with tempfile.TemporaryDirectory() as tmp:
        certs = pathlib.Path(tmp)
        if args.profile:
            cycle = Cycle(args.profile, transports[0] == "tls", certs, interfaces[0])
            cycle.run(1000)
            profile = cProfile.Profile()
            profile.runcall(cycle.run, args.n)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return 0
        configs = [(i, n, t) for t in transports for n in names for i in interfaces]
        cycles = {c: Cycle(c[1], c[2] == "tls", certs, c[0]) for c in configs}
        for cycle in cycles.values():
            cycle.run(min(2000, args.n))  # warm up
        figures: dict[tuple[str, str, str], list[float]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for config, cycle in cycles.items():
                figures[config].append(cycle.run(args.n))
    print(f"{'interface':<10} {'codec':<10} {'transport':<9} {'µs/request (median)':>20}  rounds")
    for (interface, name, transport), values in figures.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        median = statistics.median(values)
        print(f"{interface:<10} {name:<10} {transport:<9} {median:>20.1f}  {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
