"""The benchmark's hello-world WSGI app (``wsgi_hello:app``), for spcore, gunicorn and granian.

The same response as ``spcore_hello.app`` and ``asgi_hello.app``: 200, ``Hello, world!``,
text/plain with a content-length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!"
HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(BODY))),
]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with ``Hello, world!``."""
    start_response("200 OK", HEADERS)
    return [BODY]
