"""A Starlette application with a WebSocket route, served as it is: ``spcore serve --app
starlette_app:app`` (docs/guide.md).

spcore sees an ASGI 3 application (a coroutine function of scope, receive and send), runs
its lifespan before serving and after, and its coroutines on the driver's app loop. The
upload is read as it arrives; the count streams; the WebSocket echoes until the client
closes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
    yield {"greeting": "hello from Starlette"}  # (startup before the yield, shutdown after)


async def index(request: Request) -> JSONResponse:
    tls = request.scope.get("extensions", {}).get("tls")
    return JSONResponse(
        {
            "greeting": request.state.greeting,
            "scheme": request.url.scheme,
            "tls_version": tls and hex(tls["tls_version"]),
        }
    )


async def upload(request: Request) -> PlainTextResponse:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return PlainTextResponse(f"{digest.hexdigest()} {size}\n")


async def count(request: Request) -> StreamingResponse:
    async def numbers() -> AsyncIterator[str]:
        for number in range(1, 6):
            yield f"{number}\n"

    return StreamingResponse(numbers(), media_type="text/plain")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo: " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", index),
        Route("/upload", upload, methods=["POST"]),
        Route("/count", count),
        WebSocketRoute("/echo", echo),
    ],
    lifespan=lifespan,
)
