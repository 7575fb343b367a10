"""Back-pressure end to end: a peer that stops reading makes the server stop producing (and
stop reading), memory stays bounded, and everything resumes intact when the peer reads.

The bound is measured from the outside: the application counts what it produced, the server
counts what the driver handed to the kernel (``stats.bytes_sent``); the difference is what
the server holds, and must stay within the high-water mark plus a few chunks.
"""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest

from spcore.conformance.apps import beyond_the_kernel
from spcore.conformance.clients import Client, pattern
from spcore.conformance.harness import (
    Serve,
    Served,
    Transport,
    suite_limits,
    transports,
    wait_until,
)
from spcore.http.messages import Request, Response
from spcore.stream import DeferredSession, Session, StreamHandler

TRANSPORTS = transports("plain", "tls1.2", "tls1.3")
HIGH_WATER = 64 * 1024
FLOW_LIMITS = suite_limits(write_high_water=HIGH_WATER, write_low_water=16 * 1024)
CHUNK = 16 * 1024


TOTAL = beyond_the_kernel(CHUNK)
#: What the server may hold beyond the high-water mark: the chunk that crossed it, one more
#: in a buffer on its way, and a TLS record's framing.
SLACK = 2 * CHUNK + 16 * 1024
#: The largest single read the driver contract recommends (docs/driver-contract.md).
MAX_READ = 256 * 1024


class Counter:
    """Bytes an application produced, read from the test thread."""

    def __init__(self) -> None:
        self.produced = 0


def _counting_app(counter: Counter) -> Callable[[Request], Response]:
    def app(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for offset in range(0, TOTAL, CHUNK):
                counter.produced += CHUNK
                yield pattern(offset, CHUNK)

        return Response(200, [("content-length", str(TOTAL))], body())

    return app


def _stalled(read: Callable[[], int], quiet: float = 0.3, timeout: float = 10.0) -> int:
    """Wait until ``read()`` stops changing for ``quiet`` seconds; return its value."""
    end = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now_value = read()
        if now_value != value:
            value, since = now_value, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError(f"still moving after {timeout} s (at {value})")


def _small_receive_buffer(served: Served, transport: Transport) -> Client:
    """A client whose kernel buffers are small, so the server hits back-pressure soon."""
    client = served.connect(transport)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return client


@TRANSPORTS
def test_reader_that_stops_reading(serve: Serve, transport: Transport) -> None:
    counter = Counter()
    app = _counting_app(counter)
    with (
        serve(app, transport=transport, limits=FLOW_LIMITS) as served,
        _small_receive_buffer(served, transport) as client,
    ):
        client.request("GET", "/")
        assert client.read_head().status == 200
        digest = hashlib.sha256(client.read_exact(CHUNK))
        produced = _stalled(lambda: counter.produced)
        assert produced < TOTAL, "the whole body was produced for a client not reading"
        held = produced - served.server.stats.bytes_sent
        assert held <= HIGH_WATER + SLACK, f"the server holds {held} bytes"
        received = CHUNK
        while received < TOTAL:  # the stream resumes, intact
            data = client.read_exact(min(1 << 20, TOTAL - received))
            digest.update(data)
            received += len(data)
        assert digest.digest() == _pattern_digest(TOTAL)
        assert client.fetch("GET", "/").status == 200  # and the connection goes on


_DIGESTS: dict[int, bytes] = {}


def _pattern_digest(size: int) -> bytes:
    if size not in _DIGESTS:
        digest = hashlib.sha256()
        for offset in range(0, size, 1 << 20):
            digest.update(pattern(offset, min(1 << 20, size - offset)))
        _DIGESTS[size] = digest.digest()
    return _DIGESTS[size]


class CountingEcho(StreamHandler):
    """Echoes each line and counts the bytes it queued."""

    echoed = 0

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        CountingEcho.echoed += len(message) + 2
        session.send(message)


@pytest.mark.spcore_stream
@transports("plain", "tls1.3")
def test_echo_flood_from_a_peer_that_does_not_read(serve: Serve, transport: Transport) -> None:
    """A peer sending lines without reading the echoes: the server stops reading too (its
    memory stays bounded), and when the peer reads again every echo arrives in order.

    One thread drives the client socket (an ``SSLSocket`` must never be used from two
    threads at once): it writes until the server stops taking bytes, then reads and writes
    as the socket allows.
    """
    CountingEcho.echoed = 0
    line = pattern(0, 1000).replace(b"\n", b"n").replace(b"\r", b"r") + b"\n"
    lines = TOTAL // len(line)
    flood = memoryview(line * lines)
    expected = (line[:-1] + b"\r\n") * lines
    with (
        serve(handler=CountingEcho, transport=transport, limits=FLOW_LIMITS) as served,
        _small_receive_buffer(served, transport) as client,
    ):
        sock = client.sock
        sock.setblocking(False)
        sent = 0
        while sent < len(flood) and _wait_for(sock, read=False, write=True, timeout=0.5):
            sent += _send_some(sock, flood[sent : sent + 65536])
        assert sent < len(flood), "the server read everything from a peer that does not read"
        echoed = _stalled(lambda: CountingEcho.echoed)
        held = echoed - served.server.stats.bytes_sent
        # Lines already read are echoed even past the high-water mark: one read's worth.
        assert held <= HIGH_WATER + MAX_READ + SLACK, f"the server holds {held} bytes"
        received = bytearray()
        deadline = time.monotonic() + 60
        while len(received) < len(expected):
            assert time.monotonic() < deadline, f"stuck after {len(received)} echoed bytes"
            want_write = sent < len(flood)
            if not _wait_for(sock, read=True, write=want_write, timeout=10.0):
                raise AssertionError(f"nothing moved for 10 s after {len(received)} bytes")
            if want_write:
                sent += _send_some(sock, flood[sent : sent + 65536])
            received += _recv_some(sock)
        assert received == expected


def _wait_for(sock: socket.socket, *, read: bool, write: bool, timeout: float) -> bool:
    """Until the socket can be read (if ``read``; decrypted bytes count) or written (if
    ``write``)."""
    if read and isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, writable, _ = select.select(
        [sock] if read else [], [sock] if write else [], [], timeout
    )
    return bool(readable or writable)


def _send_some(sock: socket.socket, data: memoryview) -> int:
    try:
        return sock.send(data)
    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
        return 0


def _recv_some(sock: socket.socket) -> bytes:
    try:
        data = sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return b""
    if not data:
        raise AssertionError("the server closed the connection during the echo flood")
    return data


def test_send_timeout_drops_a_peer_that_never_reads(serve: Serve) -> None:
    counter = Counter()
    limits = suite_limits(send_timeout=0.5, write_high_water=HIGH_WATER, write_low_water=16384)
    with (
        serve(_counting_app(counter), limits=limits) as served,
        _small_receive_buffer(served, "plain") as client,
    ):
        client.request("GET", "/")
        assert client.read_head().status == 200
        start = time.monotonic()
        served.wait_drained(timeout=10.0)  # dropped once nothing moved for 0.5 s
        assert time.monotonic() - start >= 0.4
        assert served.server.stats.timeouts >= 1
        wait_until(lambda: counter.produced < TOTAL, 1.0, "the producer to have stopped")
