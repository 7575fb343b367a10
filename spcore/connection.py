"""One accepted connection: the layers composed, and the contract a driver drives.

Bytes climb through the stages (PROXY header, first-bytes sniffing, ClientHello reading, TLS)
into a protocol layer, and the protocol's output goes down the same way into a queue of
buffers the driver writes. Everything a driver needs to know is a property it can read after
each call; everything it reports is one method call (see docs/driver-contract.md):

* ``receive_data(data, now)``: bytes that arrived; ``b""`` when the peer shut its side.
* ``outgoing()`` / ``sent(n, now)``: the buffers to write and how many bytes went out.
* ``reading``: whether to read (False = back-pressure); ``write_eof``: shut the write side
  (then ``write_eof_done(now)``); ``should_close``: close the socket now.
* ``deadline`` / ``on_deadline(now)``: the next time the core must be called back.
* ``take_jobs()`` / ``job_done(job, now)``: blocking work for the driver's worker threads.
* ``connection_lost(error, now)``: the socket is closed, whatever the cause; called once.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ProtocolError
from .jobs import Job
from .layer import ProtocolLayer
from .preamble import ProxyHeaderReader, ProxyInfo, Sniff, plaintext_http_rejection, sniff
from .tls.engine import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    RaggedEOF,
    TLSEngine,
    TLSError,
    TLSInfo,
)
from .tls.records import ClientHello, ClientHelloReader, RecordError, alert_record

if TYPE_CHECKING:
    from .config import Limits
    from .server import Listener, Server

__all__ = ["Address", "Connection"]

log = logging.getLogger("spcore.connection")

Address = tuple[Any, ...]  # a socket address as the socket module gives it


class _Stage(enum.Enum):
    PROXY = enum.auto()  # waiting for the PROXY protocol header
    SNIFF = enum.auto()  # TLS listener: is this TLS at all?
    HELLO = enum.auto()  # reading the ClientHello before the engine sees it
    TLS = enum.auto()  # engine handshaking or open
    PLAIN = enum.auto()  # no TLS: plaintext straight to the protocol
    CLOSING = enum.auto()  # we decided to close: flush, shut down, discard input
    CLOSED = enum.auto()


class Connection:
    """The core side of one socket. Created by ``Server.accept``; never shared between threads."""

    def __init__(
        self,
        server: Server,
        conn_id: int,
        listener: Listener,
        peer: Address | None,
        local: Address | None,
        now: float,
    ) -> None:
        self.server = server
        self.id = conn_id
        self.listener = listener
        self.limits: Limits = server.limits
        self.stats = server.stats
        self.peer = peer
        self.local = local
        self.proxy: ProxyInfo | None = None
        self.client_hello: ClientHello | None = None
        self.tls: TLSEngine | None = None
        self.tls_info: TLSInfo | None = None
        self.protocol: ProtocolLayer = ProtocolLayer()
        self._out: deque[bytes | memoryview] = deque()
        self._out_size = 0
        self._pre = bytearray()  # raw bytes held while sniffing and reading the ClientHello
        self._proxy_reader = ProxyHeaderReader() if listener.proxy_protocol else None
        self._hello_reader: ClientHelloReader | None = None
        self._paused_writing = False
        self._peer_ended = False  # the protocol was told about the end of input
        self._transport_eof = False
        self._want_write_eof = False
        self._write_eof_done = False
        self._should_close = False
        self._handshake_deadline: float | None = None
        self._send_deadline: float | None = None
        self._close_deadline: float | None = None
        self._jobs: list[Job] = []
        try:
            self.tls = listener.new_engine()
            self.protocol = listener.new_protocol()
        except Exception:
            log.exception("%r: the listener could not build this connection's stack", self)
            server.stats.errors += 1
            self._stage = _Stage.CLOSING
            self._should_close = True
            return
        if self._proxy_reader is not None or self.tls is not None:
            self._handshake_deadline = now + self.limits.handshake_timeout
        if self._proxy_reader is not None:
            self._stage = _Stage.PROXY
            return
        self._enter(now)
        try:
            self._start_stream(now)  # a plaintext protocol starts now, inside accept()
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def __repr__(self) -> str:
        peer = self.peer[:2] if self.peer else "?"
        return f"<Connection #{self.id} {peer}>"

    # -- what the driver reads ---------------------------------------------------------------

    @property
    def reading(self) -> bool:
        """Read from the socket now? False applies back-pressure (and after EOF)."""
        if self._should_close or self._transport_eof:
            return False
        stage = self._stage
        if stage is _Stage.CLOSING:
            return True  # discard what still comes, until the peer's EOF
        if stage is _Stage.CLOSED or self._paused_writing:
            return False
        return self.protocol.reading if self.protocol_started else True

    @property
    def write_eof(self) -> bool:
        """Output is flushed and the core wants the write side shut (``shutdown(SHUT_WR)``)."""
        return self._want_write_eof and not self._write_eof_done and not self._out

    @property
    def should_close(self) -> bool:
        """Close the socket now (discarding any output left), then call connection_lost."""
        return self._should_close

    @property
    def closed(self) -> bool:
        """True once ``connection_lost`` was called."""
        return self._stage is _Stage.CLOSED

    @property
    def deadline(self) -> float | None:
        """When to call ``on_deadline`` next (driver's clock), None for never."""
        if self._should_close:
            return None  # nothing left to time: the driver closes now
        best = self._handshake_deadline
        for candidate in (
            self._send_deadline,
            self._close_deadline,
            self._protocol_deadline,
        ):
            if candidate is not None and (best is None or candidate < best):
                best = candidate
        return best

    @property
    def _protocol_deadline(self) -> float | None:
        """The protocol's timer, which does not run while reading is held back for our own
        output (the send timeout runs then); ``resume_writing`` lets it restart its time."""
        if self._paused_writing or self._stage not in (_Stage.TLS, _Stage.PLAIN):
            return None
        return self.protocol.deadline

    @property
    def output_size(self) -> int:
        """Bytes waiting to be written, counting what the TLS engine holds."""
        return self._out_size + (self.tls.pending_output if self.tls is not None else 0)

    @property
    def writable(self) -> bool:
        """False between the high-water mark and the return below the low-water mark."""
        return not self._paused_writing

    # -- what the driver calls ---------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket; ``b""`` means the peer shut its side (EOF)."""
        if self._should_close or self._stage is _Stage.CLOSED:
            return
        self._enter(now)
        try:
            if data:
                self.stats.bytes_received += len(data)
            else:
                self._transport_eof = True
            self._dispatch(data, now)
            self._check_high_water()  # TLS answers input by itself (KeyUpdate, alerts)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def outgoing(self) -> Sequence[bytes | memoryview]:
        """The buffers to write, in order (a live view: do not keep it across calls)."""
        tls = self.tls
        if tls is not None and self._stage is not _Stage.CLOSED:
            data = tls.data_to_send()
            if data:
                self._queue(data)
        return self._out

    def sent(self, n: int, now: float) -> None:
        """``n`` bytes from the front of ``outgoing()`` were written."""
        if n <= 0 or self._stage is _Stage.CLOSED:
            return
        self._enter(now)
        try:
            self.stats.bytes_sent += n
            self._out_size -= n
            out = self._out
            while n:
                head = out[0]
                if n >= len(head):
                    out.popleft()
                    n -= len(head)
                else:
                    out[0] = memoryview(head)[n:]
                    n = 0
            self._send_deadline = now + self.limits.send_timeout if out else None
            if self._paused_writing and self.output_size <= self.limits.write_low_water:
                self._paused_writing = False
                if self._stage in (_Stage.TLS, _Stage.PLAIN) and self.protocol_started:
                    self.protocol.resume_writing(now)  # (a handshake's own output: not yet)
            if not out:
                self._maybe_finish_close(now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def write_eof_done(self, now: float) -> None:
        """The driver shut the write side after ``write_eof`` asked for it."""
        if self._stage is _Stage.CLOSED:
            return
        self._write_eof_done = True
        self._close_deadline = now + self.limits.close_timeout
        self._maybe_finish_close(now)

    def on_deadline(self, now: float) -> None:
        """The driver's timer for ``deadline`` fired (early or late calls are harmless)."""
        if self._should_close or self._stage is _Stage.CLOSED:
            return
        self._enter(now)
        try:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self.stats.timeouts += 1
                self.abort("TLS handshake timed out")
            elif self._send_deadline is not None and now >= self._send_deadline:
                self.stats.timeouts += 1
                self.abort("peer stopped reading our output")
            elif self._close_deadline is not None and now >= self._close_deadline:
                self._should_close = True
            else:
                protocol_deadline = self._protocol_deadline
                if protocol_deadline is not None and now >= protocol_deadline:
                    self.protocol.timer_expired(now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def take_jobs(self) -> list[Job]:
        """Blocking jobs to run on worker threads; each must come back via ``job_done``."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def job_done(self, job: Job, now: float) -> None:
        """A job taken from ``take_jobs`` finished on a worker; apply it (loop thread)."""
        self._enter(now)
        try:
            job.on_done(job, now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def connection_lost(self, error: BaseException | None, now: float) -> None:
        """The socket is closed, for whatever reason. The one exit path; idempotent."""
        if self._stage is _Stage.CLOSED:
            return
        if error is not None:
            log.debug("%r: connection lost: %s", self, error)
        self._stage = _Stage.CLOSED
        self._should_close = True
        self._out.clear()
        self._out_size = 0
        self.server.now = now
        try:
            self.protocol.connection_lost(error)
        except Exception:
            log.exception("%r: protocol failed while closing", self)
        self.server.connection_ended(self)

    def shutdown(self, now: float) -> None:
        """Graceful server shutdown: let in-flight work finish, cut handshakes.

        Called by the server, outside any driver call, so changes wake the driver.
        """
        try:
            if self._stage in (_Stage.TLS, _Stage.PLAIN) and self.protocol_started:
                self.protocol.shutdown(now)
            elif self._stage is not _Stage.CLOSING:
                self.abort("server shutting down")
        except Exception:
            self._internal_error()

    # -- what the protocol layer calls -------------------------------------------------------

    @property
    def protocol_started(self) -> bool:
        return self._stage is _Stage.PLAIN or self.tls_info is not None

    @property
    def closing(self) -> bool:
        return self._stage in (_Stage.CLOSING, _Stage.CLOSED)

    @property
    def now(self) -> float:
        """The time of the driver call in progress (``server.now``): a change made from
        another connection's call is timed by that call."""
        return self.server.now

    def wall_time(self, now: float) -> float:
        """Unix time at driver time ``now``."""
        return self.server.wall_time(now)

    def write(self, data: bytes) -> None:
        """Queue plaintext for the peer. Ignored once the connection is closing."""
        if not data or self._stage in (_Stage.CLOSING, _Stage.CLOSED):
            return
        if self.tls is not None:
            if self.tls.closed:
                return  # the session is over (a ragged EOF ends it too): nothing can go out
            self.tls.send(data)
        else:
            self._queue(data)
        self._arm_send_deadline()
        self._check_high_water()
        self._touch()

    def close(self) -> None:
        """Flush what was written, send close_notify, shut down, close. Idempotent."""
        if self._stage in (_Stage.CLOSING, _Stage.CLOSED):
            return
        self._stage = _Stage.CLOSING
        self._handshake_deadline = None
        if self.tls is not None:
            self.tls.close()  # close_notify, or an abort if the handshake is unfinished
        self._maybe_finish_close(self.server.now)
        self._touch()

    def abort(self, reason: str) -> None:
        """Close at once, dropping unsent output; ``reason`` goes to the log."""
        if self._stage is _Stage.CLOSED:
            return
        log.info("%r: closing: %s", self, reason)
        self._stage = _Stage.CLOSING
        self._should_close = True
        self._touch()

    def submit_job(self, fn: Callable[[], Any], on_done: Callable[[Job, float], None]) -> Job:
        """Run ``fn`` on a worker thread; ``on_done(job, now)`` runs here afterwards."""
        job = Job(fn, on_done)
        self._jobs.append(job)
        self._touch()
        return job

    # -- internals ---------------------------------------------------------------------------

    def _enter(self, now: float) -> None:
        self.server.now = now
        self.server.current = self

    def _leave(self) -> None:
        self.server.current = None

    def _touch(self) -> None:
        """State changed: if no driver call on this connection is under way, wake the driver."""
        if self.server.current is not self:
            self.server.wake(self)

    def _internal_error(self) -> None:
        log.exception("%r: internal error; closing the connection", self)
        self.stats.errors += 1
        self.abort("internal error")

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        self._arm_send_deadline()  # any output, even an alert, must not wait forever

    def _check_high_water(self) -> None:
        """Output at the high-water mark, whoever produced it, pauses producing and reading."""
        if not self._paused_writing and self.output_size >= self.limits.write_high_water:
            self._paused_writing = True

    def _arm_send_deadline(self) -> None:
        if self._send_deadline is None:
            self._send_deadline = self.server.now + self.limits.send_timeout

    def _start_stream(self, now: float) -> None:
        """After any PROXY header: sniff for TLS, or start the plaintext protocol."""
        if self.tls is not None:
            self._stage = _Stage.SNIFF
        else:
            self._stage = _Stage.PLAIN
            self._handshake_deadline = None
            self.protocol.connection_made(self, now)

    def _dispatch(self, data: bytes, now: float) -> None:
        stage = self._stage
        if stage is _Stage.TLS:
            self._receive_tls(data, now)
        elif stage is _Stage.PLAIN:
            if data:
                self.protocol.data_received(data, now)
            else:
                self._end_of_input(True, now)
        elif stage is _Stage.CLOSING:
            if not data:
                self._maybe_finish_close(now)
        elif stage is _Stage.PROXY:
            self._receive_proxy(data, now)
        elif stage is _Stage.SNIFF:
            self._receive_sniff(data, now)
        elif stage is _Stage.HELLO:
            self._receive_hello(data, now)

    def _receive_proxy(self, data: bytes, now: float) -> None:
        assert self._proxy_reader is not None
        if not data:
            self.abort("peer closed before sending its PROXY header")
            return
        try:
            parsed = self._proxy_reader.feed(data)
        except ProtocolError as exc:
            self.stats.errors += 1
            self.abort(f"bad PROXY header: {exc}")
            return
        if parsed is None:
            return
        self.proxy, rest = parsed
        self._proxy_reader = None
        if self.proxy.source is not None:
            self.peer = self.proxy.source
        self._start_stream(now)
        if rest:
            self._dispatch(rest, now)

    def _receive_sniff(self, data: bytes, now: float) -> None:
        if not data:
            self.abort("peer closed before the TLS handshake")
            return
        self._pre += data
        kind = sniff(bytes(self._pre))
        if kind is None:
            return
        if kind is Sniff.HTTP:
            self.stats.errors += 1
            log.info("%r: plain HTTP on a TLS port; answering 400", self)
            assert self.tls is not None
            self.tls.close()
            self._queue(plaintext_http_rejection())
            self._stage = _Stage.CLOSING
            self._handshake_deadline = None
            self._maybe_finish_close(now)
            return
        held, self._pre = bytes(self._pre), bytearray()
        if kind is Sniff.TLS:
            self._stage = _Stage.HELLO
            self._hello_reader = ClientHelloReader()
            self._receive_hello(held, now)
        else:  # not TLS: let the engine answer with its alert
            self._stage = _Stage.TLS
            self._receive_tls(held, now)

    def _receive_hello(self, data: bytes, now: float) -> None:
        assert self._hello_reader is not None
        if not data:
            self.abort("peer closed during the TLS ClientHello")
            return
        self._pre += data
        try:
            hello = self._hello_reader.feed(data)
        except RecordError as exc:
            self.stats.tls_errors += 1
            log.info("%r: bad ClientHello: %s", self, exc)
            self._queue(alert_record(exc.alert))
            self._stage = _Stage.CLOSING
            self._handshake_deadline = None
            self._maybe_finish_close(now)
            return
        if hello is None:
            return
        self.client_hello = hello
        held, self._pre, self._hello_reader = bytes(self._pre), bytearray(), None
        self._stage = _Stage.TLS
        self._receive_tls(held, now)

    def _receive_tls(self, data: bytes, now: float) -> None:
        tls = self.tls
        assert tls is not None
        try:
            events = tls.receive_data(data)
        except TLSError as exc:
            self.stats.tls_errors += 1
            log.info("%r: %s", self, exc)
            self._handshake_deadline = None
            self.close()  # the engine failed: no close_notify, but its alert is flushed
            return
        for event in events:
            kind = type(event)
            if kind is ApplicationData:
                # Nothing after the peer's close_notify or EOF is part of the stream.
                if self._stage is _Stage.TLS and not self._peer_ended:
                    self.protocol.data_received(event.data, now)  # type: ignore[union-attr]
            elif kind is HandshakeComplete:
                self.tls_info = event.info  # type: ignore[union-attr]
                self._handshake_deadline = None
                self.stats.handshakes += 1
                self.protocol.connection_made(self, now)
            elif kind is CloseNotify:
                self._end_of_input(True, now)
            elif kind is RaggedEOF:
                self._end_of_input(False, now)
        if not data and self.tls_info is None and self._stage is _Stage.TLS:
            self.abort("peer closed during the TLS handshake")

    def _end_of_input(self, clean: bool, now: float) -> None:
        if not self._peer_ended:
            self._peer_ended = True
            if self._stage in (_Stage.TLS, _Stage.PLAIN):
                self.protocol.eof_received(clean, now)

    def _maybe_finish_close(self, now: float) -> None:
        """Advance a graceful close: flushed -> write side shut -> peer EOF or timeout."""
        if self._stage is not _Stage.CLOSING or self._should_close:
            return
        if self.tls is not None:
            self.outgoing()  # collect close_notify / alert from the engine
        if self._out:
            return
        if self._transport_eof or self.limits.close_timeout == 0:
            self._should_close = True
        elif not self._write_eof_done:
            self._want_write_eof = True
