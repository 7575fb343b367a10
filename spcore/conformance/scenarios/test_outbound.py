"""Outbound connections (the ``Connect`` action), for drivers that declare them
(``Driver.connects``): a connect that succeeds, plaintext and TLS, to a peer played by Python's
``ssl``; one to a Unix socket; one refused; one that times out (a listener whose backlog is
full drops the SYN); a thousand at once; and a peer that never reads, whose connection the
send timeout ends while the server holds no more than its high-water mark.

A driver that does not declare ``connects`` skips these, saying so: outbound connections are
an optional capability of the contract (docs/driver-contract.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import socket
import tempfile
import threading
import time
from typing import Any

import pytest

from spcore.conformance.harness import PKI, Serve, Served, suite_limits, wait_until
from spcore.conformance.peers import echo, hold, peer, server_tls
from spcore.layer import ProtocolLayer, Transport
from spcore.remote import Remote
from spcore.stream import DeferredSession, Session, StreamHandler
from spcore.tls.config import ClientTLS

pytestmark = pytest.mark.spcore_stream  # (plugin.STREAM_MARK): not once per HTTP codec
AnySession = Session | DeferredSession
TIMEOUT = 10.0


class Probe(ProtocolLayer):
    """An outbound connection's protocol: it writes ``greeting``, reads until ``until`` (then
    closes), and reports to the test thread through ``events``."""

    def __init__(self, greeting: bytes = b"", until: bytes | None = None) -> None:
        self.greeting = greeting
        self.until = until
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.received = bytearray()
        self.transport: Transport | None = None

    def connection_made(self, conn: Transport, now: float) -> None:
        self.transport = conn
        self.events.put(("made", conn.tls_info))
        conn.write(self.greeting)

    def data_received(self, data: bytes, now: float) -> None:
        self.received += data
        if self.until is not None and self.until in self.received:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, error: BaseException | None) -> None:
        self.events.put(("lost", error))

    def next(self, timeout: float = TIMEOUT) -> tuple[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing happened to the connection in {timeout} s") from None


def _require_outbound(served: Served) -> None:
    if not getattr(served.driver, "connects", False):
        name = type(served.driver).__name__
        pytest.skip(f"{name} does not declare outbound connections (Driver.connects)")


def _open(served: Served, remote: Remote, protocol: ProtocolLayer) -> None:
    """Open the connection on the loop thread, as application code would."""
    assert served.server.call_soon_threadsafe(served.server.open_connection, remote, protocol)


class Echo(StreamHandler):
    def message(self, session: AnySession, message: bytes) -> None:
        session.send(message)


# -- the scenarios -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_connect_and_talk(serve: Serve, pki: PKI, transport: str) -> None:
    """The connection carries bytes both ways; over TLS it sent SNI, verified the peer's
    certificate and settled TLS 1.3; it reports its addresses."""
    tls = server_tls(pki) if transport == "tls" else None
    with serve(handler=Echo) as served, peer(echo, tls) as running:
        _require_outbound(served)
        host, port = running.address[:2]
        client_tls = ClientTLS(trust=pki.ca_file, server_name="localhost") if tls else None
        remote = Remote(host, port, tls=client_tls, tls_engine=serve.engine)
        probe = Probe(b"ping over the outbound connection", until=b"connection")
        _open(served, remote, probe)
        kind, info = probe.next()
        assert kind == "made", info
        if tls:
            assert info is not None and info.version == "TLSv1.3" and running.names == ["localhost"]
        else:
            assert info is None
        assert probe.next() == ("lost", None)
        assert bytes(probe.received) == b"ping over the outbound connection"
        wait_until(lambda: served.connections == 0, TIMEOUT, "the connection to end")
        assert served.server.stats.connections_outbound == 1


def test_connect_to_a_unix_socket(serve: Serve) -> None:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix domain sockets on this platform")
    with tempfile.TemporaryDirectory() as directory, serve(handler=Echo) as served:
        _require_outbound(served)
        path = os.path.join(directory, "peer.sock")
        with peer(echo, unix=path):
            probe = Probe(b"over a unix socket\n", until=b"\n")
            _open(served, Remote(path=path), probe)
            kind, value = probe.next()
            if kind == "lost" and isinstance(value, OSError) and value.errno == errno.EAFNOSUPPORT:
                pytest.skip(f"the driver connects to no Unix socket: {value}")
            assert kind == "made", value
            assert probe.next() == ("lost", None)
            assert bytes(probe.received) == b"over a unix socket\n"


def test_a_refused_connect_is_reported(serve: Serve) -> None:
    with serve(handler=Echo) as served, socket.socket() as bound:
        _require_outbound(served)
        bound.bind(("127.0.0.1", 0))  # bound, not listening: the kernel answers RST
        probe = Probe()
        _open(served, Remote(*bound.getsockname()), probe)
        kind, error = probe.next()
        assert kind == "lost" and isinstance(error, ConnectionRefusedError), error
        wait_until(lambda: served.server.stats.connect_failures == 1, TIMEOUT, "the count")


def test_a_connect_that_never_completes_times_out(serve: Serve) -> None:
    """A listener whose backlog is full drops SYNs (Linux, and BSD alike), so the connect
    neither succeeds nor fails: the core's connect timeout ends it."""
    with contextlib.ExitStack() as stack:
        full = stack.enter_context(socket.socket())
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler = stack.enter_context(socket.create_connection(full.getsockname(), TIMEOUT))
        filler.send(b"x")  # established: the one place of the backlog is taken
        served = stack.enter_context(serve(handler=Echo, limits=suite_limits(connect_timeout=0.5)))
        _require_outbound(served)
        probe = Probe()
        started = time.monotonic()
        _open(served, Remote(*full.getsockname()), probe)
        kind, error = probe.next()
        elapsed = time.monotonic() - started
        if kind == "made":
            pytest.skip("this system accepted the connect despite the full backlog")
        assert isinstance(error, TimeoutError), error
        assert 0.45 <= elapsed < 5.0, elapsed
        assert served.server.stats.timeouts >= 1


