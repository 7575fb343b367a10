"""Shorthands for the two kinds of listener most servers need."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from .http.codec import codec_factory
from .http.messages import App
from .http.protocol import HTTPProtocol
from .server import Listener
from .stream import StreamHandler, StreamProtocol

__all__ = ["http_listener", "stream_listener"]


def http_listener(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    proxy_protocol: bool = False,
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
    )


def stream_listener(
    handler: Callable[[], StreamHandler],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    proxy_protocol: bool = False,
) -> Listener:
    """A listener running a new ``handler()`` per connection over its framing."""
    return Listener(
        protocol=lambda: StreamProtocol(handler()),
        host=host,
        port=port,
        tls=tls,
        proxy_protocol=proxy_protocol,
    )
