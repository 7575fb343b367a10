"""The interface between a connection and the protocol above it (HTTP, stream framings).

A protocol layer only ever sees plaintext: the connection below it has already dealt with the
PROXY header, the TLS handshake and encryption. It talks back through ``Transport`` -- the
connection as a protocol sees it, and nothing more: no server object, no other connection but
the outbound ones it opens itself (a tunnel's backend) -- and tells the connection what it
waits for through ``reading`` and ``deadline``, and when to call it back with timers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .config import Limits
    from .jobs import Job
    from .preamble import ProxyInfo
    from .remote import Remote
    from .stats import Stats
    from .timers import Callback, Timer
    from .tls.engine import TLSInfo
    from .tls.records import ClientHello

__all__ = ["ProtocolLayer", "Transport"]


class Transport(Protocol):
    """What a protocol layer may use of its connection (``spcore.Connection`` provides it)."""

    #: A number unique among the server's connections (logs, session ids).
    id: int
    #: The peer's and our socket address (the PROXY header's source replaces the peer).
    peer: tuple[Any, ...] | None
    local: tuple[Any, ...] | None
    #: The PROXY header, when the listener expects one.
    proxy: ProxyInfo | None
    #: What the TLS handshake settled (None on a plaintext listener).
    tls_info: TLSInfo | None
    #: What the client offered in its ClientHello: SNI, ALPN, versions, cipher suites (None
    #: on a plaintext listener).
    client_hello: ClientHello | None
    limits: Limits
    #: Counters to bump (requests, errors, timeouts...).
    stats: Stats

    @property
    def now(self) -> float:
        """The driver's clock at the call in progress."""
        ...

    def wall_time(self, now: float) -> float:
        """Unix time at driver time ``now`` (the core never reads a clock)."""
        ...

    @property
    def writable(self) -> bool:
        """False from the high-water mark until output drains below the low-water mark."""
        ...

    @property
    def closing(self) -> bool:
        """True once a close or an abort was decided: nothing more is sent."""
        ...

    @property
    def output_size(self) -> int:
        """Bytes waiting to go out (what ``writable`` is judged by)."""
        ...

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """``reading`` or ``deadline`` changed outside a driver call on this connection (a
        call handed to the loop thread, another connection's handler): the driver asks again.
        Writing, closing and aborting need no such call."""
        ...

    def close(self) -> None:
        """Flush, close_notify, shut down, close (graceful)."""
        ...

    def write_eof(self) -> None:
        """Half-close: flush, close_notify, shut the write side; input goes on (until
        ``close()``). Writes are ignored afterwards."""
        ...

    def abort(self, reason: str) -> None:
        """Close at once, dropping unsent output."""
        ...

    def submit_job(self, fn: Callable[[], Any], on_done: Callable[[Job, float], None]) -> Job:
        """Run ``fn`` on a worker thread; ``on_done(job, now)`` runs on the loop afterwards."""
        ...

    def call_later(self, delay: float, callback: Callback, *, every: float | None = None) -> Timer:
        """Run ``callback(now)`` in ``delay`` seconds, and then every ``every`` seconds if
        given, until the timer is cancelled or the connection closes (``spcore.timers``)."""
        ...

    def call_at(self, when: float, callback: Callback, *, every: float | None = None) -> Timer:
        """``call_later``, at driver time ``when``."""
        ...

    def arm(self, timer: Timer, when: float) -> Timer:
        """Arm a ``Timer`` made beforehand (one a worker made for a blocking handler) to run
        at ``when``; a cancelled one stays unarmed."""
        ...

    def open_connection(
        self, remote: Remote, protocol: ProtocolLayer, *, send_first: bytes = b""
    ) -> Transport:
        """Open an outbound connection to ``remote`` run by ``protocol``, whose
        ``connection_made`` follows once it is connected (and its TLS handshake done);
        ``connection_lost`` without it means the connect failed. ``send_first`` goes out
        before anything (a PROXY header). The returned connection may be written at once:
        what is written waits for the connect."""
        ...

    def changed(self) -> None:
        """Call after ``reading`` or ``deadline`` changed outside this connection's own calls
        (from another connection's): the driver looks again."""
        ...

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the driver's loop thread soon: the one call any thread may
        make (an application's own thread or event loop, a worker streaming a body).

        True: ``fn`` will run exactly once, after the calls this thread made before, and what
        it does to a connection is synced as any change. False: the driver has stopped (or
        none runs this connection) and ``fn`` never runs.
        """
        ...


class ProtocolLayer:
    """Base class: override what the protocol needs; the defaults do nothing."""

    #: When ``timer_expired`` should be called, in the driver's clock (None: never). It does
    #: not run while ``conn.writable`` is False: the connection then holds reading back for
    #: its own output, so a read timeout would blame the client for the server's pause.
    deadline: float | None = None

    @property
    def reading(self) -> bool:
        """False while the protocol cannot take more input (a job is running, a response is
        being produced): the driver stops reading and the kernel's window pushes back."""
        return True

    def connection_made(self, conn: Transport, now: float) -> None:
        """The connection is ready for plaintext (after the TLS handshake, if any)."""

    def data_received(self, data: bytes, now: float) -> None:
        """Plaintext arrived (never empty)."""

    def eof_received(self, clean: bool, now: float) -> None:
        """The peer ended its side; ``clean`` is False for a TLS EOF without close_notify."""

    def resume_writing(self, now: float) -> None:
        """Output fell below the low-water mark after ``conn.writable`` was False (restart a
        read timeout here: none ran meanwhile)."""

    def timer_expired(self, now: float) -> None:
        """``deadline`` has passed."""

    def shutdown(self, now: float) -> None:
        """The server is shutting down gracefully: finish what is in flight, then close."""

    def connection_lost(self, error: BaseException | None) -> None:
        """The connection is gone (whatever the cause); release everything."""
