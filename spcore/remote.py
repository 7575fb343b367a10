"""Where an outbound connection goes, and how it speaks: a ``Listener``'s counterpart.

``Server.open_connection(remote, protocol)`` (or ``Transport.open_connection`` from a
protocol layer: a tunnel's client side opening its backend) makes a connection in the core
that a driver connects (the ``Connect`` action), then stacks like an accepted one: a TLS
client engine with SNI and certificate verification, or plaintext, under the protocol.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .addresses import describe_address
from .tls.config import ClientTLS
from .tls.context import ClientContext
from .tls.engine import EngineFactory, TLSEngine
from .tls.engines import DEFAULT_ENGINE

__all__ = ["Remote"]


@dataclass(frozen=True)
class Remote:
    """One address to connect to, and its TLS (None: plaintext).

    ``host`` is numeric (``127.0.0.1``, ``::1``): neither the core nor a driver resolves
    names, as a lookup blocks; resolve once beforehand, as stunnel does by default (its
    ``delay = no``). Or ``path``, a Unix domain socket. ``tls`` is the neutral client
    configuration (it verifies the certificate unless told not to); its ``server_name`` is
    the SNI sent and the name verified, by default ``host`` (for an IP address verified but,
    as RFC 6066 section 3 wants, not sent; a Unix socket has no default). ``tls_engine``
    names the engine, as a ``Listener``'s does; its state is built once, here.
    """

    host: str = "127.0.0.1"
    port: int = 0
    path: str | None = None
    tls: ClientTLS | None = None
    tls_engine: str | EngineFactory = DEFAULT_ENGINE
    tls_context: ClientContext | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.path is None:
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ValueError(
                    f"connect to a numeric address, not {self.host!r}: resolve the name first"
                ) from None
            if not 0 < self.port <= 65535:
                raise ValueError(f"port {self.port} is out of range (1 to 65535)")
        context = None if self.tls is None else ClientContext(self.tls, self.tls_engine)
        object.__setattr__(self, "tls_context", context)

    @property
    def address(self) -> tuple[str, int] | str:
        """What the ``Connect`` action carries: ``(host, port)`` or the socket's path."""
        return self.path if self.path is not None else (self.host, self.port)

    @property
    def where(self) -> str:
        """``127.0.0.1:8080``, ``unix:/run/app.sock``: for logs."""
        return describe_address(self.address)

    def new_engine(self) -> TLSEngine | None:
        """The client engine of a new connection, or None for plaintext."""
        if self.tls is None or self.tls_context is None:
            return None
        name = self.tls.server_name
        if name is None and self.path is None:
            name = self.host
        return self.tls_context.new_engine(name)
