"""The built-in application: what ``spcore serve`` answers without ``--app``.

It doubles as the target of the conformance suite and the benchmarks, so every endpoint is
cheap and checkable from the outside:

* ``/``: which driver, TLS version, cipher and ALPN protocol served this request, and the
  client's address; HTML, or JSON for ``?format=json`` or a client that accepts JSON but not
  HTML.
* ``/echo`` (POST, PUT): the request body streamed straight back, with its content type.
* ``/stream?n=BYTES``: exactly ``n`` bytes (at most 1 GiB) in 64 KiB chunks. Byte ``i`` of
  the body is ``i % 251``, so a client can check every byte without keeping the body (251 is
  prime, so a chunk lost, repeated or reordered shows up).
* ``/stats``: the server's counters as JSON, with the process serving them (its pid, and its
  index under ``--workers``).
* ``/hello``: ``Hello, world!``, the benchmark endpoint.

``LineEcho`` is the stream counterpart (``spcore serve --line-echo``): SPServer's echo server
with its chat room's broadcast.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from .http.messages import App, Pipe, Request, Response
from .server import Server
from .stream import DeferredSession, Session, StreamHandler

__all__ = [
    "STREAM_CHUNK",
    "STREAM_MAX",
    "STREAM_PERIOD",
    "LineEcho",
    "builtin_app",
    "stream_pattern",
]

#: The largest body ``/stream`` sends.
STREAM_MAX = 1 << 30
#: The size of the chunks ``/stream`` produces (the last one may be shorter).
STREAM_CHUNK = 64 * 1024
#: Byte ``i`` of a ``/stream`` body is ``i % STREAM_PERIOD``.
STREAM_PERIOD = 251

_PATTERN = bytes(range(STREAM_PERIOD)) * (STREAM_CHUNK // STREAM_PERIOD + 2)
_MAX_DIGITS = len(str(STREAM_MAX))

_HELLO = b"Hello, world!"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
_GET = ("GET", "HEAD")
_BODY = ("POST", "PUT")


def stream_pattern(offset: int, size: int) -> bytes:
    """The ``size`` bytes a ``/stream`` body holds from ``offset`` on."""
    start = offset % STREAM_PERIOD
    if start + size <= len(_PATTERN):
        return _PATTERN[start : start + size]
    repeats = (start + size) // STREAM_PERIOD + 1
    return (bytes(range(STREAM_PERIOD)) * repeats)[start : start + size]


def _stream_body(n: int) -> Iterator[bytes]:
    for offset in range(0, n, STREAM_CHUNK):
        yield stream_pattern(offset, min(STREAM_CHUNK, n - offset))


def _error(status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A short text error in the core's own format (``404 Not Found: <reason>``)."""
    body = f"{status} {HTTPStatus(status).phrase}: {reason}\n"
    return Response(status, [("content-type", _TEXT), *(headers or [])], body)


def _json(data: dict[str, Any]) -> Response:
    body = json.dumps(data, indent=2) + "\n"
    return Response(200, [("content-type", _JSON), ("cache-control", "no-store")], body)


def _wants_json(request: Request, fmt: str | None) -> bool:
    """``?format=`` decides; otherwise a client listing JSON but not HTML in Accept gets JSON."""
    if fmt is not None:
        return fmt == "json"
    accept = request.header("accept") or ""
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return _JSON in types and "text/html" not in types


def _query_value(request: Request, name: str) -> str | None:
    values = parse_qs(request.query, keep_blank_values=True).get(name)
    return values[0] if values else None


