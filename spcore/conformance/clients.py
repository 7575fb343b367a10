"""The suite's own clients: a raw HTTP/1.1 client and a many-connection load client.

The raw client sends exactly the bytes a scenario writes (pipelining, ``Expect``, chunked
bodies, resets) and parses responses with a small strict parser written here, so a bug in
h11, which the server uses, cannot hide behind the same bug in the client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import pytest

from spcore.tls.alerts import Alert
from spcore.tls.openssl import alert_received_in

__all__ = [
    "Client",
    "HTTPResponse",
    "LoadResult",
    "StdlibContext",
    "TLSVersion",
    "http_request",
    "load",
    "pattern",
    "program",
    "received_alert",
    "run_program",
    "stdlib_client_context",
]

TLSVersion = Literal["1.2", "1.3"]
#: The clients' TLS contexts are the standard library's.
StdlibContext = ssl.SSLContext


def stdlib_client_context(
    ca_file: str | os.PathLike[str],
    version: TLSVersion | None = None,
    *,
    cert: Any = None,
    alpn: Sequence[str] = ("http/1.1",),
) -> ssl.SSLContext:
    """A client context trusting ``ca_file``, pinned to ``version`` when given; ``cert`` is a
    pair with ``certfile`` and ``keyfile`` to present."""
    ctx = ssl.create_default_context(cafile=os.fspath(ca_file))
    if version is not None:
        pinned = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
        ctx.minimum_version = ctx.maximum_version = pinned
    if cert is not None:
        ctx.load_cert_chain(str(cert.certfile), str(cert.keyfile))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


#: How long a command-line client may take.
PROGRAM_TIMEOUT = 20.0


def program(name: str) -> str:
    """The path of a command-line client; the scenario is skipped, naming it, if missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def run_program(command: Sequence[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run a client to its end with ``stdin``; its output captured."""
    return subprocess.run(list(command), input=stdin, capture_output=True, timeout=PROGRAM_TIMEOUT)


def received_alert(error: BaseException) -> Alert | None:
    """The alert a stdlib TLS client received, by its RFC name (None: no alert came)."""
    return alert_received_in(getattr(error, "reason", None) or "")


_PERIOD = 251
_BLOCK = bytes(range(_PERIOD)) * (65536 // _PERIOD + 2)


def pattern(offset: int, size: int) -> bytes:
    """Deterministic content: byte ``i`` of a stream is ``i % 251`` (prime, so a chunk lost,
    repeated or reordered changes the bytes)."""
    out = bytearray()
    while size > 0:
        start = offset % _PERIOD
        piece = _BLOCK[start : start + min(size, len(_BLOCK) - start)]
        out += piece
        offset += len(piece)
        size -= len(piece)
    return bytes(out)


def http_request(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "localhost",
) -> bytes:
    """A request's bytes; ``Content-Length`` is added for a body unless the headers frame it."""
    fields = [("Host", host), *headers]
    names = {name.lower() for name, _ in fields}
    if body and not names & {"content-length", "transfer-encoding"}:
        fields.append(("Content-Length", str(len(body))))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
    return head.encode("latin-1") + b"\r\n" + body


@dataclasses.dataclass
class HTTPResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # (lower-case name, value)
    body: bytes
    chunked: bool

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


class Client:
    """A blocking client socket (plain or ``ssl.SSLSocket``) with a read buffer.

    Every operation is bounded by the socket's timeout; a TLS socket is made with
    ``suppress_ragged_eofs=False`` so a missing close_notify shows as ``ssl.SSLEOFError``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tls(self) -> ssl.SSLSocket | None:
        return self.sock if isinstance(self.sock, ssl.SSLSocket) else None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self.send(http_request(method, target, headers, body))

    def fetch(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> HTTPResponse:
        """Send one request and read its response."""
        self.request(method, target, headers, body)
        return self.read_response(method)

    def recv(self, size: int = 65536) -> bytes:
        """Buffered bytes first, else one receive; ``b""`` at a clean end of stream."""
        if self._buf:
            data = bytes(self._buf[:size])
            del self._buf[:size]
            return data
        return self.sock.recv(size)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self._buf += data

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_until(self, marker: bytes, limit: int = 1 << 20) -> bytes:
        """Bytes up to and including ``marker``."""
        while True:
            found = self._buf.find(marker)
            if found >= 0:
                end = found + len(marker)
                data = bytes(self._buf[:end])
                del self._buf[:end]
                return data
            if len(self._buf) > limit:
                raise AssertionError(f"no {marker!r} within {limit} bytes")
            self._fill()

    def read_to_eof(self) -> bytes:
        """Everything until the server ends the stream (cleanly, for TLS)."""
        chunks = [bytes(self._buf)]
        self._buf.clear()
        while True:
            data = self.sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def read_head(self) -> HTTPResponse:
        """A response's status line and headers (the body stays unread)."""
        head = self.read_until(b"\r\n\r\n", limit=64 * 1024).decode("latin-1")
        lines = head[:-4].split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise AssertionError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or name != name.strip() or not name:
                raise AssertionError(f"bad header line {line!r}")
            headers.append((name.lower(), value.strip()))
        return HTTPResponse(version, int(code), reason, headers, b"", chunked=False)

    def read_response(self, method: str = "GET") -> HTTPResponse:
        """One complete response, skipping 1xx interim responses."""
        while True:
            response = self.read_head()
            if response.status >= 200 or response.status == 101:
                break
        if method == "HEAD" or response.status in (204, 304):
            return response
        encoding = response.header("transfer-encoding")
        length = response.header("content-length")
        if encoding is not None:
            if encoding.lower() != "chunked":
                raise AssertionError(f"unexpected transfer-encoding {encoding!r}")
            response.chunked = True
            response.body = self._read_chunked()
        elif length is not None:
            response.body = self.read_exact(int(length))
        else:
            response.body = self.read_to_eof()
        return response

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.read_until(b"\r\n", limit=1024)
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                while self.read_until(b"\r\n", limit=64 * 1024) != b"\r\n":
                    pass  # trailers
                return bytes(body)
            body += self.read_exact(size)
            if self.read_exact(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")

    def closed_by_server(self) -> bool:
        """True if the next read sees the end of the stream (or a reset), with nothing before."""
        try:
            return self.recv() == b""
        except (ConnectionResetError, ssl.SSLEOFError):
            return True

    def reset(self) -> None:
        """Close abortively: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


# --- the load client -------------------------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    connected: int = 0
    responses: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


class _Flow:
    """One connection of the load client; TLS runs through memory BIOs when ``tls`` is set."""

    def __init__(self, index: int, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        self.index = index
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = (
            None
            if context is None
            else context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        )
        self.connected = False
        self.handshaken = self.tls is None
        self.wire_out = bytearray()  # bytes waiting for the socket
        self.received = bytearray()  # plaintext not yet parsed
        self.requests = 0  # sent so far
        self.done = False

    @property
    def ready(self) -> bool:
        return self.connected and self.handshaken

    def receive(self, data: bytes) -> None:
        if self.tls is None:
            self.received += data
            return
        self.incoming.write(data)
        self.pump()

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.wire_out += data
            return
        self.tls.write(data)
        self.pump()

    def pump(self) -> None:
        """Advance the handshake, decrypt what arrived, collect what must go out."""
        tls = self.tls
        if tls is None:
            return
        try:
            if not self.handshaken:
                tls.do_handshake()
                self.handshaken = True
            while data := tls.read(65536):
                self.received += data
        except ssl.SSLWantReadError:
            pass
        finally:
            self.wire_out += self.outgoing.read()


class _LoadClient:
    def __init__(
        self,
        address: tuple[Any, ...],
        connections: int,
        requests: int,
        expected: Callable[[int, int], bytes],
        target: Callable[[int, int], str],
        context: ssl.SSLContext | None,
    ) -> None:
        self.address = address
        self.connections = connections
        self.requests = requests
        self.expected = expected
        self.target = target
        self.context = context
        self.result = LoadResult()
        self.selector = selectors.DefaultSelector()
        self.flows: list[_Flow] = []

    def run(self, when_connected: Callable[[], None], timeout: float) -> LoadResult:
        deadline = time.monotonic() + timeout
        try:
            for i in range(self.connections):
                self._open(i)
            self._loop(lambda: all(f.ready or f.done for f in self.flows), deadline)
            self.result.connected = sum(f.ready and not f.done for f in self.flows)
            when_connected()
            for flow in self.flows:
                if not flow.done:
                    self._request(flow)
                    self._watch(flow)
            self._loop(lambda: all(f.done for f in self.flows), deadline)
            unfinished = sum(not f.done for f in self.flows)
            if unfinished:
                self.result.errors.append(f"{unfinished} connection(s) unfinished at the timeout")
        finally:
            for flow in self.flows:
                flow.sock.close()
            self.selector.close()
        return self.result

    def _open(self, index: int) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        flow = _Flow(index, sock, self.context)
        self.flows.append(flow)
        err = sock.connect_ex(self.address[:2])
        if err not in (0, errno.EINPROGRESS):
            self._fail(flow, f"connect: {errno.errorcode.get(err, err)}")
            return
        self.selector.register(sock, selectors.EVENT_WRITE, flow)

    def _loop(self, finished: Callable[[], bool], deadline: float) -> None:
        while not finished() and time.monotonic() < deadline:
            for key, mask in self.selector.select(0.2):
                flow: _Flow = key.data
                try:
                    self._step(flow, mask)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self._fail(flow, repr(exc))
                    continue
                if not flow.done:
                    self._watch(flow)

    def _step(self, flow: _Flow, mask: int) -> None:
        if not flow.connected:
            err = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
            flow.connected = True
            flow.pump()  # the ClientHello
        if mask & selectors.EVENT_READ:
            data = flow.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            flow.receive(data)
        while flow.requests and self._response(flow):
            if flow.requests == self.requests:
                flow.done = True
                self.selector.unregister(flow.sock)
                flow.sock.close()
                return
            self._request(flow)
        if flow.wire_out:
            with contextlib.suppress(BlockingIOError):
                del flow.wire_out[: flow.sock.send(flow.wire_out)]

    def _watch(self, flow: _Flow) -> None:
        events = selectors.EVENT_READ
        if flow.wire_out or not flow.connected:
            events |= selectors.EVENT_WRITE
        self.selector.modify(flow.sock, events, flow)

    def _request(self, flow: _Flow) -> None:
        flow.send(http_request("GET", self.target(flow.index, flow.requests)))
        flow.requests += 1

    def _response(self, flow: _Flow) -> bool:
        """Check one complete response if it has arrived; False if more bytes are needed."""
        received = flow.received
        end = received.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(received[:end]).decode("latin-1").lower()
        length = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "content-length":
                length = int(value)
        if length is None:
            raise ValueError(f"response without content-length: {head[:60]!r}")
        total = end + 4 + length
        if len(received) < total:
            return False
        body = bytes(received[end + 4 : total])
        del received[:total]
        where = f"connection {flow.index} request {flow.requests - 1}"
        if not head.startswith("http/1.1 200 "):
            self.result.errors.append(f"{where}: {head[:40]!r}")
        elif body != self.expected(flow.index, flow.requests - 1):
            self.result.errors.append(f"{where}: wrong body {body[:40]!r}")
        else:
            self.result.responses += 1
        return True

    def _fail(self, flow: _Flow, why: str) -> None:
        self.result.errors.append(f"connection {flow.index}: {why}")
        flow.done = True
        if flow.sock.fileno() >= 0:
            with contextlib.suppress(KeyError):
                self.selector.unregister(flow.sock)
            flow.sock.close()


def load(
    address: tuple[Any, ...],
    connections: int,
    requests: int,
    *,
    expected: Callable[[int, int], bytes],
    target: Callable[[int, int], str],
    context: ssl.SSLContext | None = None,
    when_connected: Callable[[], None] = lambda: None,
    timeout: float = 30.0,
) -> LoadResult:
    """Open ``connections`` at once, then run ``requests`` keep-alive requests on each.

    Request ``j`` of connection ``i`` is ``GET target(i, j)``; its body must be
    ``expected(i, j)``. Requests start only once every connection is established (handshake
    included) and ``when_connected()`` has run, so the server really holds them all at once.
    One thread and one selector: the client costs little next to the server under test.
    """
    client = _LoadClient(address, connections, requests, expected, target, context)
    return client.run(when_connected, timeout)
