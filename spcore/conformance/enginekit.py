"""The engine kit's tools: engines built from neutral configurations, bytes moved between two
engines in memory (whole or one byte at a time), an engine driven over a real socket, and a
one-connection-at-a-time server process for scenarios that need two servers.

Third parties certify an engine with ``pytest --pyargs spcore.conformance.engine_scenarios
--spcore-engine-factory mypkg.tls:ENGINE``; these helpers are what the scenarios use, and are
there for an engine's own tests too.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spcore.certs import CertPair
from spcore.tls import (
    ApplicationData,
    ClientContext,
    ClientTLS,
    CloseNotify,
    EngineFactory,
    RaggedEOF,
    ServerContext,
    ServerTLS,
    TLSEngine,
    TLSError,
    TLSEvent,
    resolve,
)
from spcore.tls.config import Certificate

from .harness import PKI

__all__ = [
    "VERSIONS",
    "Endpoints",
    "EngineOverSocket",
    "SClient",
    "connect",
    "data_of",
    "der",
    "expect_error",
    "feed",
    "move",
    "names",
    "pump",
    "records",
    "s_client",
]

TIMEOUT = 10.0

#: A scenario run over TLS 1.2 and TLS 1.3: it takes ``maximum`` (for ``max_version``) and
#: ``version`` (what ``TLSInfo.version`` then says).
VERSIONS = pytest.mark.parametrize(
    ("maximum", "version"), [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")], ids=["tls12", "tls13"]
)


class Endpoints:
    """The server and client engines of one pairing, from neutral configurations."""

    def __init__(self, server: EngineFactory, client: EngineFactory, pki: PKI) -> None:
        self.server_factory = server
        self.client_factory = client
        self.pki = pki

    def server_context(self, pair: CertPair | None = None, **options: Any) -> ServerContext:
        certificate = options.pop("certificate", None) or PKI.certificate(pair or self.pki.server)
        return ServerContext(ServerTLS(certificate, **options), self.server_factory)

    def server(self, pair: CertPair | None = None, **options: Any) -> TLSEngine:
        """A server engine for ``pair`` (default: the PKI's localhost certificate)."""
        return self.server_context(pair, **options).new_engine()

    def client_context(self, *, cert: CertPair | None = None, **options: Any) -> ClientContext:
        options.setdefault("trust", self.pki.ca_file)
        if cert is not None:
            options["certificate"] = Certificate(cert.certfile, cert.keyfile)
        return ClientContext(ClientTLS(**options), self.client_factory)

    def client(self, hostname: str | None = "localhost", **options: Any) -> TLSEngine:
        """A client engine trusting the PKI's CA, naming ``hostname`` (SNI and verification)."""
        return self.client_context(**options).new_engine(hostname)


# --- in memory ---------------------------------------------------------------------------------


def feed(data: bytes, dst: TLSEngine, bytewise: bool = False) -> list[TLSEvent]:
    """Give ``data`` to ``dst``, all at once or byte by byte; return its events.

    Nothing to give is not an EOF: call ``receive_data(b"")`` directly for that.
    """
    if not data:
        return []
    if not bytewise:
        return dst.receive_data(data)
    events: list[TLSEvent] = []
    for i in range(len(data)):
        events += dst.receive_data(data[i : i + 1])
    return events


def move(src: TLSEngine, dst: TLSEngine, bytewise: bool = False) -> list[TLSEvent]:
    """Deliver everything ``src`` has to send to ``dst``."""
    return feed(src.data_to_send(), dst, bytewise)


def pump(
    a: TLSEngine, b: TLSEngine, bytewise: bool = False
) -> tuple[list[TLSEvent], list[TLSEvent]]:
    """Move bytes both ways until neither side has anything to send; return both events."""
    events_a: list[TLSEvent] = []
    events_b: list[TLSEvent] = []
    for _ in range(100):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return events_a, events_b
        events_b += feed(out_a, b, bytewise)
        events_a += feed(out_b, a, bytewise)
    raise AssertionError("the engines did not settle")


def connect(
    s: TLSEngine, c: TLSEngine, bytewise: bool = False
) -> tuple[list[TLSEvent], list[TLSEvent]]:
    """Run the handshake (and whatever follows it, like tickets); return (server events,
    client events)."""
    s.start()
    c.start()
    events_c, events_s = pump(c, s, bytewise)
    assert s.handshake_complete and c.handshake_complete
    return events_s, events_c


def data_of(events: Sequence[TLSEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ApplicationData))


def expect_error(call: Callable[[], object]) -> TLSError:
    """Run ``call``; it must raise ``TLSError``, which is returned."""
    try:
        call()
    except TLSError as error:
        return error
    raise AssertionError(f"{call} did not raise TLSError")


def records(wire: bytes) -> Iterator[tuple[int, int]]:
    """(content type, length) of each TLS record in ``wire``, which must hold whole records."""
    offset = 0
    while offset < len(wire):
        kind, _version, length = struct.unpack_from("!BHH", wire, offset)
        offset += 5 + length
        yield kind, length
    assert offset == len(wire), "a record is cut short"


def der(pair: CertPair) -> bytes:
    """The DER of a pair's certificate, as ``TLSInfo.peer_certificate`` holds it."""
    cert = x509.load_pem_x509_certificate(pair.certfile.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def names(certificate: bytes | None) -> list[str]:
    """The DNS names in a DER certificate's subjectAltName."""
    assert certificate is not None
    cert = x509.load_der_x509_certificate(certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


# --- over a socket -----------------------------------------------------------------------------


class EngineOverSocket:
    """The least a driver does: feed what arrives, send what the engine produced, every time."""

    def __init__(self, engine: TLSEngine, sock: socket.socket, timeout: float = TIMEOUT) -> None:
        sock.settimeout(timeout)
        self.engine = engine
        self.sock = sock
        self.plaintext = bytearray()
        self.end: TLSEvent | None = None  # CloseNotify or RaggedEOF
        self.flights: list[bytes] = []  # each flush, for inspection

    def flush(self) -> None:
        out = self.engine.data_to_send()
        if out:
            self.flights.append(out)
            self.sock.sendall(out)

    def step(self) -> None:
        data = self.sock.recv(65536)
        try:
            events = self.engine.receive_data(data)
        finally:
            self.flush()
        for event in events:
            if isinstance(event, ApplicationData):
                self.plaintext += event.data
            elif isinstance(event, (CloseNotify, RaggedEOF)):
                self.end = event
        if not data and self.end is None:
            self.end = RaggedEOF()

    def handshake(self) -> None:
        self.engine.start()
        self.flush()
        while not self.engine.handshake_complete:
            self.step()

    def read(self, size: int) -> bytes:
        while len(self.plaintext) < size and self.end is None:
            self.step()
        data = bytes(self.plaintext[:size])
        del self.plaintext[:size]
        return data

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.plaintext and self.end is None:
            self.step()
        return bytes(self.plaintext)

    def send(self, data: bytes) -> None:
        self.engine.send(data)
        self.flush()

    def close(self) -> None:
        self.engine.close()
        self.flush()

    def wait_end(self) -> TLSEvent:
        while self.end is None:
            self.step()
        return self.end


class SClient:
    """``openssl s_client`` connected to us: ``sock`` is our end, ``write`` types into it;
    its ``stdout`` and ``stderr`` are there once the ``with`` block has ended."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.stdout = b""
        self.stderr = b""

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()


@contextlib.contextmanager
def s_client(ca_file: pathlib.Path, *options: str) -> Iterator[SClient]:
    """An ``openssl s_client`` (the scenario is skipped without one) connecting to a loopback
    listener of ours, accepted; killed at the end if it is still there."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command-line tool is not installed")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        command = [openssl, "s_client", "-connect", f"127.0.0.1:{listener.getsockname()[1]}"]
        command += ["-servername", "localhost", "-CAfile", str(ca_file), *options]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        accepted: socket.socket | None = None
        try:
            accepted, _ = listener.accept()
            client = SClient(process, accepted)
            with accepted:
                yield client
        finally:
            if process.poll() is None:
                process.kill()  # it waits for more input once the server has closed
            out, err = process.communicate(timeout=TIMEOUT)
            if accepted is not None:
                client.stdout, client.stderr = out, err


# --- a server process ----------------------------------------------------------------------------

#: What the kit's server answers to any request.
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def serve_forever(context: ServerContext, listener: socket.socket) -> None:
    """Serve one connection after another: read a request head, answer, close."""
    while True:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError, TLSError):
            link = EngineOverSocket(context.new_engine(), conn)
            link.handshake()
            link.read_until(b"\r\n\r\n")
            link.send(RESPONSE)
            link.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spcore.conformance.enginekit --engine E --cert C --key K [--ticket-key F]
    --port-file P``: serve on a free loopback port, written to ``P`` once listening."""
    parser = argparse.ArgumentParser(prog="spcore.conformance.enginekit")
    parser.add_argument("--engine", required=True, help="a registered name or module:attribute")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ticket-key")
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args(argv)
    config = ServerTLS(Certificate(args.cert, args.key), ticket_key=args.ticket_key)
    context = ServerContext(config, resolve(args.engine))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port_file = pathlib.Path(args.port_file)
        port_file.with_suffix(".tmp").write_text(str(listener.getsockname()[1]))
        port_file.with_suffix(".tmp").replace(port_file)
        serve_forever(context, listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
