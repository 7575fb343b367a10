"""Shorthands for the two kinds of listener most servers need."""

from __future__ import annotations

from collections.abc import Callable

from .http.codecs import codec_factory
from .http.messages import App
from .http.protocol import HTTPProtocol
from .server import Listener
from .stream import Sessions, StreamHandler, StreamProtocol
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
    http: str = "auto",
) -> Listener:
    """A listener serving ``app(request) -> Response | None`` over HTTP/1.1.

    ``http`` picks the codec: "auto" (httptools when installed, else h11), "h11" or
    "httptools"; an unknown or missing one raises ``ValueError`` or ``ImportError`` here.
    """
    codec_factory(http)  # fail now, not at the first connection
    return Listener(
        protocol=lambda: HTTPProtocol(app, http=http),
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
    sessions: Sessions | None = None,
) -> Listener:
    """A listener running a new ``handler()`` per connection over its framing; its sessions
    join ``sessions`` (a registry for this listener alone when none is given), so pass the
    same registry to listeners whose sessions broadcast to each other."""
    registry = Sessions() if sessions is None else sessions
    return Listener(
        protocol=lambda: StreamProtocol(handler(), registry),
        host=host,
        port=port,
        tls=tls,
        proxy_protocol=proxy_protocol,
        tls_engine=tls_engine,
    )
