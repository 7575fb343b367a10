"""WebSocket (RFC 6455): the opening handshake checked, and a protocol layer over wsproto that
the HTTP exchange upgrades to (ASGI's ``websocket`` sessions run on it: ``spcore.gateway.asgi``).

The exchange answers the upgrade (``exchange.upgrade(layer, headers)``: 101, then every byte
goes to the layer); wsproto (https://github.com/python-hyper/wsproto), the sans-IO WebSocket
library of the h11 family, frames and unframes, unmasks, checks UTF-8 and control frames.
``WebSocketLayer`` adds what a server needs around it: messages assembled from their frames up
to a size limit (1009 beyond it), pings answered, the closing handshake (a close answered,
ours followed by the connection's graceful close), flow control both ways (reading pauses
while the application has a window of messages to take; output is paced by the connection's
high-water mark), and a close code for every end (1006 when the connection just went).

permessage-deflate is not negotiated: wsproto inflates a received frame's payload in one call
without a size limit, so a small compressed frame could expand a thousandfold in memory before
any message-size check (extensions are optional, RFC 6455 §9).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from ..http.messages import Request, Response
from ..layer import ProtocolLayer

if TYPE_CHECKING:
    from ..layer import Transport

__all__ = [
    "GOING_AWAY",
    "MAX_MESSAGE_SIZE",
    "Handshake",
    "WebSocketHandler",
    "WebSocketLayer",
    "refusal",
]

log = logging.getLogger("spcore.websocket")

#: The default limit on one message (uvicorn's and websockets' too): bytes, or characters of
#: a text message.
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: Close codes (RFC 6455 §7.4.1): the server goes away, the connection just went, too big.
GOING_AWAY, ABNORMAL, TOO_BIG = 1001, 1006, 1009


class Handshake:
    """A client's opening handshake, checked (RFC 6455 §4.2.1)."""

    __slots__ = ("key", "subprotocols")

    def __init__(self, key: bytes, subprotocols: list[str]) -> None:
        self.key = key
        self.subprotocols = subprotocols

    @classmethod
    def check(cls, request: Request) -> Handshake | Response:
        """The handshake, or the response refusing it (400, or 426 for another version)."""
        if request.method != "GET" or request.http_version != "1.1":
            return refusal(400, "a WebSocket handshake is a GET request over HTTP/1.1")
        version = request.header("sec-websocket-version")
        if version is None or version.strip() != "13":
            return refusal(
                426, "this server speaks WebSocket version 13", [("sec-websocket-version", "13")]
            )
        key = (request.header("sec-websocket-key") or "").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            return refusal(400, "Sec-WebSocket-Key must be 16 bytes in base64")
        offered = [
            part.strip()
            for name, value in request.headers
            if name == b"sec-websocket-protocol"
            for part in value.decode("latin-1").split(",")
            if part.strip()
        ]
        return cls(key.encode("ascii"), offered)

    def accept_headers(
        self, subprotocol: str | None, headers: Iterable[tuple[Any, Any]] = ()
    ) -> list[tuple[Any, Any]]:
        """The 101's headers: the accept token, the subprotocol chosen, and ``headers``."""
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        pairs: list[tuple[Any, Any]] = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(self.key)),
        ]
        if subprotocol is not None:
            pairs.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
        reserved = {b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-protocol"}
        pairs += [
            (name, value)
            for name, value in headers
            if (name.encode("latin-1") if isinstance(name, str) else bytes(name)).lower()
            not in reserved
        ]
        return pairs


def refusal(status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A short text answer to a WebSocket request that is not served as one."""
    return Response(
        status, [("content-type", "text/plain; charset=utf-8"), *(headers or [])], reason + "\n"
    )


# -- the protocol layer ------------------------------------------------------------------------


class WebSocketHandler(Protocol):
    """What a ``WebSocketLayer`` tells, on the loop thread."""

    def message(self, data: str | bytes) -> None:
        """A whole message (``str`` for text, ``bytes`` for binary)."""
        ...

    def closed(self, code: int, reason: str) -> None:
        """The session is over (once): the peer's close code, ours, or 1006."""
        ...

    def writable(self) -> None:
        """The connection drained what was sent below its low-water mark."""
        ...


class WebSocketLayer(ProtocolLayer):
    """One WebSocket session on a connection, after the 101 (see the module docstring)."""

    def __init__(self, handler: WebSocketHandler, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._handler = handler
        self._max = max_message_size
        self._ws = WSConnection(ConnectionType.SERVER)
        self._conn: Transport | None = None
        self._parts: list[Any] = []
        self._size = 0
        self._paused = False
        self._done = False  # the handler was told ``closed``

    @property
    def reading(self) -> bool:
        return not self._paused and self._ws.state is not ConnectionState.CLOSED

    @property
    def writable(self) -> bool:
        assert self._conn is not None
        return self._conn.writable

    # -- the loop thread's API --------------------------------------------------------------------

    def send(self, data: str | bytes) -> None:
        """Send one message (text for ``str``); nothing once the session is closing."""
        if self._ws.state is ConnectionState.OPEN:
            self._write(self._ws.send(_message(data)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake with ``code``, then close the connection gracefully."""
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._write(self._ws.send(CloseConnection(code, reason or None)))
        self._closed(code, reason)
        if self._conn is not None:
            self._conn.close()

    def pause(self) -> None:
        """Stop reading (the application has enough to take)."""
        self._paused = True

    def resume(self) -> None:
        """Read again, starting with the messages already received."""
        if self._paused:
            self._paused = False
            self._events()
            assert self._conn is not None
            self._conn.sync()

    # -- ProtocolLayer ----------------------------------------------------------------------------

    def connection_made(self, conn: Transport, now: float) -> None:
        self._conn = conn

    def data_received(self, data: bytes, now: float) -> None:
        if self._ws.state is ConnectionState.CLOSED:
            return
        self._ws.receive_data(data)
        self._events()

    def eof_received(self, clean: bool, now: float) -> None:
        if self._ws.state is not ConnectionState.CLOSED:
            self._ws.receive_data(None)  # wsproto: a close of 1006, "abnormal closure"
            self._events()
        assert self._conn is not None
        self._conn.close()

    def resume_writing(self, now: float) -> None:
        self._handler.writable()

    def shutdown(self, now: float) -> None:
        """The server stops: close with 1001, "going away" (RFC 6455 §7.4.1)."""
        self.close(GOING_AWAY, "the server is shutting down")

    def connection_lost(self, error: BaseException | None) -> None:
        self._closed(ABNORMAL, "")

    # -- internals --------------------------------------------------------------------------------

    def _events(self) -> None:
        ws = self._ws
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                self._part(event)  # type: ignore[arg-type]
            elif kind is Ping:
                self._write(ws.send(event.response()))  # type: ignore[attr-defined]
            elif kind is CloseConnection:
                self._peer_closed(event)  # type: ignore[arg-type]
                return
            if self._paused or self._done:
                return  # the rest waits in wsproto until resume()

    def _part(self, event: TextMessage | BytesMessage) -> None:
        self._size += len(event.data)
        if self._size > self._max:
            self.close(TOO_BIG, f"a message is limited to {self._max} bytes")
            return
        self._parts.append(event.data)
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            message = "".join(parts) if type(event) is TextMessage else b"".join(parts)
            self._handler.message(message)

    def _peer_closed(self, event: CloseConnection) -> None:
        ws = self._ws
        assert self._conn is not None
        if ws.state is ConnectionState.REMOTE_CLOSING:  # the peer began: answer, then close
            self._write(ws.send(event.response()))
        elif ws.state is ConnectionState.OPEN:  # wsproto refused what the peer sent
            log.info("%r: WebSocket closed: %s (%d)", self._conn, event.reason, event.code)
            self._write(ws.send(CloseConnection(event.code, event.reason)))
        self._closed(event.code, event.reason or "")
        self._conn.close()

    def _closed(self, code: int, reason: str) -> None:
        if not self._done:
            self._done = True
            self._handler.closed(code, reason)

    def _write(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.write(data)


def _message(data: str | bytes) -> TextMessage | BytesMessage:
    return TextMessage(data) if isinstance(data, str) else BytesMessage(data)
