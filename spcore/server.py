"""The server object: listeners, the live connections, accepting, and the one stop sequence.

A driver binds one socket per ``Listener``, creates the core side of every accepted socket
with ``accept()``, and after any call into the core asks ``next_action()`` for what to do
until it answers None (``spcore.actions``): start or stop accepting, connect an outbound
connection (``open_connection``), sync a connection that changed outside its own call, arm
the server's timer (its own deadlines and the server-wide user timers, ``call_later``),
close the listening sockets, exit.

Stopping is decided here, once, for every driver: ``request_stop(now)`` makes the actions
``CloseListeners``, then a ``Sync`` of every connection (each was asked to finish what is in
flight, and idle ones to close), then ``SetTimer`` at the end of the grace period, when
whatever remains is cut; once no connection is left, ``Exit``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .actions import (
    CLOSE_LISTENERS,
    EXIT,
    START_ACCEPTING,
    STOP_ACCEPTING,
    Accepting,
    CloseListeners,
    Connect,
    Exit,
    SetTimer,
    Sync,
)
from .addresses import describe_address, inet_address
from .config import Limits
from .connection import Address, Connection, Hub
from .layer import ProtocolLayer
from .remote import Remote
from .stats import Stats
from .timers import Callback, Timer, check_delay
from .tls.config import ServerTLS
from .tls.context import ServerContext
from .tls.engine import EngineFactory, TLSEngine

__all__ = ["Listener", "Server", "ServerAction", "Stats"]

log = logging.getLogger("spcore.server")

#: What ``Server.next_action()`` returns.
ServerAction = Accepting | CloseListeners | Connect[Connection] | Sync[Connection] | SetTimer | Exit

#: Accept errors about one connection (reset before it was taken) or passing (a signal, a
#: spurious wake-up): accepting pauses only for ``_BRIEF_PAUSE``. Any other (out of
#: descriptors or memory) pauses it for ``Limits.accept_pause``.
_BRIEF_ERRORS = frozenset(
    {errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EINTR, errno.EAGAIN}
)
_BRIEF_PAUSE = 0.01


@dataclass(frozen=True)
class Listener:
    """One listening address and what runs on it.

    ``protocol`` makes the protocol layer of each new connection; ``tls`` (a neutral
    ``spcore.tls.ServerTLS``) makes it a TLS listener served by ``tls_engine`` (a registered
    engine's name, or a third party's ``EngineFactory``). The engine's state is built here,
    once, as ``tls_context``, whose ``reload()`` swaps in a new one for new connections.

    Where it listens: ``host``/``port``; or the Unix domain socket ``path`` (its file made
    with permissions ``mode``, removed when it closes); or ``fd``, a socket already listening
    (handed in by ``--fd``, systemd or a supervisor), which the other fields then do not
    describe. ``reuse_port`` binds with ``SO_REUSEPORT``, so that worker processes can each
    have a socket on one address.
    """

    protocol: Callable[[], ProtocolLayer]
    host: str = "127.0.0.1"
    port: int = 0
    tls: ServerTLS | None = None
    proxy_protocol: bool = False
    tls_engine: str | EngineFactory = "openssl"
    path: str | None = None
    mode: int = 0o666
    fd: int | None = None
    reuse_port: bool = False
    tls_context: ServerContext | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        context = None if self.tls is None else ServerContext(self.tls, self.tls_engine)
        object.__setattr__(self, "tls_context", context)

    @property
    def where(self) -> str:
        """``127.0.0.1:8443``, ``unix:/run/app.sock`` or ``fd 3``: for errors and logs."""
        if self.fd is not None:
            return f"fd {self.fd}"
        if self.path is not None:
            return describe_address(self.path)
        return describe_address((self.host, self.port))

    def new_engine(self) -> TLSEngine | None:
        return None if self.tls_context is None else self.tls_context.new_engine()


class Server:
    """Listeners, the connections' hub, accepting and the stop sequence."""

    def __init__(self, listeners: Sequence[Listener], limits: Limits | None = None) -> None:
        if not listeners:
            raise ValueError("a server needs at least one listener")
        self.listeners = tuple(listeners)
        #: What the connections share (limits, counters, clock, wake-ups).
        self.hub = Hub(limits)
        self.limits = self.hub.limits
        self.stats = self.hub.stats
        #: Live connections by id.
        self.connections: dict[int, Connection] = self.hub.connections
        #: Free for the driver and applications (e.g. the driver's name for /stats).
        self.info: dict[str, Any] = {}
        self._shutdown_deadline: float | None = None
        self._accept_paused_until: float | None = None
        self._told_accepting = False
        self._told_deadline: float | None = None
        self._listeners_closed = False

    # -- what a driver is given ---------------------------------------------------------------

    @property
    def listen_backlog(self) -> int:
        """The ``listen()`` backlog for every listening socket."""
        return self.limits.listen_backlog

    @property
    def worker_threads(self) -> int:
        """How many worker threads run blocking jobs."""
        return self.limits.worker_threads

    def attach(self, call_soon_threadsafe: Callable[..., bool]) -> None:
        """The driver that runs this server hands over its thread-safe call
        (``spcore.drivers.base.Driver`` does it when it is made)."""
        self.hub.loop_call = call_soon_threadsafe

    def start(self, now: float, wall_time: float) -> None:
        """Called by the driver when it starts: ``now`` is its clock, ``wall_time`` Unix time.

        The core never reads a clock; the offset between the two dates HTTP responses.
        """
        self.hub.now = now
        self.hub.wall_offset = wall_time - now

    # -- the driver's side --------------------------------------------------------------------

    def next_action(self) -> ServerAction | None:
        """What the driver must do next; None once there is nothing (until its next call)."""
        if self._shutdown_deadline is not None and not self._listeners_closed:
            self._listeners_closed = True
            self._told_accepting = False
            return CLOSE_LISTENERS
        dial = self.hub.pop_dial()
        if dial is not None:
            assert dial.remote is not None
            return Connect(dial, dial.remote)
        conn = self.hub.pop_woken()
        if conn is not None:
            return Sync(conn)
        accepting = self.accepting
        if accepting is not self._told_accepting:
            self._told_accepting = accepting
            return START_ACCEPTING if accepting else STOP_ACCEPTING
        deadline = self.deadline
        if deadline != self._told_deadline:
            self._told_deadline = deadline
            return SetTimer(deadline)
        if self.finished:
            return EXIT
        return None

    def accept(
        self, listener: Listener, peer: Address | None, local: Address | None, now: float
    ) -> Connection:
        """Create the core side of a socket the driver accepted on ``listener``."""
        return Connection(
            listener, self.hub, peer=inet_address(peer), local=inet_address(local), now=now
        )

    def open_connection(
        self, remote: Remote, protocol: ProtocolLayer, *, send_first: bytes = b""
    ) -> Connection:
        """Open an outbound connection to ``remote``, run by ``protocol`` (on the loop thread:
        from a protocol, a timer, or a function handed over with ``call_soon_threadsafe``).

        The driver connects it (the ``Connect`` action, within ``Limits.connect_timeout``);
        then it stacks like an accepted connection (the remote's TLS client engine, or
        plaintext) and ``protocol.connection_made`` follows. A failed or timed-out connect
        ends in ``protocol.connection_lost(error)`` without it. ``send_first`` goes out before
        anything else (a PROXY header). A driver that makes no outbound connections
        (``Driver.connects`` False) fails it at once.
        """
        return self.hub.open_connection(remote, protocol, send_first=send_first)

    def call_later(self, delay: float, callback: Callback, *, every: float | None = None) -> Timer:
        """A server-wide timer: ``callback(now)`` in ``delay`` seconds (then every ``every``
        seconds, until cancelled), on the loop thread, outside any connection's call (what it
        does to connections is synced). It runs until the server exits."""
        check_delay(delay, every)
        return self.call_at(self.hub.now + delay, callback, every=every)

    def call_at(self, when: float, callback: Callback, *, every: float | None = None) -> Timer:
        """``call_later``, at driver time ``when``."""
        return self.hub.timers.arm(Timer(callback, every), when)

    def refused(self) -> None:
        """The driver dropped a connection it had accepted but could not use (it broke at once,
        or came during shutdown); failed accepts go to ``accept_failed``."""
        self.stats.connections_refused += 1

    def accept_failed(self, error: Exception, now: float) -> None:
        """An accept failed (at once, or in its completion). Accepting pauses: briefly after
        an error about one connection, for ``Limits.accept_pause`` after running out of
        descriptors or memory (or anything unexpected), until the server's timer; so a driver
        neither spins on a listener the kernel keeps reporting ready nor is left with no
        accept pending."""
        self.refused()
        if isinstance(error, OSError) and error.errno in _BRIEF_ERRORS:
            log.debug("accept failed: %s", error)
            pause = _BRIEF_PAUSE
        else:
            pause = self.limits.accept_pause
            log.warning("accept failed: %s; pausing accepts for %.2f s", error, pause)
        until = now + pause
        if self._accept_paused_until is None or until > self._accept_paused_until:
            self._accept_paused_until = until

    def on_deadline(self, now: float) -> None:
        """The server's timer (``SetTimer``) fired; early calls are harmless."""
        self.hub.now = now
        self._told_deadline = None  # disarmed: the next timer is told again
        paused_until = self._accept_paused_until
        if paused_until is not None and now >= paused_until:
            self._accept_paused_until = None
        hub = self.hub
        hub.current = None
        for timer in hub.timers.due(now):
            try:
                timer.callback(now)
            except Exception:
                log.exception("a server timer failed: %r", timer.callback)
                self.stats.errors += 1
        if self._shutdown_deadline is None or now < self._shutdown_deadline:
            return
        for conn in list(self.connections.values()):
            conn.abort("shutdown grace period over")
            self.hub.wake(conn)

    def request_stop(self, now: float) -> None:
        """Begin the graceful stop (on the loop thread: a driver's ``stop()`` hands it over).

        Accepting stops and the listening sockets close; in-flight requests finish, idle
        connections close, handshakes are cut; what remains at the end of
        ``Limits.shutdown_grace`` is aborted; then the driver exits. A second call does
        nothing.
        """
        if self._shutdown_deadline is not None:
            return
        self.hub.now = now
        log.info("shutting down: %d connection(s) open", len(self.connections))
        self._shutdown_deadline = now + self.limits.shutdown_grace
        for conn in list(self.connections.values()):
            conn.shutdown(now)
            self.hub.wake(conn)

    def call(self, fn: Callable[..., object], args: tuple[object, ...], now: float) -> None:
        """Run a function handed over with ``call_soon_threadsafe`` (on the loop thread).

        What it changes is timed by ``now`` and synced like any change made outside a
        connection's own call; an exception is logged and goes no further.
        """
        hub = self.hub
        hub.now = now
        hub.current = None
        try:
            fn(*args)
        except Exception:
            log.exception("a function handed to the loop thread failed: %r", fn)
            self.stats.errors += 1

    # -- the state, for reading ---------------------------------------------------------------

    @property
    def now(self) -> float:
        """The driver's clock at its latest call into the core."""
        return self.hub.now

    @property
    def accepting(self) -> bool:
        """Whether new connections are accepted now: not at ``max_connections``, not for the
        pause after a failed accept, not once stopping."""
        return (
            self._shutdown_deadline is None
            and self._accept_paused_until is None
            and len(self.connections) - self.hub.outbound < self.limits.max_connections
        )

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_deadline is not None

    @property
    def deadline(self) -> float | None:
        """When the server's timer is due: the end of the shutdown grace period, or of a pause
        in accepting, or the earliest server-wide user timer."""
        if self._shutdown_deadline is not None:
            if not self.connections:
                return None  # nothing is left to time: the server exits
            own: float | None = self._shutdown_deadline
        else:
            own = self._accept_paused_until
        timer = self.hub.timers.next
        if timer is not None and (own is None or timer < own):
            return timer
        return own

    @property
    def finished(self) -> bool:
        """The stop was requested and every connection is gone."""
        return self._shutdown_deadline is not None and not self.connections

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the driver's loop thread soon; callable from any thread.

        True: it will run exactly once, after the calls this thread made before. False: the
        driver has stopped (or none was attached) and it never will.
        """
        return self.hub.call_soon_threadsafe(fn, *args)

    def wall_time(self, now: float) -> float:
        """Unix time at driver time ``now`` (from the offset ``start`` learnt)."""
        return now + self.hub.wall_offset
