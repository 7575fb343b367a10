"""ASGI 3 applications hosted on the driver: the app loop it offers (``Driver.app_loop()``),
the ``http`` protocol both ways with back-pressure, a client leaving noticed at once, the
lifespan, errors (``websocket`` sessions are ``test_websocket``).

The application's coroutines must all run on the app loop's one thread: the loop thread when
the driver lends its own loop, else one companion thread; every hand-off between the two goes
through a thread-safe wake-up, so none of these scenarios passes by luck of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from spcore.conformance.apps import beyond_the_kernel
from spcore.conformance.clients import Client, pattern
from spcore.conformance.harness import (
    Serve,
    Served,
    Transport,
    suite_limits,
    wait_still,
    wait_until,
)
from spcore.conformance.plugin import GATEWAY_MARK
from spcore.gateway.asgi import RESPONSE_WINDOW

pytestmark = getattr(pytest.mark, GATEWAY_MARK)
TRANSPORTS = pytest.mark.parametrize("transport", ["plain", "tls1.3"])

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
STREAM_CHUNK = 64 * 1024
STREAM_TOTAL = 8 * 1024 * 1024
#: What a client that does not read must hold the server back before: past the kernel's.
STILL_TOTAL = beyond_the_kernel(STREAM_CHUNK)
#: What the server may hold of a response for a client that does not read: the gateway's
#: window, the connection's high-water mark and a chunk on either side.
HELD = RESPONSE_WINDOW + 64 * 1024 + 2 * STREAM_CHUNK


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        chunks.append(message["body"])
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(
    send: Send, status: int, body: bytes, content_type: bytes = b"text/plain"
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Where:
    """Where an application's coroutines ran: the loops, and the threads of its requests."""

    def __init__(self) -> None:
        self.loops: set[int] = set()
        self.threads: set[int] = set()

    def note(self, scope: Message) -> None:
        self.loops.add(id(asyncio.get_running_loop()))
        if scope["type"] != "lifespan":
            self.threads.add(threading.get_ident())

    def check(self, served: Served) -> None:
        """Every coroutine ran on the app loop the driver offers, and every request's on its
        one thread: the loop thread when the driver lends its own loop, else a companion
        thread, never the loop thread. (The lifespan runs on the same loop before and after
        serving, on whichever thread runs it then.)"""
        hosted = served.hosted
        assert hosted is not None and hosted.app_loop is not None
        assert self.loops == {id(hosted.app_loop.loop)}
        assert len(self.threads) == 1, self.threads
        if hosted.app_loop.own:
            assert self.threads == {served.loop_thread}
        else:
            assert served.loop_thread not in self.threads


class Recorder:
    """An ASGI app that answers with what it saw, and notes where it ran."""

    def __init__(self) -> None:
        self.where = Where()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        self.where.note(scope)
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await _read_body(receive)
        tls = scope.get("extensions", {}).get("tls")
        seen = {
            "type": scope["type"],
            "asgi": scope["asgi"],
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "client": list(scope["client"]),
            "server": list(scope["server"]),
            "tls": None if tls is None else {k: tls[k] for k in ("tls_version", "server_name")},
            "cipher": None if tls is None else tls["cipher_suite"],
            "body": len(body),
        }
        await _answer(send, 200, json.dumps(seen).encode(), b"application/json")


@TRANSPORTS
def test_a_request_reaches_the_app_on_its_loop(serve: Serve, transport: Transport) -> None:
    app = Recorder()
    with serve(asgi=app, transport=transport) as served, served.connect() as client:
        for i in range(3):  # keep-alive: one connection, three requests
            response = client.fetch(
                "POST", f"/a%20b?x={i}", [("X-Test", "yes")], body=b"0123456789"
            )
            assert response.status == 200 and response.header("server") == "spcore"
            seen = json.loads(response.body)
            assert (seen["type"], seen["method"], seen["http_version"]) == ("http", "POST", "1.1")
            assert seen["asgi"] == {"version": "3.0", "spec_version": "2.4"}
            assert (seen["path"], seen["raw_path"]) == ("/a b", "/a%20b")
            assert seen["query_string"] == f"x={i}" and seen["body"] == 10
            assert ["x-test", "yes"] in seen["headers"]
            assert seen["client"][0] == "127.0.0.1" and seen["server"] == list(served.address)
        if transport == "plain":
            assert seen["scheme"] == "http" and seen["tls"] is None
        else:
            assert seen["scheme"] == "https"
            assert seen["tls"] == {"tls_version": 0x0304, "server_name": "localhost"}
            assert isinstance(seen["cipher"], int)
    app.where.check(served)


