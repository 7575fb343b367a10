"""Shorthands for the two kinds of listener most servers need."""

from __future__ import annotations

from collections.abc import Callable

from .http.messages import App
from .http.protocol import HTTPProtocol
from .server import Listener
from .stream import StreamHandler, StreamProtocol
from .tls.config import ServerTLS
from .tls.engine import EngineFactory

__all__ = ["http_listener", "stream_listener"]


def http_listener(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ServerTLS | None = None,
    proxy_protocol: bool = False,
    tls_engine: str | EngineFactory = "openssl",
) -> Listener:
    """A listener serving ``app(request) -> Response | None`` over HTTP/1.1."""
    return Listener(
        protocol=lambda: HTTPProtocol(app),
        host=host,
        port=port,
        tls=tls,
        proxy_protocol=proxy_protocol,
        tls_engine=tls_engine,
    )


def stream_listener(
    handler: Callable[[], StreamHandler],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ServerTLS | None = None,
    proxy_protocol: bool = False,
    tls_engine: str | EngineFactory = "openssl",
) -> Listener:
    """A listener running a new ``handler()`` per connection over its framing."""
    return Listener(
        protocol=lambda: StreamProtocol(handler()),
        host=host,
        port=port,
        tls=tls,
        proxy_protocol=proxy_protocol,
        tls_engine=tls_engine,
    )