class _BuiltinApp:
    """Routes by path, then checks the method (404 before 405, as most servers do)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._routes: dict[str, tuple[tuple[str, ...], Callable[[Request], Response | None]]] = {
            "/": (_GET, self._index),
            "/echo": (_BODY, self._echo),
            "/stream": (_GET, self._stream),
            "/stats": (_GET, self._stats),
            "/hello": (_GET, self._hello),
        }

    def __call__(self, request: Request) -> Response | None:
        route = self._routes.get(request.path)
        if route is None:
            paths = ", ".join(self._routes)
            return _error(404, f"nothing is served at this path (try {paths})")
        methods, handler = route
        if request.method not in methods:
            allow = ", ".join(methods)
            return _error(405, f"this path answers {allow} only", [("allow", allow)])
        return handler(request)

    def _index(self, request: Request) -> Response:
        fmt = _query_value(request, "format")
        if fmt not in (None, "html", "json"):
            return _error(400, "format must be html or json")
        info = self._connection_info(request)
        if _wants_json(request, fmt):
            return _json(info)
        body = _page(info)
        headers = [("content-type", _HTML), ("cache-control", "no-store"), ("vary", "accept")]
        return Response(200, headers, body)

    def _connection_info(self, request: Request) -> dict[str, Any]:
        tls = request.tls
        return {
            "driver": self._server.info.get("driver"),
            "scheme": request.scheme,
            "http_version": request.http_version,
            "client": list(request.client) if request.client else None,
            "tls": None
            if tls is None
            else {
                "version": tls.version,
                "cipher": tls.cipher,
                "alpn": tls.alpn_protocol,
                "server_name": tls.server_name,
                "client_certificate": tls.peer_certificate is not None,
            },
        }

    def _echo(self, request: Request) -> Response:
        pipe = Pipe()
        request.read_body(pipe)
        headers = [("content-type", request.header("content-type") or "application/octet-stream")]
        length = request.header("content-length")
        if length is not None and request.header("transfer-encoding") is None:
            headers.append(("content-length", length))  # the same length back: not chunked
        return Response(200, headers, pipe)

    def _stream(self, request: Request) -> Response:
        raw = _query_value(request, "n")
        if raw is None:
            return _error(400, "give the number of bytes to send as ?n=BYTES")
        if len(raw) > _MAX_DIGITS or not re.fullmatch(r"[0-9]+", raw):
            return _error(400, f"n must be a whole number from 0 to {STREAM_MAX}")
        n = int(raw)
        if n > STREAM_MAX:
            return _error(400, f"n must be a whole number from 0 to {STREAM_MAX}")
        headers = [("content-type", "application/octet-stream"), ("content-length", str(n))]
        return Response(200, headers, _stream_body(n))

    def _stats(self, request: Request) -> Response:
        server = self._server
        stats: dict[str, Any] = dict(server.stats.as_dict())
        stats["driver"] = server.info.get("driver")
        stats["pid"] = server.info.get("pid")
        stats["worker"] = server.info.get("worker")
        stats["connections_open"] = len(server.connections)
        return _json(stats)

    def _hello(self, request: Request) -> Response:
        return Response(200, [("content-type", _TEXT)], _HELLO)


def _page(info: dict[str, Any]) -> str:
    tls = info["tls"] or {}
    client = info["client"]
    rows = [
        ("driver", info["driver"]),
        ("scheme", info["scheme"]),
        ("HTTP version", info["http_version"]),
        ("TLS version", tls.get("version")),
        ("cipher", tls.get("cipher")),
        ("ALPN", tls.get("alpn")),
        ("server name (SNI)", tls.get("server_name")),
        ("client", _client(client)),
    ]
    cells = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value or 'none'))}</td></tr>"
        for name, value in rows
    )
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>spcore</title></head>\n"
        f"<body><h1>spcore</h1>\n<table>\n{cells}\n</table>\n"
        '<p>Also here: POST to /echo, <a href="/stream?n=1048576">/stream?n=BYTES</a>, '
        '<a href="/stats">/stats</a>, <a href="/hello">/hello</a>, '
        '<a href="/?format=json">this page as JSON</a>.</p>\n</body></html>\n'
    )


def _client(client: list[Any] | None) -> str | None:
    """``192.0.2.7 port 4321``; a client with no port (a Unix socket's) as it is."""
    if client is None:
        return None
    if len(client) == 2 and isinstance(client[1], int):
        return f"{client[0]} port {client[1]}"
    return " ".join(map(str, client))


def builtin_app(server: Server) -> App:
    """The built-in application for ``server`` (it reads the server's info and counters)."""
    return _BuiltinApp(server)


class LineEcho(StreamHandler):
    """Each line back; ``quit`` answers ``bye`` and closes; ``/all <text>`` goes to the others.

    The others receive ``#<session id>: <text>``, the sender ``sent to <count>``.
    """

    def __init__(self, idle_timeout: float | None = 300.0) -> None:
        self.idle_timeout = idle_timeout

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        command = message.strip()
        if command == b"quit":
            session.send(b"bye")
            session.close()
        elif command == b"/all" or command.startswith(b"/all "):
            text = command[5:].strip()
            if not text:
                session.send(b"usage: /all <text>")
                return
            count = session.broadcast(b"#%d: %s" % (session.id, text))
            session.send(b"sent to %d" % count)
        else:
            session.send(message)
