"""Stream protocols: SPServer's handler model over a framing (line, dot, length, raw).

A ``StreamHandler`` is made per connection and gets ``start``, ``message``, ``timeout``,
``error`` and ``close`` calls with the connection's ``Session``. A session sends framed
messages, closes after what it sent (SPServer's "close after reply"), and reaches the other
sessions of its ``Sessions`` registry (``broadcast``, ``send_to``), which is how a chat room
works: the protocols of one listener share a registry (``stream_listener`` makes one), or of
several when they are given the same.

A handler marked ``blocking`` has its calls run as jobs on the driver's workers. It then
gets a deferred session: what it does is recorded and applied on the loop thread when the
job comes back, so handler code never touches the core from another thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ProtocolError, RemoteProtocolError
from .framing import Framing, FramingError, LineFraming
from .jobs import Job
from .layer import ProtocolLayer, Transport

if TYPE_CHECKING:
    from .tls.engine import TLSInfo

__all__ = ["DeferredSession", "Session", "Sessions", "StreamHandler", "StreamProtocol"]

log = logging.getLogger("spcore.stream")


class StreamHandler:
    """Override what you need. One instance serves one connection."""

    #: Run every call as a job on the driver's worker threads (the handler may block).
    blocking: bool = False
    #: Seconds without input before ``timeout`` is called (None: never).
    idle_timeout: float | None = 300.0

    def framing(self) -> Framing:
        """The framing for this connection (default: lines of at most 8 KiB)."""
        return LineFraming()

    def start(self, session: Session | DeferredSession) -> None:
        """The connection is ready (after the TLS handshake, if any)."""

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        """One complete message arrived."""

    def timeout(self, session: Session | DeferredSession) -> None:
        """Nothing arrived for ``idle_timeout`` seconds; by default, close."""
        session.close()

    def error(self, session: Session | DeferredSession, error: ProtocolError) -> None:
        """The peer broke the framing or truncated the stream; the connection closes next."""

    def close(self, session: Session) -> None:
        """The connection is gone: the last call, after every ``message``. Called on the
        loop thread (even for blocking handlers), once a job of this handler still running
        has come back."""


class Sessions(Mapping[int, "Session"]):
    """The live sessions of the stream protocols that share this registry, by id."""

    def __init__(self) -> None:
        self._by_id: dict[int, Session] = {}

    def __getitem__(self, session_id: int) -> Session:
        return self._by_id[session_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, session: Session) -> None:
        self._by_id[session.id] = session

    def discard(self, session: Session) -> None:
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]


class Session:
    """A handler's handle on its connection and, through its registry, on the others."""

    def __init__(self, conn: Transport, framing: Framing, sessions: Sessions) -> None:
        self._conn = conn
        self._framing = framing
        self._sessions = sessions
        self.id = conn.id
        #: Free for the handler's own per-connection state.
        self.data: dict[str, Any] = {}

    @property
    def peer(self) -> tuple[Any, ...] | None:
        return self._conn.peer

    @property
    def tls(self) -> TLSInfo | None:
        return self._conn.tls_info

    @property
    def closed(self) -> bool:
        return self._conn.closing

    @property
    def session_ids(self) -> tuple[int, ...]:
        """The ids of every live session of the registry, this one included."""
        return tuple(self._sessions)

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the loop thread soon, from any thread (a handler's own thread
        sending through this session, say); False if the driver has stopped (see
        ``Transport.call_soon_threadsafe``)."""
        return self._conn.call_soon_threadsafe(fn, *args)

    def send(self, message: bytes) -> None:
        """Send one message, framed. Ignored once the session is closing.

        A peer that has let more than ``Limits.max_session_backlog`` pile up is disconnected
        instead: its output would otherwise grow with every broadcast.
        """
        conn = self._conn
        if conn.output_size > conn.limits.max_session_backlog:
            conn.stats.errors += 1
            conn.abort("slow consumer: session backlog over max_session_backlog")
            return
        conn.write(self._framing.frame(message))

    def close(self) -> None:
        """Close after everything sent so far has been flushed."""
        self._conn.close()

    def send_to(self, session_id: int, message: bytes) -> bool:
        """Send ``message`` to another session; False if it is gone."""
        other = self._sessions.get(session_id)
        if other is None or other.closed:
            return False
        other.send(message)
        return True

    def broadcast(self, message: bytes, *, include_self: bool = False) -> int:
        """Send ``message`` to every live session (but this one, unless asked); the count."""
        count = 0
        for session_id in self.session_ids:
            if (include_self or session_id != self.id) and self.send_to(session_id, message):
                count += 1
        return count


class DeferredSession:
    """The session a blocking handler sees on a worker thread: it records, the loop applies."""

    def __init__(self, session: Session) -> None:
        self.id = session.id
        self.data = session.data
        self.peer = session.peer
        self.tls = session.tls
        self.session_ids = session.session_ids  # a snapshot taken when the job was made
        self.closed = session.closed
        self._actions: list[Callable[[Session], object]] = []

    def send(self, message: bytes) -> None:
        self._actions.append(lambda s: s.send(message))

    def close(self) -> None:
        self.closed = True
        self._actions.append(lambda s: s.close())

    def send_to(self, session_id: int, message: bytes) -> bool:
        self._actions.append(lambda s: s.send_to(session_id, message))
        return session_id in self.session_ids

    def broadcast(self, message: bytes, *, include_self: bool = False) -> int:
        self._actions.append(lambda s: s.broadcast(message, include_self=include_self))
        return len(self.session_ids) - (0 if include_self else 1)

    def apply(self, session: Session) -> None:
        """Replay the recorded actions on the real session (loop thread)."""
        for action in self._actions:
            action(session)


class StreamProtocol(ProtocolLayer):
    """Frames plaintext into messages for a ``StreamHandler``; its session joins
    ``sessions`` (a registry of its own when none is given)."""

    def __init__(self, handler: StreamHandler, sessions: Sessions | None = None) -> None:
        self.handler = handler
        self.sessions = Sessions() if sessions is None else sessions
        self._conn: Transport | None = None
        self._session: Session | None = None
        self._framing: Framing | None = None
        self._queue: list[tuple[str, tuple[Any, ...]]] = []  # calls waiting for a job
        self._job: Job | None = None
        self._idle_after_job = False  # the idle timer was suspended for the running job
        self._eof_pending = False
        self._lost = False  # connection_lost came

    @property
    def reading(self) -> bool:
        return self._job is None and not self._eof_pending

    def connection_made(self, conn: Transport, now: float) -> None:
        self._conn = conn
        self._framing = self.handler.framing()
        self._session = Session(conn, self._framing, self.sessions)
        self.sessions.add(self._session)
        self._touch_idle(now)
        self._call("start")

    def data_received(self, data: bytes, now: float) -> None:
        assert self._framing is not None
        self._touch_idle(now)
        try:
            messages = self._framing.feed(data)
        except FramingError as exc:
            for message in exc.messages:  # complete before the violation: still valid
                self._call("message", message)
            self._protocol_error(exc)
            return
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        for message in messages:
            self._call("message", message)

    def eof_received(self, clean: bool, now: float) -> None:
        assert self._framing is not None
        try:
            self._framing.eof()
            if not clean:
                raise RemoteProtocolError(
                    "the TLS stream ended without close_notify (possible truncation)"
                )
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._eof_pending = True
        self._close_when_idle()

    def resume_writing(self, now: float) -> None:
        if self.deadline is not None:
            self._touch_idle(now)  # idle time restarts: we were not reading, the peer was not idle

    def timer_expired(self, now: float) -> None:
        self.deadline = None
        self._call("timeout")

    def shutdown(self, now: float) -> None:
        self._eof_pending = True
        self._close_when_idle()

    def connection_lost(self, error: BaseException | None) -> None:
        conn, session = self._conn, self._session
        if conn is None or session is None:
            return  # the handshake never finished: the handler never started
        self._lost = True
        self.sessions.discard(session)
        self._queue.clear()
        if self._job is None:
            self._close_handler(conn, session)
        # else the job's return closes the handler: close() must follow the last message()

    def _close_handler(self, conn: Transport, session: Session) -> None:
        try:
            self.handler.close(session)
        except Exception:
            log.exception("%r: handler.close failed", conn)

    # -- internals ----------------------------------------------------------------------------

    def _touch_idle(self, now: float) -> None:
        if self._job is not None:  # we are not reading: the peer is not idle, we are
            self.deadline = None
            self._idle_after_job = True
            return
        timeout = self.handler.idle_timeout
        self.deadline = None if timeout is None else now + timeout

    def _protocol_error(self, exc: ProtocolError) -> None:
        assert self._conn is not None
        log.info("%r: %s", self._conn, exc)
        self._conn.stats.errors += 1
        self._call("error", exc)
        self._eof_pending = True
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if self._eof_pending and self._job is None and not self._queue and self._conn:
            self._conn.close()

    def _call(self, method: str, *args: Any) -> None:
        conn, session = self._conn, self._session
        assert conn is not None and session is not None
        if conn.closing:
            return
        if self.handler.blocking:
            self._queue.append((method, args))
            self._run_queue()
            return
        try:
            getattr(self.handler, method)(session, *args)
        except Exception:
            log.exception("%r: handler.%s failed", conn, method)
            conn.stats.errors += 1
            conn.close()

    def _run_queue(self) -> None:
        conn, session = self._conn, self._session
        assert conn is not None and session is not None
        if self._job is not None or not self._queue:
            return
        if conn.closing:  # as inline: nothing is handled once the session closed
            self._queue.clear()
            return
        calls, self._queue = self._queue, []
        deferred = DeferredSession(session)
        handler = self.handler

        def work() -> None:
            for method, args in calls:
                if deferred.closed:
                    break
                getattr(handler, method)(deferred, *args)

        def done(job: Job, now: float) -> None:
            self._job = None
            deferred.apply(session)  # even if this connection has gone: sends to the others
            if job.error is not None:
                log.error("%r: blocking handler failed", conn, exc_info=job.error)
                conn.stats.errors += 1
                conn.close()
            if self._lost:
                self._close_handler(conn, session)  # connection_lost left it to this job
                return
            if job.error is not None:
                return
            if self._idle_after_job:
                self._idle_after_job = False
                self._touch_idle(now)
            self._run_queue()
            self._close_when_idle()

        # The idle timer stops while the job runs (reading is off) and restarts when it ends.
        self._idle_after_job = self.deadline is not None
        self.deadline = None
        self._job = conn.submit_job(work, done)