class Counted(ProtocolLayer):
    """One of many: sends its number, expects it echoed, closes; counts into ``tally``."""

    def __init__(self, number: int, tally: dict[str, int], done: threading.Event) -> None:
        self.line = b"%d\n" % number
        self.tally = tally
        self.done = done
        self.received = b""
        self.transport: Transport | None = None

    def connection_made(self, conn: Transport, now: float) -> None:
        self.transport = conn
        conn.write(self.line)

    def data_received(self, data: bytes, now: float) -> None:
        self.received += data
        if self.received == self.line.replace(b"\n", b"\r\n"):
            self.tally["echoed"] += 1
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, error: BaseException | None) -> None:
        self.tally["lost"] += 1
        if error is not None:
            self.tally["errors"] += 1
        if self.tally["lost"] == self.tally["total"]:
            self.done.set()


def test_a_thousand_outbound_connections_at_once(serve: Serve) -> None:
    """The driver connects a thousand sockets to its own listener in one go, and each one
    carries its line there and back."""
    count = 1000
    limits = suite_limits(listen_backlog=2048)
    with serve(handler=Echo, limits=limits) as served:
        _require_outbound(served)
        host, port = served.address[:2]
        tally = {"echoed": 0, "lost": 0, "errors": 0, "total": count}
        done = threading.Event()

        def open_all() -> None:
            for number in range(count):
                served.server.open_connection(Remote(host, port), Counted(number, tally, done))

        assert served.server.call_soon_threadsafe(open_all)
        assert done.wait(60.0), tally
        assert tally == {"echoed": count, "lost": count, "errors": 0, "total": count}
        wait_until(lambda: served.connections == 0, TIMEOUT, "every connection to end")


class Flood(ProtocolLayer):
    """Writes as long as the connection takes it, pausing while it is not writable; records
    the most output the server ever held for it."""

    CHUNK = 16 * 1024

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.written = 0
        self.most_held = 0
        self.transport: Transport | None = None

    def connection_made(self, conn: Transport, now: float) -> None:
        self.transport = conn
        self._fill()

    def resume_writing(self, now: float) -> None:
        self._fill()

    def _fill(self) -> None:
        conn = self.transport
        assert conn is not None
        while conn.writable and not conn.closing and self.written < 1 << 30:
            conn.write(b"x" * self.CHUNK)
            self.written += self.CHUNK
            self.most_held = max(self.most_held, conn.output_size)

    def connection_lost(self, error: BaseException | None) -> None:
        self.events.put(("lost", error))


def test_a_peer_that_never_reads_costs_the_high_water_mark_then_the_send_timeout(
    serve: Serve,
) -> None:
    high_water = 64 * 1024
    limits = suite_limits(write_high_water=high_water, write_low_water=16 * 1024, send_timeout=1.0)
    with serve(handler=Echo, limits=limits) as served, peer(hold) as running:
        _require_outbound(served)
        flood = Flood()
        started = time.monotonic()
        _open(served, Remote(*running.address[:2]), flood)
        try:
            kind, _ = flood.events.get(timeout=TIMEOUT + 20.0)
        except queue.Empty:
            raise AssertionError("the send timeout never ended the connection") from None
        assert kind == "lost" and time.monotonic() - started >= 1.0
        assert flood.most_held <= high_water + Flood.CHUNK  # bounded: it stopped producing
        # What went out is what the kernel's buffers took, far from the gigabyte offered.
        assert flood.written < 64 * 1024 * 1024
        assert served.server.stats.timeouts >= 1
