"""The tunnel (SPServer's ``sptunnel``, what people reach stunnel for): each accepted
connection relayed to a backend, sans-IO.

Each client connection gets a pair of protocol layers: the client's side, on the accepted
connection, and the backend's, on the outbound connection it opens once its own stack is
up (after the client's TLS handshake, when the listener speaks TLS). Either side may speak
TLS: terminate (TLS in, plaintext out), originate (plaintext in, TLS out, verifying the
backend's certificate with SNI), or both. The rules:

* **A pair of streams with back-pressure both ways.** A side reads only while the other
  side takes output (``writable``: below its high-water mark) and is connected, so a slow
  reader slows the writer at the other end, through the kernel's windows, and a tunnel holds
  at most its two high-water marks and the chunk in hand (``Limits``).
* **Half-close carried across.** The end of one side's input (a FIN; TLS close_notify)
  becomes a half-close of the other (``write_eof``: what was relayed, then close_notify on
  TLS, then the FIN); the pair closes once both directions have ended. A TLS end without
  close_notify is carried the same way, and logged (it may be a truncation).
* **A lost side takes the other with it.** A reset (or any failure) of one side aborts the
  other, so the truncation shows at the far end too; a side closed cleanly closes the other.
* **A backend that cannot be reached** (refused, unreachable, timed out: ``Limits``'
  ``connect_timeout``) closes the client, with a warning that says why; the tunnel goes on.
* Idle pairs (nothing either way for ``idle_timeout``) are closed; the backend may get a
  PROXY protocol header (v1 or v2) naming the client, before anything else, TLS included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .layer import ProtocolLayer, Transport
from .preamble import ProxyVersion, proxy_header
from .remote import Remote
from .server import Listener

__all__ = ["Tunnel"]

log = logging.getLogger("spcore.tunnel")


@dataclass(frozen=True)
class Tunnel:
    """Where the tunnel's connections go and how: ``backend`` (a ``Remote``: its address,
    and its TLS context for originating TLS), the PROXY header to send first (None: none),
    and how long a pair may be idle (None: for ever)."""

    backend: Remote
    proxy_header: ProxyVersion | None = None
    idle_timeout: float | None = 3600.0

    def __post_init__(self) -> None:
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, not {self.idle_timeout!r}")

    def protocol(self) -> ProtocolLayer:
        """The client's side of a new pair (a ``Listener``'s protocol factory)."""
        return _Pair(self).client

    def listener(self, **where: Any) -> Listener:
        """A listener whose connections are relayed: ``Listener``'s own arguments (``host``,
        ``port``, ``path``, ``fd``, ``tls`` to terminate TLS, ``proxy_protocol`` to read an
        incoming PROXY header...)."""
        return Listener(protocol=self.protocol, **where)


class _Side(ProtocolLayer):
    """One side of a pair: it hands all it learns to the pair."""

    def __init__(self, pair: _Pair, name: str) -> None:
        self.pair = pair
        self.name = name
        self.conn: Transport | None = None
        self.made = False  # its connection is up (connected, handshake done)
        self.ended = False  # its input ended
        self.lost = False

    def __repr__(self) -> str:
        return f"<the {self.name} side of {self.conn!r}>"

    @property
    def reading(self) -> bool:
        return self.pair.may_read(self)

    def connection_made(self, conn: Transport, now: float) -> None:
        self.pair.made(self, conn, now)

    def data_received(self, data: bytes, now: float) -> None:
        self.pair.forward(self, data, now)

    def eof_received(self, clean: bool, now: float) -> None:
        self.pair.ended(self, clean)

    def resume_writing(self, now: float) -> None:
        self.pair.drained(self)

    def timer_expired(self, now: float) -> None:
        self.pair.idle(now)

    def connection_lost(self, error: BaseException | None) -> None:
        self.pair.lost(self, error)


class _Pair:
    """A client connection and its backend connection, relayed to each other."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.client = _Side(self, "client")
        self.backend = _Side(self, "backend")
        self.active = 0.0  # when data last went either way (the idle timer's reference)

    def other(self, side: _Side) -> _Side:
        return self.backend if side is self.client else self.client

    def may_read(self, side: _Side) -> bool:
        """Read only what the other side can take now."""
        other = self.other(side).conn
        return other is not None and self.other(side).made and other.writable

    def made(self, side: _Side, conn: Transport, now: float) -> None:
        side.conn, side.made = conn, True
        if side is self.backend:
            assert self.client.conn is not None
            self.client.conn.changed()  # the client's side may read now
            return
        tunnel = self.tunnel
        first = b""
        if tunnel.proxy_header is not None:
            proxy = conn.proxy
            destination = proxy.destination if proxy is not None else None
            first = proxy_header(conn.peer, destination or conn.local, tunnel.proxy_header)
        self.backend.conn = conn.open_connection(tunnel.backend, self.backend, send_first=first)
        self.active = now
        if tunnel.idle_timeout is not None:
            side.deadline = now + tunnel.idle_timeout

    def forward(self, side: _Side, data: bytes, now: float) -> None:
        other = self.other(side).conn
        assert other is not None
        other.write(data)
        self.active = now

    def drained(self, side: _Side) -> None:
        """``side`` took its output down to the low-water mark: the other may read again."""
        other = self.other(side).conn
        if other is not None:
            other.changed()

    def ended(self, side: _Side, clean: bool) -> None:
        side.ended = True
        if not clean:
            log.info("%r: ended without TLS close_notify (possibly truncated)", side)
        other = self.other(side)
        assert other.conn is not None
        if other.ended:  # both directions are over
            other.conn.close()
            assert side.conn is not None
            side.conn.close()
        else:
            other.conn.write_eof()

    def idle(self, now: float) -> None:
        timeout = self.tunnel.idle_timeout
        assert timeout is not None
        if now < self.active + timeout:  # data went by since the timer was set: set again
            self.client.deadline = self.active + timeout
            return
        self.client.deadline = None
        log.info("%r: idle for %g s; closing", self.client, timeout)
        for side in (self.client, self.backend):
            if side.conn is not None:
                side.conn.close()

    def lost(self, side: _Side, error: BaseException | None) -> None:
        side.lost = True
        other = self.other(side)
        if other.lost or other.conn is None:
            return
        if side is self.backend and not side.made:
            reason = error or "closed before it was up"
            where = self.tunnel.backend.where
            log.warning(
                "%r: cannot connect to the backend %s: %s; closing", other.conn, where, reason
            )
            other.conn.close()
        elif error is None:
            other.conn.close()
        else:
            other.conn.abort(f"the {side.name} connection was lost: {error}")
