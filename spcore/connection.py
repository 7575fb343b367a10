"""One connection, accepted or outbound: the layers composed, and the contract a driver drives.

Bytes climb through the stages (PROXY header, first-bytes sniffing, ClientHello reading, TLS)
into a protocol layer, and the protocol's output goes down the same way into a queue of
buffers. The driver reports what happened with one call each and, after every call, asks
``next_action()`` what to do until it answers None (see ``spcore.actions`` and
docs/driver-contract.md):

* ``connected(local, now)``: an outbound connection's socket connected (``Connect``).
* ``receive_data(data, now)``: bytes that arrived; ``b""`` when the peer shut its side.
* ``sent(n, now)``: the kernel took ``n`` bytes of the ``Send`` in flight.
* ``on_deadline(now)``: the timer of the latest ``SetTimer`` fired.
* ``job_done(job, now)``: a job of a ``RunJobs`` finished on a worker thread.
* ``connection_lost(error, now)``: the socket is closed, whatever the cause; the last call.

The lifecycle (opening stages, open, the graceful close, closed) is the state machine of
``spcore.lifecycle``. A ``Connection`` needs no server: the ``Hub`` it is given (or makes)
holds what the connections of one server share, and opens the outbound ones
(``open_connection``). User timers (``call_later``) are part of the connection's deadline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .actions import (
    CLOSE,
    READ_OFF,
    READ_ON,
    SHUT_WRITE,
    Action,
    RunJobs,
    Send,
    SetTimer,
)
from .addresses import describe_address, inet_address
from .config import Limits
from .errors import ProtocolError
from .jobs import Job
from .layer import ProtocolLayer
from .lifecycle import (
    CLOSING_STATES,
    OPENING_STATES,
    STATE_TIMEOUTS,
    Event,
    Input,
    Output,
    State,
    next_state,
)
from .preamble import ProxyHeaderReader, ProxyInfo, Sniff, plaintext_http_rejection, sniff
from .remote import Remote
from .stats import Stats
from .timers import Callback, Timer, TimerQueue, check_delay
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

__all__ = ["Address", "Connection", "Hub", "StackSource"]

log = logging.getLogger("spcore.connection")

Address = tuple[Any, ...]  # a socket address as the socket module gives it

_CONNECTING, _OPEN, _FLUSHING, _DRAINING = (
    State.CONNECTING,
    State.OPEN,
    State.FLUSHING,
    State.DRAINING,
)
_CLOSE, _CLOSED = State.CLOSE, State.CLOSED
_TLS_VERSIONS = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}


class StackSource(Protocol):
    """What a connection builds its layers from (``spcore.Listener`` is one)."""

    @property
    def proxy_protocol(self) -> bool:
        """A PROXY protocol header comes first."""
        ...

    @property
    def protocol(self) -> Callable[[], ProtocolLayer]:
        """Makes the protocol layer of each connection."""
        ...

    def new_engine(self) -> TLSEngine | None:
        """A TLS engine for a new connection, or None for plaintext."""
        ...


class _Outbound:
    """The stack of an outbound connection: the remote's engine under one protocol."""

    proxy_protocol = False

    def __init__(self, remote: Remote, protocol: ProtocolLayer) -> None:
        self.remote = remote
        self._protocol = protocol

    @property
    def protocol(self) -> Callable[[], ProtocolLayer]:
        return lambda: self._protocol

    def new_engine(self) -> TLSEngine | None:
        return self.remote.new_engine()


