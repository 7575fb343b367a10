"""The server object: listeners, limits, the live connections and graceful shutdown.

A driver binds one socket per ``Listener``, asks ``accepting`` before each accept, creates
the core side of every accepted socket with ``accept()``, and after each call into the core
also syncs the connections ``take_woken()`` returns (those changed by another connection's
handler or by the server itself). Shutdown is decided here: ``begin_shutdown(now)`` stops
accepting and lets in-flight work finish until ``deadline``; ``finished`` says when the
driver may exit.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import Limits
from .connection import Address, Connection
from .layer import ProtocolLayer
from .tls.config import ServerTLS
from .tls.context import ServerContext
from .tls.engine import EngineFactory, TLSEngine

__all__ = ["Listener", "Server", "Stats"]

log = logging.getLogger("spcore.server")

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
    """

    protocol: Callable[[], ProtocolLayer]
    host: str = "127.0.0.1"
    port: int = 0
    tls: ServerTLS | None = None
    proxy_protocol: bool = False
    tls_engine: str | EngineFactory = "openssl"
    tls_context: ServerContext | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        context = None if self.tls is None else ServerContext(self.tls, self.tls_engine)
        object.__setattr__(self, "tls_context", context)

    def new_engine(self) -> TLSEngine | None:
        return None if self.tls_context is None else self.tls_context.new_engine()

    def new_protocol(self) -> ProtocolLayer:
        return self.protocol()


@dataclass
class Stats:
    """Live counters, shown by the built-in app's /stats."""

    connections_total: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    handshakes: int = 0
    tls_errors: int = 0
    errors: int = 0
    timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Server:
    """Configuration, limits, the connection and session registries, shutdown state."""

    def __init__(self, listeners: Sequence[Listener], limits: Limits | None = None) -> None:
        if not listeners:
            raise ValueError("a server needs at least one listener")
        self.listeners = tuple(listeners)
        self.limits = limits or Limits()
        self.stats = Stats()
        #: Live connections by id.
        self.connections: dict[int, Connection] = {}
        #: Stream sessions by id, for handlers that send to other sessions (broadcast).
        self.sessions: dict[int, Any] = {}
        #: The connection whose driver call is under way (so changes elsewhere are woken).
        self.current: Connection | None = None
        #: The driver's clock at its latest call into the core: what a change made during
        #: that call is timed by, whichever connection it lands on (a broadcast's deadlines).
        self.now = 0.0
        #: Free for the driver and applications (e.g. the driver's name for /stats).
        self.info: dict[str, Any] = {}
        self._next_id = 1
        self._woken: dict[Connection, None] = {}
        self._shutdown_deadline: float | None = None
        self._accept_paused_until: float | None = None
        self._wall_offset = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, now: float, wall_time: float) -> None:
        """Called by the driver when it starts: ``now`` is its clock, ``wall_time`` Unix time.

        The core never reads a clock; the offset between the two dates HTTP responses.
        """
        self.now = now
        self._wall_offset = wall_time - now

    @property
    def accepting(self) -> bool:
        """Accept new connections now? False at the connection limit, for ``accept_pause``
        after the system ran out of resources, and while shutting down."""
        return (
            self._shutdown_deadline is None
            and self._accept_paused_until is None
            and len(self.connections) < self.limits.max_connections
        )

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_deadline is not None

    def accept(
        self, listener: Listener, peer: Address | None, local: Address | None, now: float
    ) -> Connection:
        """Create the core side of a socket the driver accepted on ``listener``."""
        self.now = now
        conn_id = self._next_id
        self._next_id += 1
        conn = Connection(self, conn_id, listener, peer, local, now)
        self.connections[conn_id] = conn
        self.stats.connections_total += 1
        self.stats.connections_open = len(self.connections)
        return conn

    def refused(self) -> None:
        """The driver dropped a connection it had accepted but could not use (it broke at once,
        or came during shutdown); failed accepts go to ``accept_failed``."""
        self.stats.connections_refused += 1

    def accept_failed(self, error: OSError, now: float) -> None:
        """An accept failed (at once, or in its completion). The driver reports it here and
        follows ``accepting``, which pauses: briefly after an error about one connection,
        for ``Limits.accept_pause`` after running out of descriptors or memory. Either way
        ``deadline`` brings the driver back, so it neither spins on a listener the kernel
        keeps reporting ready nor is left with no accept pending."""
        self.refused()
        if error.errno in _BRIEF_ERRORS:
            log.debug("accept failed: %s", error)
            pause = _BRIEF_PAUSE
        else:
            pause = self.limits.accept_pause
            log.warning("accept failed: %s; pausing accepts for %.2f s", error, pause)
        until = now + pause
        if self._accept_paused_until is None or until > self._accept_paused_until:
            self._accept_paused_until = until

    def connection_ended(self, conn: Connection) -> None:
        """Called by ``Connection.connection_lost``: forget the connection."""
        self.connections.pop(conn.id, None)
        self.sessions.pop(conn.id, None)
        self._woken.pop(conn, None)
        self.stats.connections_open = len(self.connections)

    def begin_shutdown(self, now: float) -> None:
        """Stop accepting; finish in-flight requests, close idle connections, then exit."""
        if self._shutdown_deadline is not None:
            return
        self.now = now
        log.info("shutting down: %d connection(s) open", len(self.connections))
        self._shutdown_deadline = now + self.limits.shutdown_grace
        for conn in list(self.connections.values()):
            conn.shutdown(now)
            self.wake(conn)

    @property
    def deadline(self) -> float | None:
        """When to call ``on_deadline``: the end of the shutdown grace period, or of a pause
        in accepting."""
        if self._shutdown_deadline is not None:
            return self._shutdown_deadline if self.connections else None
        return self._accept_paused_until

    def on_deadline(self, now: float) -> None:
        self.now = now
        paused_until = self._accept_paused_until
        if paused_until is not None and now >= paused_until:
            self._accept_paused_until = None
        if self._shutdown_deadline is None or now < self._shutdown_deadline:
            return
        for conn in list(self.connections.values()):
            conn.abort("shutdown grace period over")
            self.wake(conn)

    @property
    def finished(self) -> bool:
        """Shutdown was requested and every connection is gone: the driver may exit."""
        return self._shutdown_deadline is not None and not self.connections

    # -- wake-ups -----------------------------------------------------------------------------

    def wake(self, conn: Connection) -> None:
        """Note that ``conn`` changed outside its own driver call."""
        if not conn.closed:
            self._woken[conn] = None

    def take_woken(self) -> list[Connection]:
        """Connections the driver must sync (output, reading, deadline, close)."""
        if not self._woken:
            return []
        woken = list(self._woken)
        self._woken.clear()
        return woken

    # -- time -------------------------------------------------------------------------------

    def wall_time(self, now: float) -> float:
        """Unix time at driver time ``now`` (from the offset ``start`` learnt)."""
        return now + self._wall_offset
