"""WSGI applications hosted on the driver, each wrapped in ``wsgiref.validate`` (which also
checks that the iterable's ``close()`` is called): the environ, a body read as it arrives, a
streamed response held back by a client that does not read, ``close()`` when the client
leaves, ``write()`` and ``exc_info``, and errors."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import wsgiref.validate
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from spcore.conformance.apps import beyond_the_kernel
from spcore.conformance.clients import pattern
from spcore.conformance.harness import Serve, Transport, suite_limits, wait_still, wait_until
from spcore.conformance.plugin import GATEWAY_MARK
from spcore.gateway.wsgi import RESPONSE_WINDOW

pytestmark = getattr(pytest.mark, GATEWAY_MARK)
TRANSPORTS = pytest.mark.parametrize("transport", ["plain", "tls1.3"])

#: As typeshed has it (``_typeshed.wsgi.StartResponse``): write() may return anything.
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
CHUNK = 64 * 1024
TOTAL = 8 * 1024 * 1024
#: What a client that does not read must hold the server back before: past the kernel's.
STILL_TOTAL = beyond_the_kernel(CHUNK)
#: What the server may hold of a response for a client that does not read: the gateway's
#: window, the connection's high-water mark and a chunk on either side.
HELD = RESPONSE_WINDOW + 64 * 1024 + 2 * CHUNK


def validated(app: WSGIApp) -> WSGIApp:
    checked: WSGIApp = wsgiref.validate.validator(app)
    return checked


def environ_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """The environ's CGI keys and what wsgi.input held, as JSON."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    facts = {k: v for k, v in environ.items() if isinstance(v, str)}
    facts["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
    facts["wsgi.multithread"] = environ["wsgi.multithread"]
    facts["body"] = body.decode("latin-1")
    data = json.dumps(facts).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]


@TRANSPORTS
def test_the_environ_describes_the_request(serve: Serve, transport: Transport) -> None:
    with (
        serve(wsgi=validated(environ_app), transport=transport) as served,
        served.connect() as client,
    ):
        for _ in range(2):  # keep-alive
            response = client.fetch("POST", "/a%20b?x=1", [("X-Test", "yes")], body=b"hello")
            assert response.status == 200
            env = json.loads(response.body)
            assert (env["REQUEST_METHOD"], env["PATH_INFO"], env["QUERY_STRING"]) == (
                "POST",
                "/a b",
                "x=1",
            )
            assert (env["SCRIPT_NAME"], env["SERVER_PROTOCOL"], env["body"]) == (
                "",
                "HTTP/1.1",
                "hello",
            )
            assert env["HTTP_X_TEST"] == "yes" and env["CONTENT_LENGTH"] == "5"
            assert env["REMOTE_ADDR"] == "127.0.0.1"
            assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(served.port))
            assert env["wsgi.url_scheme"] == ("http" if transport == "plain" else "https")
            assert env["wsgi.multithread"] is True


@TRANSPORTS
def test_the_body_is_read_as_it_arrives(serve: Serve, transport: Transport) -> None:
    """8 MB, chunked and with a length, hashed in 64 KiB reads: never held whole."""

    def digest(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        hasher, size = hashlib.sha256(), 0
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{hasher.hexdigest()} {size}".encode()]

    body = pattern(3, TOTAL)
    expected = f"{hashlib.sha256(body).hexdigest()} {TOTAL}".encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 100_000]), body[i : i + 100_000])
        for i in range(0, TOTAL, 100_000)
    )
    with serve(wsgi=validated(digest), transport=transport) as served, served.connect() as client:
        assert client.fetch("PUT", "/", body=body).body == expected
        head = "PUT / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        client.send(head.encode() + chunked + b"0\r\n\r\n")
        assert client.read_response("PUT").body == expected


class Streamer:
    """Yields ``TOTAL`` bytes in chunks, counting them, and records its ``close()``."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self._body(STILL_TOTAL)

    def _body(self, total: int) -> Iterator[bytes]:
        try:
            for offset in range(0, total, CHUNK):
                self.produced += CHUNK
                yield pattern(offset, min(CHUNK, total - offset))
        finally:
            self.closed.set()  # (a generator's close() runs this)


def test_a_streamed_response_waits_for_a_client_that_does_not_read(serve: Serve) -> None:
    app = Streamer()
    limits = suite_limits(write_high_water=64 * 1024, write_low_water=16 * 1024)
    with serve(wsgi=validated(app), limits=limits) as served, served.connect() as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.request("GET", "/")
        wait_until(lambda: app.produced > 0, 10, "the app to start")
        wait_still(lambda: app.produced, 10, "the iterable to be held back")
        assert app.produced < STILL_TOTAL, "the app was not held back"
        held = app.produced - served.server.stats.bytes_sent
        assert held <= HELD, f"the server holds {held} bytes"
        response = client.read_response()
        assert response.chunked and response.body == pattern(0, STILL_TOTAL)
        assert app.closed.wait(10)


def test_close_is_called_when_the_client_leaves(serve: Serve) -> None:
    app = Streamer()
    with serve(wsgi=validated(app)) as served:
        with served.connect() as client:
            client.request("GET", "/")
            client.read_head()  # the response began; then the client goes
        assert app.closed.wait(10), "the iterable was not closed"
        served.wait_drained()


def test_write_and_exc_info(serve: Serve) -> None:
    """The legacy ``write()`` sends before the iterable; ``exc_info`` replaces a response not
    yet begun."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/replaced":
            start_response("200 OK", [("Content-Type", "text/plain")])
            try:
                raise ValueError("changed my mind")
            except ValueError:
                unavailable = "503 Service Unavailable"
                start_response(unavailable, [("Content-Type", "text/plain")], sys.exc_info())
            return [b"unavailable"]
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"then iterated"]

    with serve(wsgi=validated(app)) as served, served.connect() as client:
        assert client.fetch("GET", "/written").body == b"written, then iterated"
        replaced = client.fetch("GET", "/replaced")
        assert (replaced.status, replaced.body) == (503, b"unavailable")


def test_an_error_before_the_response_is_a_500(serve: Serve) -> None:
    def failing(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("application bug")

    with serve(wsgi=failing, allow_errors=True) as served, served.connect() as client:
        response = client.fetch("GET", "/")
        assert response.status == 500 and b"the application raised" in response.body
