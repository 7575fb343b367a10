"""ASGI 3.0 as the core sees it: the scopes, the ``tls`` extension, the message state machines
and the loop half of ``http`` requests and ``websocket`` sessions (the WebSocket protocol
itself is ``spcore.gateway.websocket``; ``lifespan`` is ``spcore.gateway.lifespan``).

An ASGI application's coroutines run on an asyncio loop the driver offers
(``spcore.drivers.gateway``: the driver's own loop for asyncio and uvloop, one companion
thread's for the others), through a ``Runner``. Each request has two halves that talk only
by handing calls to each other:

* the loop half (``HTTPCycle``), on the loop thread: it is the request body's reader (each
  piece goes to the application; the body pauses while a window of it waits there), and it
  turns the application's response into the exchange's, returning credit as the client takes
  it; it tells the application half when the client ends its side or the connection goes;
* the application half (``HTTPApp``, in the drivers), on the app loop: ``receive()`` and
  ``send()``, checked by ``ResponseState`` here; ``send()`` waits while a window of the
  response is still on its way to the client.

Calls to the application half go through ``Runner.call`` (run at once on the driver's own
loop, handed to the companion thread otherwise); calls back go through the connection's
``call_soon_threadsafe``. Nothing else is shared.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote

from ..http.messages import Pipe, Request, Response, ResponseControl
from .websocket import ABNORMAL, MAX_MESSAGE_SIZE, Handshake, WebSocketLayer, refusal

if TYPE_CHECKING:
    from ..tls.engine import TLSInfo

__all__ = [
    "ASGI",
    "BODY_WINDOW",
    "MESSAGE_WINDOW",
    "RESPONSE_WINDOW",
    "ASGIHost",
    "HTTPApp",
    "HTTPCycle",
    "ResponseState",
    "Runner",
    "Scope",
    "SessionState",
    "WebSocketApp",
    "WebSocketCycle",
    "http_scope",
    "tls_extension",
    "websocket_scope",
]

Scope = dict[str, Any]
Message = MutableMapping[str, Any]

#: ASGI 3.0, HTTP and WebSocket specification 2.4: ``send()`` raises an ``OSError``
#: (``spcore.errors.ClientDisconnected``) once the client is gone.
ASGI: Final = {"version": "3.0", "spec_version": "2.4"}
#: Request body bytes that may wait for the application before the body pauses.
BODY_WINDOW: Final = 256 * 1024
#: Response bytes ``send()`` may hand over before the client has taken them.
RESPONSE_WINDOW: Final = 256 * 1024
#: WebSocket message bytes that may wait for the application before reading pauses.
MESSAGE_WINDOW: Final = 1024 * 1024
#: A request body the application left unread is drained when at most this much remains
#: (as for spcore's own apps); beyond that the connection closes after the response.
DRAIN_LIMIT: Final = 64 * 1024

_TLS_VERSIONS: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
#: IANA cipher suite numbers by name: the IANA names (``TLSInfo`` gives them) and OpenSSL's
#: for the TLS 1.2 suites (earlier engines gave those). Only suites a server context here can
#: settle on; another one is reported as None.
_CIPHER_SUITES: Final = {
    **{
        name: number
        for number, names in {
            0x1301: ("TLS_AES_128_GCM_SHA256",),
            0x1302: ("TLS_AES_256_GCM_SHA384",),
            0x1303: ("TLS_CHACHA20_POLY1305_SHA256",),
            0x1304: ("TLS_AES_128_CCM_SHA256",),
            0xC02B: ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
            0xC02C: ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"),
            0xC02F: ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
            0xC030: ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
            0xCCA8: (
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305",
            ),
            0xCCA9: (
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ),
            0x009E: ("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", "DHE-RSA-AES128-GCM-SHA256"),
            0x009F: ("TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", "DHE-RSA-AES256-GCM-SHA384"),
            0xCCAA: ("TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "DHE-RSA-CHACHA20-POLY1305"),
        }.items()
        for name in names
    }
}


class Runner(Protocol):
    """Runs an application's coroutines on the driver's app loop (the drivers provide it:
    ``spcore.drivers.gateway.asgi.AsgiRunner``)."""

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """From the loop thread: run ``fn(*args)`` on the app loop soon, in order."""
        ...

    def http(self, scope: Scope, cycle: HTTPCycle, body_done: bool) -> HTTPApp:
        """The application half of an ``http`` request (started by ``call(app.start)``)."""
        ...

    def websocket(self, scope: Scope, cycle: WebSocketCycle) -> WebSocketApp:
        """The application half of a ``websocket`` session (started the same way)."""
        ...


class HTTPApp(Protocol):
    """What the loop half calls on the application half, through ``Runner.call``."""

    def start(self) -> None:
        """Run the application for this request."""
        ...

    def body(self, chunk: bytes, more: bool) -> None:
        """A piece of the request body; ``more`` False: the last."""
        ...

    def eof(self) -> None:
        """The client ended its side: ``receive()`` says ``http.disconnect``."""
        ...

    def lost(self) -> None:
        """The exchange is over (the connection went, the request failed): ``send()`` raises."""
        ...

    def credit(self, size: int) -> None:
        """The client took ``size`` bytes of the response."""
        ...


# -- the scopes --------------------------------------------------------------------------------


def http_scope(request: Request, root_path: str, state: dict[str, Any] | None) -> Scope:
    """The ``http`` scope of ``request`` (``state``: the lifespan's, copied per request)."""
    scope = _connection_scope(request, root_path, state)
    scope["type"] = "http"
    scope["method"] = request.method
    scope["scheme"] = request.scheme
    return scope


def _connection_scope(request: Request, root_path: str, state: dict[str, Any] | None) -> Scope:
    """What ``http`` and ``websocket`` scopes share. ``path`` and ``raw_path`` start with
    ``root_path``, as ASGI asks (and uvicorn does since 0.26): an application takes it off."""
    raw_path = request.path
    scope: Scope = {
        "asgi": ASGI,
        "http_version": request.http_version,
        "path": root_path + (unquote(raw_path) if "%" in raw_path else raw_path),
        "raw_path": (root_path + raw_path).encode("latin-1"),
        "query_string": request.query.encode("latin-1"),
        "root_path": root_path,
        "headers": list(request.headers),
        "client": request.client,
        "server": request.server,
    }
    if state is not None:
        scope["state"] = dict(state)
    if request.tls is not None:
        scope["extensions"] = {"tls": dict(_tls_extension(request.tls))}
    return scope


@functools.lru_cache(maxsize=1024)
def _tls_extension(tls: TLSInfo) -> dict[str, Any]:
    """``tls_extension`` once per connection's ``TLSInfo`` (each request gets a copy)."""
    return tls_extension(tls)


def tls_extension(tls: TLSInfo) -> dict[str, Any]:
    """The ASGI ``tls`` extension (https://asgi.readthedocs.io/en/latest/specs/tls.html) from
    what the handshake settled, plus spcore's ``server_name`` (SNI) and ``alpn_protocol``.

    ``server_cert`` is None (the engine does not say which certificate it served); a client
    certificate is one PEM in ``client_cert_chain`` (the engine keeps the peer's certificate,
    not its chain), and ``client_cert_error`` None because a connection exists only once the
    certificate, if asked for and given, was verified.
    """
    chain: list[str] = []
    name: str | None = None
    if tls.peer_certificate is not None:
        chain.append(_pem(tls.peer_certificate))
        name = _subject(tls.peer_certificate)
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(tls.version),
        "cipher_suite": _CIPHER_SUITES.get(tls.cipher),
        "server_name": tls.server_name,
        "alpn_protocol": tls.alpn_protocol,
    }


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _subject(der: bytes) -> str | None:
    """The certificate's subject as an RFC 4514 string."""
    from cryptography import x509  # (only for client certificates)

    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