class Hub:
    """What the connections of one server share: their only link upward.

    The limits and counters; the live connections by id; the driver's clock at its latest
    call into the core (a change made during that call is timed by it, whichever connection
    it lands on: a broadcast's deadlines); the connection that call is on, so that a change
    made elsewhere (another connection's handler, a call handed to the loop thread, the
    server) is noted for the driver to sync; the outbound connections waiting for the
    driver to connect them; the server-wide timers; and the driver's thread-safe call.
    """

    def __init__(self, limits: Limits | None = None, stats: Stats | None = None) -> None:
        self.limits = limits or Limits()
        self.stats = stats or Stats()
        #: Live connections by id.
        self.connections: dict[int, Connection] = {}
        #: The driver's clock at its latest call into the core.
        self.now = 0.0
        #: The connection whose driver call is under way.
        self.current: Connection | None = None
        #: Unix time minus the driver's clock (``Server.start`` learns it).
        self.wall_offset = 0.0
        #: The driver's ``call_soon_threadsafe`` (``Server.attach``); None without a driver.
        self.loop_call: Callable[..., bool] | None = None
        #: How many of the live connections are outbound.
        self.outbound = 0
        #: The server-wide user timers (``Server.call_later``).
        self.timers = TimerQueue()
        self._woken: dict[Connection, None] = {}
        self._dials: deque[Connection] = deque()
        self._next_id = 1

    def add(self, conn: Connection) -> int:
        """Register a new connection; its id."""
        conn_id = self._next_id
        self._next_id += 1
        self.connections[conn_id] = conn
        self.stats.connections_total += 1
        self.stats.connections_open = len(self.connections)
        if conn.outbound:
            self.outbound += 1
            self.stats.connections_outbound += 1
        return conn_id

    def remove(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None and conn.outbound:
            self.outbound -= 1
        self._woken.pop(conn, None)
        self.stats.connections_open = len(self.connections)

    def open_connection(
        self, remote: Remote, protocol: ProtocolLayer, *, send_first: bytes = b""
    ) -> Connection:
        """A new outbound connection to ``remote`` running ``protocol`` (see
        ``Server.open_connection``); the driver is asked to connect it."""
        return Connection(
            _Outbound(remote, protocol),
            self,
            connect_to=remote.address,
            send_first=send_first,
            now=self.now,
        )

    def dial(self, conn: Connection) -> None:
        """Note that ``conn`` waits for the driver to connect it."""
        self._dials.append(conn)

    def pop_dial(self) -> Connection | None:
        """One outbound connection for the driver to connect, or None. One closed before the
        driver ever had it has no socket to close: it ends here."""
        while self._dials:
            conn = self._dials.popleft()
            if conn.state is _CONNECTING:
                return conn
            conn.connection_lost(None, self.now)
        return None

    def wake(self, conn: Connection) -> None:
        """Note that ``conn`` changed outside its own driver call."""
        if not conn.closed:
            self._woken[conn] = None

    def pop_woken(self) -> Connection | None:
        """One connection to sync, or None."""
        woken = self._woken
        if not woken:
            return None
        conn = next(iter(woken))
        del woken[conn]
        return conn

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> bool:
        """Have the driver run ``fn(*args)`` on its loop thread soon (from any thread); False
        if no driver runs, or it has stopped (``fn`` then never runs)."""
        loop_call = self.loop_call
        return loop_call is not None and loop_call(fn, *args)


class Connection:
    """The core side of one socket. Made by ``Server.accept`` (accepted) or
    ``open_connection`` (outbound: ``connect_to`` is its address, ``send_first`` bytes go out
    before anything else, even a TLS ClientHello: a PROXY header); never shared between
    threads."""

    def __init__(
        self,
        listener: StackSource,
        hub: Hub | None = None,
        *,
        peer: Address | None = None,
        local: Address | None = None,
        now: float = 0.0,
        connect_to: tuple[str, int] | str | None = None,
        send_first: bytes = b"",
    ) -> None:
        hub = Hub() if hub is None else hub
        self._hub = hub
        self.limits = hub.limits
        self.stats = hub.stats
        #: Where an outbound connection connects (None: an accepted connection).
        self.remote = connect_to
        self.outbound = connect_to is not None
        self.id = hub.add(self)
        self.listener = listener
        self.peer = inet_address(connect_to) if peer is None else peer
        self.local = local
        self.proxy: ProxyInfo | None = None
        #: The ClientHello as the record layer read it (TLS listeners, once complete).
        self.client_hello: ClientHello | None = None
        self.tls: TLSEngine | None = None
        self.tls_info: TLSInfo | None = None
        self.protocol: ProtocolLayer = ProtocolLayer()
        self._state = State.CLOSE  # where a connection whose stack cannot be built stays
        self._input = Input.OPEN
        self._out: deque[bytes | memoryview] = deque()
        self._out_size = 0
        self._in_flight = 0  # bytes of the Send in flight; 0: none
        self._pre = bytearray()  # raw bytes held while sniffing and reading the ClientHello
        self._proxy_reader: ProxyHeaderReader | None = None
        self._hello_reader: ClientHelloReader | None = None
        self._paused_writing = False
        self._state_deadline: float | None = None  # the state's timer (STATE_TIMEOUTS)
        self._send_deadline: float | None = None
        self._jobs: list[Job] = []
        self._output = Output.OPEN
        self._timers = TimerQueue()
        self._lost_reason: BaseException | None = None  # what ended it, when the core knows
        self._told_reading = False  # what the driver was last told (it starts not reading)
        self._told_deadline: float | None = None
        outer = hub.current  # (a protocol opening this connection in its own call)
        self._enter(now)
        try:
            self.tls = listener.new_engine()
            self.protocol = listener.protocol()
        except Exception:
            log.exception("%r: the listener could not build this connection's stack", self)
            self.stats.errors += 1
            hub.current = outer
            if connect_to is not None:
                hub.dial(self)  # (which ends it: there is nothing to connect)
            return
        try:
            if connect_to is not None:
                self._begin(_CONNECTING)
                if send_first:
                    self._queue(bytes(send_first))  # held until connected
                hub.dial(self)
            elif listener.proxy_protocol:
                self._proxy_reader = ProxyHeaderReader()
                self._begin(State.PROXY)
            elif self.tls is not None:
                self._begin(State.SNIFF)
            else:
                self._begin(State.OPEN)
                self.protocol.connection_made(self, now)
        except Exception:
            self._internal_error()
        finally:
            hub.current = outer

    def __repr__(self) -> str:
        if self.remote is not None:
            return f"<Connection #{self.id} to {describe_address(self.remote)}>"
        peer = self.peer[:2] if self.peer else "?"
        return f"<Connection #{self.id} {peer}>"

    # -- the driver's side -------------------------------------------------------------------

    def next_action(self) -> Action | None:
        """What the driver must do next; None once there is nothing (until its next call)."""
        state = self._state
        if state is _CLOSE:
            if self._jobs:  # every job submitted runs, and comes back after connection_lost
                return self._run_jobs()
            return CLOSE
        if state is _CLOSED:
            return None
        if state is _CONNECTING:  # nothing goes out, nothing is read: only its timer
            deadline = self._state_deadline
            if deadline != self._told_deadline:
                self._told_deadline = deadline
                return SetTimer(deadline)
            return None
        if not self._in_flight:
            tls = self.tls
            if tls is not None:
                data = tls.data_to_send()
                if data:
                    self._queue(data)
            if self._out:
                self._in_flight = size = self._out_size
                return Send(tuple(self._out), size)
            if state is _FLUSHING:  # all out: shut the write side and wait, or close now
                if self._input is Input.EOF or self.limits.close_timeout == 0:
                    self._fire(Event.FLUSHED_AND_DONE)
                    return CLOSE
                self._fire(Event.FLUSHED)
                if self._output is not Output.ENDED:  # (a half-close shut it already)
                    self._output = Output.ENDED
                    return SHUT_WRITE
            elif self._output is Output.ENDING and state is _OPEN:  # the half-close's end
                self._output = Output.ENDED
                return SHUT_WRITE
        reading = self.reading
        if reading is not self._told_reading:
            self._told_reading = reading
            return READ_ON if reading else READ_OFF
        if self._jobs:
            return self._run_jobs()
        deadline = self.deadline
        if deadline != self._told_deadline:
            self._told_deadline = deadline
            return SetTimer(deadline)
        return None

    def connected(self, local: Address | str | None, now: float) -> None:
        """An outbound connection's socket connected (``local``: its address); its stack
        starts: the TLS client handshake, or the protocol. Late calls are harmless."""
        if self._state is not _CONNECTING:
            return  # timed out or closed meanwhile: its Close is on its way
        self._enter(now)
        try:
            self.local = inet_address(local)
            if self._out:
                self._arm_send_deadline()  # what waited (send_first) is due now
            if self.tls is not None:
                self._fire(Event.CONNECTED_TLS)
                self.tls.start()  # the ClientHello
            else:
                self._fire(Event.CONNECTED_PLAIN)
                self.protocol.connection_made(self, now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket; ``b""`` means the peer shut its side (EOF)."""
        state = self._state
        if state is _CLOSE or state is _CLOSED:
            return
        self._enter(now)
        try:
            if data:
                self.stats.bytes_received += len(data)
            self._dispatch(data, now)
            if not data:
                self._input = Input.EOF
            self._check_high_water()  # TLS answers input by itself (KeyUpdate, alerts)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def sent(self, n: int, now: float) -> None:
        """The kernel took ``n`` bytes from the front of the ``Send`` in flight, which ends it
        (``n`` may be short of its size: the rest leads the next ``Send``)."""
        state = self._state
        if state is _CLOSE or state is _CLOSED:
            return  # a send completing after an abort: its bytes no longer matter
        if not 0 <= n <= self._in_flight:
            raise ValueError(f"sent({n}) with {self._in_flight} bytes in flight")
        self._in_flight = 0
        if not n:
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
                if self._state is _OPEN:  # (a handshake's own output: not yet)
                    self.protocol.resume_writing(now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def on_deadline(self, now: float) -> None:
        """The timer of the latest ``SetTimer`` fired (early or late calls are harmless)."""
        state = self._state
        if state is _CLOSE or state is _CLOSED:
            return
        self._told_deadline = None  # a timer that fired is disarmed: the next one is told again
        self._enter(now)
        try:
            if self._state_deadline is not None and now >= self._state_deadline:
                if state is _CONNECTING:
                    self._connect_timed_out()
                elif state in OPENING_STATES:
                    self.stats.timed_out("handshake")
                    log.info("%r: closing: TLS handshake timed out", self)
                self._fire(Event.TIMEOUT)
            elif self._send_deadline is not None and now >= self._send_deadline:
                self.stats.timed_out("send")
                self.abort("peer stopped reading our output")
            else:
                protocol_deadline = self._protocol_deadline
                if protocol_deadline is not None and now >= protocol_deadline:
                    self.protocol.timer_expired(now)
                for timer in self._timers.due(now):
                    if self._state is not _OPEN:
                        break
                    timer.callback(now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def job_done(self, job: Job, now: float) -> None:
        """A job of a ``RunJobs`` finished on a worker; apply it (loop thread)."""
        self._enter(now)
        self.stats.jobs_done += 1
        try:
            job.on_done(job, now)
        except Exception:
            self._internal_error()
        finally:
            self._leave()

    def connection_lost(self, error: BaseException | None, now: float) -> None:
        """The socket is closed, for whatever reason. The one exit path; idempotent."""
        state = self._state
        if state is _CLOSED:
            return
        if state is _CONNECTING and error is not None:
            self.stats.connect_failures += 1
            log.info("%r: connect failed: %s", self, error)
        elif error is not None:
            log.debug("%r: connection lost: %s", self, error)
        self._fire(Event.LOST)
        self._out.clear()
        self._out_size = self._in_flight = 0
        self._timers.clear()
        self._hub.now = now
        try:
            self.protocol.connection_lost(error if error is not None else self._lost_reason)
        except Exception:
            log.exception("%r: protocol failed while closing", self)
        self._hub.remove(self)

    def shutdown(self, now: float) -> None:
        """Graceful server shutdown: let in-flight work finish, cut handshakes.

        Called by the server, outside any driver call, so changes wake the driver.
        """
        try:
            if self._state is _OPEN:
                self.protocol.shutdown(now)
            elif self._state in OPENING_STATES:
                self.abort("server shutting down")
        except Exception:
            self._internal_error()

    # -- what the driver and tests may read ----------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        """True once ``connection_lost`` was called."""
        return self._state is _CLOSED

    @property
    def reading(self) -> bool:
        """Whether the core wants input now (what ``Read`` actions tell the driver)."""
        state = self._state
        if self._input is Input.EOF or state is _CLOSE or state is _CLOSED or state is _CONNECTING:
            return False
        if state is _FLUSHING or state is _DRAINING:
            return True  # discard what still comes, until the peer's EOF
        if self._paused_writing:
            return False
        return self.protocol.reading if state is _OPEN else True

    @property
    def deadline(self) -> float | None:
        """The earliest of the connection's timers (what ``SetTimer`` actions tell)."""
        if self._state is _CLOSE or self._state is _CLOSED:
            return None  # nothing left to time: the driver closes now
        best = self._state_deadline
        send = self._send_deadline
        if send is not None and (best is None or send < best):
            best = send
        protocol_deadline = self._protocol_deadline
        if protocol_deadline is not None and (best is None or protocol_deadline < best):
            best = protocol_deadline
        if self._state is _OPEN:
            timer = self._timers.next
            if timer is not None and (best is None or timer < best):
                best = timer
        return best

    @property
    def _protocol_deadline(self) -> float | None:
        """The protocol's timer, which does not run while reading is held back for our own
        output (the send timeout runs then); ``resume_writing`` lets it restart its time."""
        if self._paused_writing or self._state is not _OPEN:
            return None
        return self.protocol.deadline

    # -- the Transport a protocol layer sees ---------------------------------------------------

    @property
    def output_size(self) -> int:
        """Bytes waiting to be written, counting what the TLS engine holds."""
        return self._out_size + (self.tls.pending_output if self.tls is not None else 0)

    @property
    def writable(self) -> bool:
        """False between the high-water mark and the return below the low-water mark."""
        return not self._paused_writing

    @property
    def closing(self) -> bool:
        return self._state in CLOSING_STATES

    @property
    def now(self) -> float:
        """The time of the driver call in progress: a change made from another connection's
        call is timed by that call."""
        return self._hub.now

    def wall_time(self, now: float) -> float:
        """Unix time at driver time ``now``."""
        return now + self._hub.wall_offset

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the driver's loop thread soon; callable from any thread.

        True: it will run exactly once, in the order of this thread's calls. False: the driver
        has stopped (or none runs this connection) and it never will.
        """
        return self._hub.call_soon_threadsafe(fn, *args)

    def sync(self) -> None:
        """The protocol's ``reading`` or ``deadline`` changed outside a driver call on this
        connection (in a call handed to the loop thread, say): have the driver ask again."""
        self._touch()

    def write(self, data: bytes) -> None:
        """Queue plaintext for the peer. Ignored once the connection is closing or its output
        ended (``write_eof``)."""
        if not data or self._state in CLOSING_STATES or self._output is not Output.OPEN:
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
        if self._state in CLOSING_STATES:
            return
        self._fire(Event.CLOSE)
        if self.tls is not None:
            self.tls.close()  # close_notify, or an abort if the handshake is unfinished
        self._touch()

    def write_eof(self) -> None:
        """End our side after what was written (a half-close): TLS close_notify, then the
        write side is shut; input goes on until ``close()``. Idempotent. Asked before the
        connection is open (an outbound one still connecting or handshaking: what was
        written waits too), it happens once open."""
        if self._state in CLOSING_STATES or self._output is not Output.OPEN:
            return
        self._output = Output.ENDING
        if self._state is _OPEN and self.tls is not None:
            self.tls.close()  # close_notify after what is queued
        self._touch()

    def abort(self, reason: str) -> None:
        """Close at once, dropping unsent output; ``reason`` goes to the log."""
        state = self._state
        if state is _CLOSE or state is _CLOSED:
            return
        log.info("%r: closing: %s", self, reason)
        self._fire(Event.ABORT)
        self._touch()

    def submit_job(self, fn: Callable[[], Any], on_done: Callable[[Job, float], None]) -> Job:
        """Run ``fn`` on a worker thread; ``on_done(job, now)`` runs here afterwards."""
        job = Job(fn, on_done)
        self.stats.jobs_submitted += 1
        self._jobs.append(job)
        self._touch()
        return job

    def call_later(self, delay: float, callback: Callback, *, every: float | None = None) -> Timer:
        """Run ``callback(now)`` in ``delay`` seconds (then every ``every`` seconds, until
        cancelled), while the connection is open; its end cancels it."""
        check_delay(delay, every)
        return self.call_at(self._hub.now + delay, callback, every=every)

    def call_at(self, when: float, callback: Callback, *, every: float | None = None) -> Timer:
        """Run ``callback(now)`` at driver time ``when`` (see ``call_later``)."""
        return self.arm(Timer(callback, every), when)

    def arm(self, timer: Timer, when: float) -> Timer:
        """Arm a ``Timer`` made beforehand (a blocking handler's, made on a worker)."""
        self._timers.arm(timer, when)
        self._touch()
        return timer

    def open_connection(
        self, remote: Remote, protocol: ProtocolLayer, *, send_first: bytes = b""
    ) -> Connection:
        """A new outbound connection of this server to ``remote``, run by ``protocol`` (a
        proxy's other side); see ``Server.open_connection``."""
        return self._hub.open_connection(remote, protocol, send_first=send_first)

    def changed(self) -> None:
        """The protocol's ``reading`` or ``deadline`` changed outside this connection's own
        calls (in another connection's, say): have the driver look again."""
        self._touch()

    # -- internals ---------------------------------------------------------------------------

    def _begin(self, state: State) -> None:
        """The first state after the stack is built (the handshake timer starts with it)."""
        self._state = state
        timer = STATE_TIMEOUTS.get(state)
        if timer is not None:
            self._state_deadline = self._hub.now + getattr(self.limits, timer)

    def _fire(self, event: Event) -> None:
        """Take the transition ``event`` makes from the current state (lifecycle.TRANSITIONS),
        starting or stopping the state's timer when it changes."""
        old = self._state
        new = next_state(old, event)
        self._state = new
        timer = STATE_TIMEOUTS.get(new)
        if timer != STATE_TIMEOUTS.get(old):
            self._state_deadline = (
                None if timer is None else self._hub.now + getattr(self.limits, timer)
            )

    def _run_jobs(self) -> RunJobs:
        jobs, self._jobs = tuple(self._jobs), []
        return RunJobs(jobs)

    def _enter(self, now: float) -> None:
        hub = self._hub
        hub.now = now
        hub.current = self

    def _leave(self) -> None:
        self._hub.current = None

    def _touch(self) -> None:
        """State changed: if no driver call on this connection is under way, wake the driver."""
        if self._hub.current is not self:
            self._hub.wake(self)

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
        if self._send_deadline is None and self._state is not _CONNECTING:
            self._send_deadline = self._hub.now + self.limits.send_timeout

    def _dispatch(self, data: bytes, now: float) -> None:
        state = self._state
        if state is _OPEN:
            if self.tls is not None:
                self._receive_tls(data, now)
            elif data:
                self.protocol.data_received(data, now)
            else:
                self._end_of_input(True, now)
        elif state is State.HANDSHAKE:
            self._receive_tls(data, now)
        elif state is _FLUSHING or state is _DRAINING:
            if not data and state is _DRAINING:
                self._fire(Event.PEER_EOF)  # (FLUSHING: the flush's end sees the EOF)
        elif state is State.PROXY:
            self._receive_proxy(data, now)
        elif state is State.SNIFF:
            self._receive_sniff(data, now)
        elif state is State.HELLO:
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
        if self.tls is not None:
            self._fire(Event.TLS_LISTENER)
        else:
            self._fire(Event.PLAIN_LISTENER)
            self.protocol.connection_made(self, now)
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
            self._fire(Event.HTTP_SNIFFED)
            return
        held, self._pre = bytes(self._pre), bytearray()
        if kind is Sniff.TLS:
            self._fire(Event.TLS_SNIFFED)
            self._hello_reader = ClientHelloReader()
            self._receive_hello(held, now)
        else:  # not TLS: let the engine answer with its alert
            self._fire(Event.OTHER_SNIFFED)
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
            self.stats.tls_failed("bad_client_hello")
            log.info("%r: bad ClientHello: %s", self, exc)
            self._queue(alert_record(exc.alert))
            self._fire(Event.HELLO_BAD)
            return
        if hello is None:
            return
        self.client_hello = hello
        held, self._pre, self._hello_reader = bytes(self._pre), bytearray(), None
        self._fire(Event.HELLO_READ)
        self._receive_tls(held, now)

    def _receive_tls(self, data: bytes, now: float) -> None:
        tls = self.tls
        assert tls is not None
        try:
            events = tls.receive_data(data)
        except TLSError as exc:
            self.stats.tls_failed(_failure_reason(exc))
            log.info("%r: %s%s", self, exc, self._offered() if exc.during_handshake else "")
            self._lost_reason = exc  # (an outbound connection's protocol learns why)
            self.close()  # the engine failed: no close_notify, but its alert is flushed
            return
        for event in events:
            kind = type(event)
            if kind is ApplicationData:
                # Nothing after the peer's close_notify or EOF is part of the stream.
                if self._state is _OPEN and self._input is Input.OPEN:
                    self.protocol.data_received(event.data, now)  # type: ignore[union-attr]
            elif kind is HandshakeComplete:
                self.tls_info = event.info  # type: ignore[union-attr]
                self.stats.handshakes += 1
                self._fire(Event.HANDSHAKE_DONE)
                self.protocol.connection_made(self, now)
                if self._output is Output.ENDING:
                    tls.close()  # a half-close asked for while handshaking
            elif kind is CloseNotify:
                self._end_of_input(True, now)
            elif kind is RaggedEOF:
                self._end_of_input(False, now)
        if not data and self._state is State.HANDSHAKE and not tls.handshake_complete:
            self.abort("peer closed during the TLS handshake")

    def _connect_timed_out(self) -> None:
        self.stats.timed_out("connect")
        self.stats.connect_failures += 1
        seconds = self.limits.connect_timeout
        self._lost_reason = TimeoutError(f"connect timed out after {seconds:g} s")
        log.info("%r: connect timed out after %g s", self, seconds)

    def _offered(self) -> str:
        """What the client offered, for the log line of a failed handshake."""
        hello = self.client_hello
        if hello is None:
            return ""
        version = hello.max_version
        offer = [f"up to {_TLS_VERSIONS.get(version, hex(version))}"]
        if hello.server_name:
            offer.append(f"SNI {hello.server_name}")
        if hello.alpn_protocols:
            offer.append("ALPN " + ",".join(hello.alpn_protocols))
        return " (the client offered " + "; ".join(offer) + ")"

    def _end_of_input(self, clean: bool, now: float) -> None:
        if self._input is Input.OPEN:
            self._input = Input.ENDED
            if self._state is _OPEN:
                self.protocol.eof_received(clean, now)


def _failure_reason(exc: TLSError) -> str:
    """A TLS failure's reason for the counters: the certificate check that failed
    (``verify_untrusted``...), else the alert by its RFC 8446 name, else ``other``."""
    if exc.verify_failure is not None:
        return f"verify_{exc.verify_failure.value}"
    if exc.alert is not None:
        return exc.alert.name.lower()
    return "other"
