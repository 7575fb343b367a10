"""Where an outbound connection goes, and how it speaks: a ``Listener``'s counterpart.

``Server.open_connection(remote, protocol)`` (or ``Transport.open_connection`` from a
protocol layer: a tunnel's client side opening its backend) makes a connection in the core
that a driver connects (the ``Connect`` action), then stacks like an accepted one: a TLS
client engine with SNI and certificate verification, or plaintext, under the protocol.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from .addresses import describe_address
from .tls.engine import TLSEngine
from .tls.openssl import OpenSSLEngine

__all__ = ["ClientEngineFactory", "Remote"]

#: Makes a client engine from the remote's context and the name to send and verify.
ClientEngineFactory = Callable[[ssl.SSLContext, "str | None"], TLSEngine]


@dataclass(frozen=True)
class Remote:
    """One address to connect to, and its TLS (None: plaintext).

    ``host`` is numeric (``127.0.0.1``, ``::1``): neither the core nor a driver resolves
    names, as a lookup blocks; resolve once beforehand, as stunnel does by default (its
    ``delay = no``). Or ``path``, a Unix domain socket. ``tls`` is a client context
    (``spcore.tls.client_context``: it verifies the certificate); ``server_name`` is the SNI
    sent and the name verified (default: ``host``, which for an IP address is verified but,
    as RFC 6066 section 3 wants, not sent; a Unix socket has no default). ``engine``
    replaces the OpenSSL engine.
    """

    host: str = "127.0.0.1"
    port: int = 0
    path: str | None = None
    tls: ssl.SSLContext | None = None
    server_name: str | None = None
    engine: ClientEngineFactory | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            return
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(
                f"connect to a numeric address, not {self.host!r}: resolve the name first"
            ) from None
        if not 0 < self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range (1 to 65535)")

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
        if self.tls is None:
            return None
        name = self.server_name
        if name is None and self.path is None:
            name = self.host
        if self.engine is not None:
            return self.engine(self.tls, name)
        return OpenSSLEngine(self.tls, server_side=False, server_hostname=name)