# -- the application's messages ------------------------------------------------------------------


class ResponseState:
    """The ``http.response.*`` messages of one request, checked: ``start``, then ``body``
    messages until one without ``more_body`` (raising ``RuntimeError`` or ``TypeError`` for
    anything else, as uvicorn does)."""

    __slots__ = ("complete", "headers", "started", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: Iterable[Any] = ()
        self.started = False
        self.complete = False

    def feed(self, message: Message) -> tuple[bytes, bool] | None:
        """Take one message: None for ``http.response.start`` (kept until the first body, as
        the specification asks), else the body and whether more follows."""
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            status = message["status"]
            if type(status) is not int:
                raise TypeError(f"the ASGI response status must be an int, not {status!r}")
            self.status = status
            self.headers = message.get("headers", ())
            self.started = True
            return None
        if self.complete:
            raise RuntimeError(f"ASGI message {kind!r} after the response was complete")
        if kind != "http.response.body":
            raise RuntimeError(f"expected ASGI message 'http.response.body', got {kind!r}")
        body = message.get("body", b"")
        if type(body) is not bytes:
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"an ASGI response body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        more = bool(message.get("more_body", False))
        self.complete = not more
        return body, more


# -- the loop half -----------------------------------------------------------------------------


class HTTPCycle:
    """The loop thread's half of one ASGI ``http`` request (see the module docstring)."""

    __slots__ = (
        "_body_done",
        "_call",
        "_draining",
        "_exchange",
        "_in_flight",
        "_owed",
        "_pipe",
        "_received",
        "_too_much",
        "app",
        "length",
    )

    def __init__(self, exchange: ResponseControl, call: Callable[..., None]) -> None:
        self._exchange = exchange
        self._call = call
        self.app: HTTPApp | None = None
        self._pipe: Pipe | None = None
        self._in_flight = 0  # body bytes handed to the application, not yet taken
        self._received = 0
        #: The request's Content-Length (None: chunked or none).
        self.length: int | None = None
        self._body_done = False
        self._draining = False  # the application has finished: the rest of the body is dropped
        self._too_much = False  # ... and it is too much to read: close after the response
        self._owed = 0  # response bytes the client has not taken, credit not yet returned

    @property
    def post(self) -> Callable[..., bool]:
        """How the application half hands calls back (from any thread)."""
        return self._exchange.transport.call_soon_threadsafe

    # BodyReader
    def data(self, chunk: bytes) -> bool:
        self._received += len(chunk)
        if self._draining:
            return self._drop_rest()
        self._in_flight += len(chunk)
        self._call(self.app.body, chunk, True)  # type: ignore[union-attr]
        return self._in_flight < BODY_WINDOW

    def end(self) -> None:
        self._body_done = True
        if not self._draining:
            self._call(self.app.body, b"", False)  # type: ignore[union-attr]

    # The exchange's callbacks
    def eof(self) -> None:
        self._call(self.app.eof)  # type: ignore[union-attr]

    def lost(self) -> None:
        self._call(self.app.lost)  # type: ignore[union-attr]

    # Handed over by the application half
    def taken(self, size: int) -> None:
        """The application received ``size`` bytes of the body."""
        self._in_flight -= size
        if self._in_flight < BODY_WINDOW:
            self._exchange.resume_body()  # (nothing if the body was not paused)

    def respond(self, status: int, headers: Iterable[Any], body: bytes, more: bool) -> None:
        """The response's start and its first body message."""
        exchange = self._exchange
        if not more:
            exchange.respond(Response(status, headers, body))
            return
        self._pipe = Pipe()
        exchange.respond(Response(status, headers, self._pipe))
        self.send(body, True)

    def send(self, body: bytes, more: bool) -> None:
        """A further body message."""
        exchange = self._exchange
        pipe = self._pipe
        assert pipe is not None
        if exchange.response_done:  # a HEAD's, or a response cut short: dropped
            if more:
                self._call(self.app.credit, len(body))  # type: ignore[union-attr]
            return
        pipe.write(body)
        if not more:
            pipe.close()
            return
        if exchange.writable:
            self._call(self.app.credit, len(body))  # type: ignore[union-attr]
            return
        if not self._owed:
            exchange.on_writable(self._drained)
        self._owed += len(body)

    def finished(self, failure: str | None) -> None:
        """The application returned before the request body was complete, or failed
        (``failure``: why its response is not what it should be)."""
        exchange = self._exchange
        if failure is not None:
            exchange.error(500, failure)
            return
        if self._body_done:
            return
        # The application will read no more: the rest is dropped, and if it is more than a
        # little, the connection closes once the response is out rather than read it all.
        self._draining = True
        rest = None if self.length is None else self.length - self._received
        self._too_much = rest is None or rest > DRAIN_LIMIT
        exchange.resume_body()
        self._drop_rest()

    def abandon(self) -> None:
        """The application, told the client left, returned without a complete response: the
        connection ends (a half-closed client gets what was sent so far)."""
        self._exchange.on_disconnect(None)
        self._exchange.transport.close()

    def _drop_rest(self) -> bool:
        """While draining: whether to go on reading the body."""
        exchange = self._exchange
        if self._too_much and exchange.response_done:
            exchange.transport.close()
            return False
        return True

    def _drained(self) -> None:
        owed, self._owed = self._owed, 0
        self._call(self.app.credit, owed)  # type: ignore[union-attr]


# -- the host ----------------------------------------------------------------------------------


class ASGIHost:
    """An spcore app serving an ASGI 3 application through ``runner``.

    ``root_path`` is where the application is mounted (``--root-path``); ``state`` the
    lifespan's namespace, a shallow copy of which each request's scope gets; a WebSocket
    upgrade starts a ``websocket`` session whose messages are limited to ``max_message_size``.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        root_path: str = "",
        state: dict[str, Any] | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.runner = runner
        self.root_path = root_path.rstrip("/")
        self.state = state
        self.max_message_size = max_message_size

    def __call__(self, request: Request) -> None:
        length = coding = upgrade = None
        for name, value in request.headers:  # (one pass for the three)
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                coding = value
            elif name == b"upgrade":
                upgrade = value
        if upgrade is not None and _asks_for_websocket(request):
            self._websocket(request)
            return
        exchange = request.exchange
        runner = self.runner
        cycle = HTTPCycle(exchange, runner.call)
        body = coding is not None or (length is not None and length != b"0")
        cycle.length = int(length) if length is not None else None
        app = cycle.app = runner.http(
            http_scope(request, self.root_path, self.state), cycle, not body
        )
        exchange.defer()
        exchange.on_disconnect(cycle.lost)
        exchange.on_client_eof(cycle.eof)
        if body:
            request.read_body(cycle)
        runner.call(app.start)

    def _websocket(self, request: Request) -> None:
        """Check the handshake (refusing a bad one here) and start a ``websocket`` session."""
        handshake = Handshake.check(request)
        exchange = request.exchange
        if isinstance(handshake, Response):
            exchange.respond(handshake)
            return
        runner = self.runner
        cycle = WebSocketCycle(exchange, handshake, runner.call, self.max_message_size)
        scope = websocket_scope(request, self.root_path, self.state, handshake.subprotocols)
        app = cycle.app = runner.websocket(scope, cycle)
        exchange.defer()
        exchange.on_disconnect(cycle.lost)
        runner.call(app.start)


def _asks_for_websocket(request: Request) -> bool:
    """``Upgrade: websocket`` with ``Connection: upgrade`` (RFC 6455 §4.2.1)."""
    upgrade = request.header("upgrade")
    if upgrade is None or upgrade.strip().lower() != "websocket":
        return False
    connection = request.header("connection") or ""
    return "upgrade" in (token.strip().lower() for token in connection.split(","))


# -- websocket --------------------------------------------------------------------------


class WebSocketApp(Protocol):
    """What the loop half calls on the application half, through ``Runner.call``."""

    def start(self) -> None: ...

    def message(self, data: str | bytes) -> None: ...

    def closed(self, code: int, reason: str) -> None: ...

    def credit(self, size: int) -> None: ...


class SessionState:
    """The application's ``websocket.*`` messages of one session, checked (RFC 6455 and the
    ASGI specification): before the handshake is answered, ``websocket.accept``,
    ``websocket.close`` (refused with 403) or the denial response
    (``websocket.http.response.start``, then ``.body`` messages); once accepted,
    ``websocket.send`` (text or bytes) and ``websocket.close``. ``feed`` returns what to do,
    as the name of a ``WebSocketCycle`` method and its arguments; anything out of place raises
    ``RuntimeError`` (or ``TypeError``, ``ValueError``)."""

    CONNECTING, OPEN, DENYING, CLOSED = range(4)

    __slots__ = ("_denial", "state")

    def __init__(self) -> None:
        self.state = self.CONNECTING
        self._denial: tuple[int, Iterable[Any]] | None = None

    def feed(self, message: MutableMapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        kind = message["type"]
        state = self.state
        if state == self.OPEN:
            if kind == "websocket.send":
                return "send", (_payload(message),)
            if kind == "websocket.close":
                code = _close_code(message)
                self.state = self.CLOSED
                return "close", code
        elif state == self.CONNECTING:
            if kind == "websocket.accept":
                self.state = self.OPEN
                subprotocol = message.get("subprotocol")
                if subprotocol is not None and not isinstance(subprotocol, str):
                    raise TypeError(f"subprotocol must be a str, not {subprotocol!r}")
                return "accept", (subprotocol, message.get("headers", ()))
            if kind == "websocket.close":
                self.state = self.CLOSED
                return "refuse", ()
            if kind == "websocket.http.response.start":
                status = message["status"]
                if type(status) is not int:
                    raise TypeError(f"the denial response status must be an int, not {status!r}")
                self.state = self.DENYING
                self._denial = (status, message.get("headers", ()))
                return "wait", ()
        elif state == self.DENYING and kind == "websocket.http.response.body":
            body = message.get("body", b"")
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"a denial body must be bytes, not {type(body).__name__}")
            more = bool(message.get("more_body", False))
            if not more:
                self.state = self.CLOSED
            denial, self._denial = self._denial, None
            if denial is not None:
                return "deny", (*denial, bytes(body), more)
            return "deny_more", (bytes(body), more)
        raise RuntimeError(f"ASGI message {kind!r} is out of place in a WebSocket session")


def _payload(message: MutableMapping[str, Any]) -> str | bytes:
    text, data = message.get("text"), message.get("bytes")
    if (text is None) == (data is None):
        raise ValueError("websocket.send takes exactly one of 'text' and 'bytes'")
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"'text' must be a str, not {type(text).__name__}")
        return text
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"'bytes' must be bytes, not {type(data).__name__}")
    return bytes(data)


#: Codes an endpoint must not send (RFC 6455 §7.4.1: 1005, 1006 and 1015 are reported
#: locally only; 1004 is reserved).
_UNSENDABLE: Final = frozenset({1004, 1005, 1006, 1015})


def _close_code(message: MutableMapping[str, Any]) -> tuple[int, str]:
    code = message.get("code", 1000)
    reason = message.get("reason") or ""
    if type(code) is not int or not 1000 <= code <= 4999 or code in _UNSENDABLE:
        raise ValueError(f"{code!r} is not a close code an endpoint may send (RFC 6455 §7.4)")
    if not isinstance(reason, str):
        raise TypeError(f"the close reason must be a str, not {type(reason).__name__}")
    return code, reason


def websocket_scope(
    request: Request, root_path: str, state: dict[str, Any] | None, subprotocols: list[str]
) -> Scope:
    scope = _connection_scope(request, root_path, state)
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if request.tls is not None else "ws"
    scope["subprotocols"] = subprotocols
    extensions = scope.setdefault("extensions", {})
    extensions["websocket.http.response"] = {}
    return scope


class WebSocketCycle:
    """The loop thread's half of one ASGI ``websocket`` session: the layer's handler, and
    what the application half hands over (accept, deny, send, close, messages taken)."""

    def __init__(
        self,
        exchange: ResponseControl,
        handshake: Handshake,
        call: Callable[..., None],
        max_message_size: int,
    ) -> None:
        self._exchange = exchange
        self._handshake = handshake
        self._call = call
        #: How the application half hands calls back (from any thread).
        self.post = exchange.transport.call_soon_threadsafe
        self._max = max_message_size
        self.app: WebSocketApp | None = None
        self._layer: WebSocketLayer | None = None
        self._denial: HTTPCycle | None = None
        self._in_flight = 0  # message bytes handed to the application, not yet taken
        self._owed = 0  # bytes sent, credit not yet returned

    # Handed over by the application half
    def accept(self, subprotocol: str | None, headers: Iterable[tuple[Any, Any]]) -> None:
        try:
            pairs = self._handshake.accept_headers(subprotocol, headers)
        except ValueError as exc:
            self.fail(f"the application's websocket.accept is invalid: {exc}")
            return
        layer = self._layer = WebSocketLayer(self, self._max)
        self._exchange.upgrade(layer, pairs)

    def refuse(self) -> None:
        """``websocket.close`` before ``websocket.accept``: 403 (the ASGI specification)."""
        self._exchange.respond(refusal(403, "the application refused the WebSocket"))

    def deny(self, status: int, headers: Iterable[Any], body: bytes, more: bool) -> None:
        """The denial response (the ``websocket.http.response`` extension) begins."""
        denial = self._denial = HTTPCycle(self._exchange, self._call)
        denial.app = self.app  # type: ignore[assignment]  # (it only returns credit)
        denial.respond(status, headers, body, more)

    def deny_more(self, body: bytes, more: bool) -> None:
        assert self._denial is not None
        self._denial.send(body, more)

    def send(self, data: str | bytes) -> None:
        layer = self._layer
        assert layer is not None
        layer.send(data)
        if layer.writable:
            self._call(self.app.credit, len(data))  # type: ignore[union-attr]
        else:
            self._owed += len(data)

    def close(self, code: int, reason: str) -> None:
        if self._layer is not None:
            self._layer.close(code, reason)

    def taken(self, size: int) -> None:
        self._in_flight -= size
        if self._in_flight < MESSAGE_WINDOW and self._layer is not None:
            self._layer.resume()

    def fail(self, failure: str) -> None:
        """The application failed: before the handshake was answered, a 500; after, the
        connection closes with 1011 (RFC 6455 §7.4.1: an unexpected condition)."""
        if self._layer is None:
            self._exchange.error(500, failure)
        else:
            self._layer.close(1011, "internal error")  # (the traceback is logged already)

    # WebSocketHandler
    def message(self, data: str | bytes) -> None:
        self._in_flight += len(data)
        self._call(self.app.message, data)  # type: ignore[union-attr]
        if self._in_flight >= MESSAGE_WINDOW:
            assert self._layer is not None
            self._layer.pause()

    def closed(self, code: int, reason: str) -> None:
        self._call(self.app.closed, code, reason)  # type: ignore[union-attr]

    def writable(self) -> None:
        owed, self._owed = self._owed, 0
        if owed:
            self._call(self.app.credit, owed)  # type: ignore[union-attr]

    # The exchange's (before the upgrade)
    def lost(self) -> None:
        self.closed(ABNORMAL, "")