@TRANSPORTS
def test_a_body_streams_both_ways(serve: Serve, transport: Transport) -> None:
    """An echo that sends each piece as it is received: 8 MB in, 8 MB out, on the fly."""

    async def echo(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    body = pattern(0, STREAM_TOTAL)
    with (
        serve(asgi=echo, transport=transport, lifespan="off") as served,
        served.connect() as client,
    ):
        request = _head("POST", "/echo", "Transfer-Encoding: chunked") + _chunked(body)
        status, echoed = _send_while_reading(client, request)
        assert status == 200
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(body).digest()


def _head(method: str, target: str, *fields: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_while_reading(client: Client, data: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send ``data`` while reading the chunked response as it comes (an echo would otherwise
    fill both directions' buffers and wait forever); its status and body. One thread: an
    ``SSLSocket`` must not be read and written from two at once."""
    sock = client.sock
    sock.setblocking(False)
    out = memoryview(data)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while (parsed := _chunked_response(received)) is None:
            assert time.monotonic() < deadline, "the echo did not complete in time"
            readable, writable, _ = select.select([sock], [sock] if out else [], [], 1.0)
            if out and writable:
                with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    out = out[sock.send(out[:65536]) :]
            if readable or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                try:
                    chunk = sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue
                assert chunk, "the server closed the connection"
                received += chunk
        return parsed
    finally:
        sock.setblocking(True)


def _chunked_response(data: bytearray) -> tuple[int, bytes] | None:
    """The status and body of the complete chunked response ``data`` holds, or None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(data[:end]).decode("latin-1").lower()
    assert "transfer-encoding: chunked" in head, head
    body, position = bytearray(), end + 4
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(data[position:line_end].split(b";")[0], 16)
        start = line_end + 2
        if len(data) < start + size + 2:
            return None
        if size == 0:
            return int(head.split()[1]), bytes(body)
        body += data[start : start + size]
        position = start + size + 2


def _chunked(body: bytes, size: int = 100_000) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_send_waits_while_the_client_does_not_read(serve: Serve) -> None:
    """``send()`` stops returning once a window is on its way to a client that reads nothing,
    and the whole response arrives, intact, once it reads."""
    sent = [0]

    async def streamer(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for offset in range(0, STILL_TOTAL, STREAM_CHUNK):
            chunk = pattern(offset, STREAM_CHUNK)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent[0] += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    limits = suite_limits(write_high_water=64 * 1024, write_low_water=16 * 1024)
    with serve(asgi=streamer, limits=limits, lifespan="off") as served, served.connect() as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.request("GET", "/")
        wait_until(lambda: sent[0] > 0, 10, "the app to start streaming")
        wait_still(lambda: sent[0], 10, "send() to be held back")
        assert sent[0] < STILL_TOTAL, "send() never waited"
        held = sent[0] - served.server.stats.bytes_sent
        assert held <= HELD, f"the server holds {held} bytes"
        response = client.read_response()
        assert response.body == pattern(0, STILL_TOTAL)


@TRANSPORTS
def test_a_client_that_leaves_is_noticed_at_once(serve: Serve, transport: Transport) -> None:
    """An app waiting for ``http.disconnect`` (a long poll) gets it when the client closes,
    without the server writing a byte or any timeout firing."""
    disconnected = threading.Event()

    async def long_poll(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        if (await receive())["type"] == "http.disconnect":
            disconnected.set()

    with serve(asgi=long_poll, transport=transport, lifespan="off") as served:
        with served.connect() as client:
            client.request("GET", "/poll")
            wait_until(lambda: served.connections == 1, 10, "the request")
        assert disconnected.wait(5), "http.disconnect did not come"
        served.wait_drained()


def test_the_lifespan_runs_around_serving(serve: Serve) -> None:
    events: list[str] = []
    where = Where()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        where.note(scope)
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            scope["state"]["greeting"] = "hello"
            events.append("startup")
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        events.append("request")
        await _answer(send, 200, scope["state"]["greeting"].encode())

    with serve(asgi=app, lifespan="on") as served, served.connect() as client:
        assert events == ["startup"]
        assert client.fetch("GET", "/").body == b"hello"
    assert events == ["startup", "request", "shutdown"]
    where.check(served)


def test_app_errors_are_500_before_the_response_and_a_cut_after(serve: Serve) -> None:
    async def failing(scope: Message, receive: Receive, send: Send) -> None:
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        raise RuntimeError("application bug")

    with serve(asgi=failing, lifespan="off", allow_errors=True) as served:
        with served.connect() as client:
            response = client.fetch("GET", "/early")
            assert response.status == 500 and b"the application raised" in response.body
        with served.connect() as client:
            client.request("GET", "/late")
            received = _until_cut(client)
            # Cut: what was sent may or may not have left before the cut, but never an end.
            assert b"begun" in received or received == b""
            assert not received.endswith(b"0\r\n\r\n")


def _until_cut(client: Client) -> bytes:
    """What the client receives until the server ends the connection (however it does)."""
    received = bytearray()
    while True:
        try:
            data = client.recv()
        except (ConnectionError, ssl.SSLError):
            return bytes(received)
        if not data:
            return bytes(received)
        received += data
