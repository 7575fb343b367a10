"""WebSocket sessions of an ASGI application hosted on the driver, with the ``websockets``
client: text and bytes echoed, a ping answered, subprotocols, close codes both ways, the
message size limit (1009), the denial response, and a client that leaves."""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from spcore.conformance.harness import Serve, Served, Transport
from spcore.conformance.plugin import GATEWAY_MARK

client = pytest.importorskip("websockets.sync.client", reason="needs the websockets client")
errors = pytest.importorskip("websockets.exceptions", reason="needs the websockets client")

pytestmark = getattr(pytest.mark, GATEWAY_MARK)
TRANSPORTS = pytest.mark.parametrize("transport", ["plain", "tls1.3"])

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Echo:
    """Echo text and bytes; ``close <code>`` closes with that code; /deny refuses with 401.
    Records the close code the session ended with."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.code: int | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no entry"})
            return
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self.code = message["code"]
                    return
                text = message.get("text")
                if text is not None and text.startswith("close "):
                    await send({"type": "websocket.close", "code": int(text[6:]), "reason": "bye"})
                    return
                if text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
        finally:
            self.ended.set()


def _connect(served: Served, path: str = "/ws", **options: Any) -> Any:
    scheme = "ws" if served.transport == "plain" else "wss"
    context = None if served.transport == "plain" else served.pki.client_context(alpn=())
    return client.connect(
        f"{scheme}://localhost:{served.port}{path}",
        ssl=context,
        open_timeout=10,
        close_timeout=5,
        **options,
    )


@TRANSPORTS
def test_text_and_bytes_are_echoed_and_a_close_code_returns(
    serve: Serve, transport: Transport
) -> None:
    with (
        serve(asgi=Echo(), transport=transport, lifespan="off") as served,
        _connect(served, subprotocols=["chat", "other"]) as ws,
    ):
        assert ws.subprotocol == "chat"
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\xff" * 50_000)  # several frames' worth, and over the TLS records
        assert ws.recv(timeout=10) == b"\x00\xff" * 50_000
        assert ws.ping(b"are you there").wait(10)  # answered by the server itself
        ws.send("close 4001")
        with pytest.raises(errors.ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


def test_a_client_closing_ends_the_session_with_its_code(serve: Serve) -> None:
    app = Echo()
    with serve(asgi=app, lifespan="off") as served:
        with _connect(served) as ws:
            ws.send("one")
            assert ws.recv(timeout=10) == "one"
            ws.close(4002, "done")
        assert app.ended.wait(10) and app.code == 4002


def test_a_client_that_just_goes_ends_the_session_with_1006(serve: Serve) -> None:
    app = Echo()
    with serve(asgi=app, lifespan="off") as served:
        with _connect(served) as ws:
            ws.send("one")
            assert ws.recv(timeout=10) == "one"
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a closing handshake
            assert app.ended.wait(10) and app.code == 1006
        served.wait_drained()


def test_a_message_over_the_limit_closes_with_1009(serve: Serve) -> None:
    with serve(asgi=Echo(), lifespan="off") as served:
        assert served.hosted is not None
        limit: int = served.hosted.app.max_message_size  # type: ignore[attr-defined]
        with _connect(served, max_size=None) as ws:
            ws.send(b"x" * (limit + 1))
            with pytest.raises(errors.ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_a_session_can_be_denied_with_a_response(serve: Serve) -> None:
    with serve(asgi=Echo(), lifespan="off") as served:
        with pytest.raises(errors.InvalidStatus) as denied, _connect(served, "/deny"):
            pass
        assert denied.value.response.status_code == 401
        assert denied.value.response.body == b"no entry"
