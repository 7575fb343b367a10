"""The gateway's sans-IO parts, without a socket or a thread: telling interfaces apart, the
WSGI environ, ``wsgi.input`` and a call's worker half, the ASGI scopes, the ``tls``
extension, the message state machines, the lifespan's answers, and the WebSocket layer
against a wsproto client."""

from __future__ import annotations

import functools
import sys
import wsgiref.util
import wsgiref.validate
from collections.abc import Callable
from typing import Any

import pytest
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from spcore.errors import ClientDisconnected
from spcore.gateway.asgi import ResponseState, SessionState, http_scope, tls_extension
from spcore.gateway.detect import Interface, InterfaceError, detect
from spcore.gateway.lifespan import LifespanError, lifespan_outcome
from spcore.gateway.websocket import Handshake, WebSocketLayer
from spcore.gateway.wsgi import WSGIInput, build_environ, run_call
from spcore.http.messages import Request, Response
from spcore.tls.engine import TLSInfo

# -- detection ---------------------------------------------------------------------------------


async def asgi_function(scope: Any, receive: Any, send: Any) -> None: ...


class AsgiObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class WsgiObject:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def spcore_app(request: Request) -> Response:
    return Response()


def wsgi_with_default(environ: Any, start_response: Any, extra: int = 0) -> list[bytes]:
    return []


@pytest.mark.parametrize(
    ("app", "interface"),
    [
        (asgi_function, Interface.ASGI),
        (AsgiObject(), Interface.ASGI),
        (functools.partial(asgi_function), Interface.ASGI),
        (WsgiObject(), Interface.WSGI),
        (wsgi_with_default, Interface.WSGI),
        (spcore_app, Interface.SPCORE),
        (lambda scope, receive, send: None, Interface.ASGI),  # returns a coroutine, say
    ],
)
def test_interfaces_are_told_apart(app: object, interface: Interface) -> None:
    assert detect(app) is interface
    assert detect(app, interface.value) is interface


def test_real_frameworks_are_recognised() -> None:
    flask = pytest.importorskip("flask")
    starlette = pytest.importorskip("starlette.applications")
    assert detect(flask.Flask("x")) is Interface.WSGI
    assert detect(starlette.Starlette()) is Interface.ASGI


@pytest.mark.parametrize(
    ("app", "interface", "message"),
    [
        (AsgiObject, "auto", "AsgiObject is a class: an ASGI 2 application"),
        (lambda: None, "auto", "it takes 0 arguments"),
        (lambda a, b, c, d: None, "auto", "it takes 4 arguments"),
        (lambda *args: None, "auto", "name it with --interface"),
        (asgi_function, "wsgi", "a coroutine function, an ASGI app, not WSGI"),
        (WsgiObject(), "asgi", "it takes 2 arguments: a ASGI 3 app takes 3"),
        (42, "auto", "it is a int, not a callable"),
        (spcore_app, "asgi2", "unknown interface 'asgi2'"),
    ],
)
def test_what_fits_no_interface_is_told_in_one_line(
    app: object, interface: str, message: str
) -> None:
    with pytest.raises(InterfaceError, match=message) as error:
        detect(app, interface)
    assert "\n" not in str(error.value)


def test_an_app_of_any_arguments_is_what_it_is_said_to_be() -> None:
    validated = wsgiref.validate.validator(WsgiObject())  # (it takes *args)
    assert detect(validated, "wsgi") is Interface.WSGI


# -- WSGI ----------------------------------------------------------------------------------------


def request(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    tls: TLSInfo | None = None,
) -> Request:
    return Request(
        method,
        target,
        headers or [(b"host", b"example.test")],
        "1.1",
        client=("192.0.2.7", 4321),
        server=("198.51.100.2", 8443),
        tls=tls,
    )


TLS = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", "http/1.1", "example.test", None)


def test_the_environ_passes_wsgiref_validation() -> None:
    headers = [
        (b"host", b"example.test"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"x-forwarded-for", b"1"),
        (b"x_forwarded_for", b"2"),  # underscores: dropped, not mistaken for the one above
        (b"accept", b"a"),
        (b"accept", b"b"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    ]
    environ = build_environ(
        request("POST", "/api/caf%C3%A9%2Fx?q=1", headers, tls=TLS),
        WSGIInput(lambda size: b""),
        root_path="/api",
    )
    wsgiref.validate.check_environ(environ)  # type: ignore[attr-defined]
    assert environ["SCRIPT_NAME"] == "/api"
    assert environ["PATH_INFO"] == "/café/x".encode().decode("latin-1")  # PEP 3333's bytes
    assert environ["QUERY_STRING"] == "q=1" and environ["wsgi.url_scheme"] == "https"
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("text/plain", "5")
    assert environ["HTTP_X_FORWARDED_FOR"] == "1"
    assert environ["HTTP_ACCEPT"] == "a,b" and environ["HTTP_COOKIE"] == "a=1; b=2"
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "4321")
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("198.51.100.2", "8443")
    assert environ["wsgi.file_wrapper"] is wsgiref.util.FileWrapper
    assert wsgiref.util.request_uri(environ) == "https://example.test/api/caf%C3%A9/x?q=1"


def test_wsgi_input_reads_lines_and_sizes_as_the_body_arrives() -> None:
    pieces = [b"first line\nsec", b"ond line\n", b"", b"tail without newline"]
    taken: list[int] = []

    def take(size: int) -> bytes:
        taken.append(size)
        return pieces.pop(0) if pieces else b""

    body = WSGIInput(take)
    assert body.read(0) == b"" and taken == []
    assert body.readline() == b"first line\n"
    assert body.read(3) == b"sec"
    assert body.readline(4) == b"ond "
    assert list(body) == [b"line\n"]  # (b"" from take: the end, although more was there)
    assert body.read() == b""


class FakeChannel:
    """A channel that hands parts over at once (a test plays the loop thread)."""

    def __init__(self, body: bytes = b"", *, abort_after: int | None = None) -> None:
        self.body = body
        self.given: list[tuple[str, tuple[Any, ...]]] = []
        self._abort_after = abort_after
        self._aborted = False

    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        self._aborted = True

    def take(self, size: int) -> bytes:
        data, self.body = self.body[:size], self.body[size:]
        return data

    def give(self, fn: Callable[..., None], *args: Any, size: int) -> None:
        if self._aborted:
            raise ClientDisconnected("gone")
        self.given.append((fn.__name__, args))
        if self._abort_after is not None and len(self.given) >= self._abort_after:
            self._aborted = True


class FakeCall:
    def start(self, status: int, headers: Any, body: bytes, end: bool) -> None: ...

    def more(self, body: bytes, end: bool) -> None: ...

    def failed(self) -> None: ...


def call(app: Any, channel: FakeChannel, environ: dict[str, Any] | None = None) -> None:
    env = environ or build_environ(request(), WSGIInput(channel.take))
    run_call(wsgiref.validate.validator(app), env, channel, FakeCall())  # type: ignore[arg-type]


class Closing:
    """An iterable that records its close()."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Any:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


def test_a_body_is_handed_over_as_it_is_produced_and_closed() -> None:
    body = Closing([b"", b"one", b"two"])

    def app(environ: Any, start_response: Any) -> Closing:
        start_response("201 Created", [("Content-Type", "text/plain")])
        return body

    channel = FakeChannel()
    call(app, channel)
    assert channel.given == [
        ("start", (201, [("Content-Type", "text/plain")], b"one", False)),
        ("more", (b"two", False)),
        ("more", (b"", True)),
    ]
    assert body.closed


def test_a_one_chunk_body_goes_whole_in_the_result_and_write_goes_first() -> None:
    def whole(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"all of it"]

    channel = FakeChannel()
    env = build_environ(request(), WSGIInput(channel.take))
    result = run_call(whole, env, channel, FakeCall())  # type: ignore[arg-type]
    assert result == (200, [("Content-Type", "text/plain")], b"all of it")
    assert channel.given == []  # (nothing handed over besides)

    def left(environ: Any, start_response: Any) -> list[bytes]:
        channel.abort()  # the client leaves while the application runs
        return whole(environ, start_response)

    channel = FakeChannel()
    env = build_environ(request(), WSGIInput(channel.take))
    assert run_call(left, env, channel, FakeCall()) is None  # type: ignore[arg-type]
    assert channel.given == []  # (the hand-over raised ClientDisconnected: nothing to send)

    def writing(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])(b"written")
        return [b"returned"]

    channel = FakeChannel()
    call(writing, channel)
    assert [name for name, _ in channel.given] == ["start", "more", "more"]
    assert channel.given[0][1][2] == b"written"


def test_exc_info_replaces_a_response_not_begun_and_reraises_after() -> None:
    def late(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"begun"
        try:
            raise ValueError("too late")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        yield b"never"

    channel = FakeChannel()
    run_call(late, build_environ(request(), WSGIInput(channel.take)), channel, FakeCall())  # type: ignore[arg-type]
    assert [name for name, _ in channel.given] == ["start", "failed"]  # re-raised: cut


def test_start_response_twice_without_exc_info_is_an_error(caplog: Any) -> None:
    def twice(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    channel = FakeChannel()
    run_call(twice, build_environ(request(), WSGIInput(channel.take)), channel, FakeCall())  # type: ignore[arg-type]
    assert channel.given == [("failed", ())]
    assert "called a second time" in caplog.text


@pytest.mark.parametrize("status", ["200", "OK 200", 200, "2000 OK"])
def test_a_bad_status_is_an_application_error(status: Any) -> None:
    def bad(environ: Any, start_response: Any) -> list[bytes]:
        start_response(status, [])
        return [b"x"]

    channel = FakeChannel()
    run_call(bad, build_environ(request(), WSGIInput(channel.take)), channel, FakeCall())  # type: ignore[arg-type]
    assert channel.given == [("failed", ())]


def test_a_client_leaving_stops_the_iterable_and_closes_it() -> None:
    produced: list[int] = []
    closed: list[bool] = []

    def endless(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            for number in range(10_000):
                produced.append(number)
                yield b"%d" % number
        finally:
            closed.append(True)

    channel = FakeChannel(abort_after=3)
    call(endless, channel)
    assert len(channel.given) == 3 and len(produced) == 4 and closed == [True]


def test_the_body_is_read_through_the_channel() -> None:
    def echo(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["wsgi.input"].read(1000)]

    channel = FakeChannel(b"uploaded")
    call(echo, channel)
    assert channel.given[0][1][2] == b"uploaded"


# -- ASGI ----------------------------------------------------------------------------------------


def test_the_http_scope() -> None:
    scope = http_scope(
        request("GET", "/caf%C3%A9?x=%20", [(b"host", b"h"), (b"x-a", b"1")]), "/root", {"k": 1}
    )
    assert scope["type"] == "http" and scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert (scope["path"], scope["raw_path"]) == ("/root/café", b"/root/caf%C3%A9")
    assert (scope["root_path"], scope["query_string"]) == ("/root", b"x=%20")
    assert scope["headers"] == [(b"host", b"h"), (b"x-a", b"1")]
    assert (scope["client"], scope["server"]) == (("192.0.2.7", 4321), ("198.51.100.2", 8443))
    assert scope["scheme"] == "http" and "extensions" not in scope
    assert scope["state"] == {"k": 1}


def test_the_tls_extension(pki: Any) -> None:
    der = ssl_der(pki.client.certfile)
    info = TLSInfo("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "http/1.1", "sni.test", der)
    tls = tls_extension(info)
    assert (tls["tls_version"], tls["cipher_suite"]) == (0x0303, 0xC02B)
    assert tls["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----\n")
    assert ssl_der_of_pem(tls["client_cert_chain"][0]) == der
    assert tls["client_cert_name"] == "CN=client.test"
    assert (tls["server_name"], tls["alpn_protocol"]) == ("sni.test", "http/1.1")
    iana = tls_extension(TLSInfo("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", None, None, None))
    assert (iana["cipher_suite"], iana["client_cert_chain"]) == (0x1303, [])
    renamed = "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"  # an IANA name for a TLS 1.2 suite
    assert tls_extension(TLSInfo("TLSv1.2", renamed, None, None, None))["cipher_suite"] == 0xC030


def ssl_der(path: Any) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(path.read_text())


def ssl_der_of_pem(pem: str) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(pem)


def test_the_response_messages_are_checked() -> None:
    state = ResponseState()
    with pytest.raises(RuntimeError, match=r"expected ASGI message 'http\.response\.start'"):
        state.feed({"type": "http.response.body", "body": b""})
    assert state.feed({"type": "http.response.start", "status": 200, "headers": []}) is None
    with pytest.raises(RuntimeError, match=r"'http\.response\.body'"):
        state.feed({"type": "http.response.start", "status": 200})
    assert state.feed({"type": "http.response.body", "body": b"a", "more_body": True}) == (
        b"a",
        True,
    )
    assert state.feed({"type": "http.response.body", "body": bytearray(b"b")}) == (b"b", False)
    assert state.complete
    with pytest.raises(RuntimeError, match="after the response was complete"):
        state.feed({"type": "http.response.body", "body": b""})
    with pytest.raises(TypeError):
        ResponseState().feed({"type": "http.response.start", "status": "200"})


def test_the_websocket_messages_are_checked() -> None:
    state = SessionState()
    assert state.feed({"type": "websocket.accept", "subprotocol": "chat"}) == (
        "accept",
        ("chat", ()),
    )
    assert state.feed({"type": "websocket.send", "text": "hi"}) == ("send", ("hi",))
    with pytest.raises(ValueError, match="exactly one"):
        state.feed({"type": "websocket.send", "text": "a", "bytes": b"b"})
    with pytest.raises(ValueError, match="close code"):
        state.feed({"type": "websocket.close", "code": 1006})
    assert state.feed({"type": "websocket.close", "code": 4000}) == ("close", (4000, ""))
    with pytest.raises(RuntimeError, match="out of place"):
        state.feed({"type": "websocket.send", "text": "after the close"})
    denied = SessionState()
    start = {"type": "websocket.http.response.start", "status": 403, "headers": [(b"a", b"b")]}
    assert denied.feed(start) == ("wait", ())
    body = {"type": "websocket.http.response.body", "body": b"no", "more_body": True}
    assert denied.feed(body) == ("deny", (403, [(b"a", b"b")], b"no", True))
    assert denied.feed({"type": "websocket.http.response.body"}) == ("deny_more", (b"", False))
    assert SessionState().feed({"type": "websocket.close"}) == ("refuse", ())


def test_the_lifespan_answers() -> None:
    lifespan_outcome("startup", {"type": "lifespan.startup.complete"})
    with pytest.raises(LifespanError, match="the application's startup failed: no db"):
        lifespan_outcome("startup", {"type": "lifespan.startup.failed", "message": "no\ndb"})
    with pytest.raises(LifespanError, match=r"answered lifespan\.shutdown with"):
        lifespan_outcome("shutdown", {"type": "lifespan.startup.complete"})


# -- the WebSocket layer -----------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.writable = True
        self.synced = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def sync(self) -> None:
        self.synced += 1


class Handler:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.ended: list[tuple[int, str]] = []

    def message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def closed(self, code: int, reason: str) -> None:
        self.ended.append((code, reason))

    def writable(self) -> None: ...


def session(max_size: int = 1000) -> tuple[WebSocketLayer, Handler, FakeTransport, WSConnection]:
    handler, transport = Handler(), FakeTransport()
    layer = WebSocketLayer(handler, max_size)
    layer.connection_made(transport, 0.0)  # type: ignore[arg-type]
    return layer, handler, transport, WSConnection(ConnectionType.CLIENT)


def from_server(client: WSConnection, transport: FakeTransport) -> list[Any]:
    client.receive_data(bytes(transport.written))
    transport.written.clear()
    return list(client.events())


def test_messages_are_assembled_from_their_frames() -> None:
    layer, handler, transport, client = session()
    frames = client.send(TextMessage("hel", message_finished=False))
    frames += client.send(TextMessage("lo"))
    frames += client.send(BytesMessage(b"\x00\x01"))
    for i in range(len(frames)):  # one byte at a time
        layer.data_received(frames[i : i + 1], 0.0)
    assert handler.messages == ["hello", b"\x00\x01"]
    layer.send("back")
    assert [e.data for e in from_server(client, transport)] == ["back"]


def test_a_ping_is_answered_and_a_close_returned() -> None:
    layer, handler, transport, client = session()
    layer.data_received(client.send(Ping(b"x")), 0.0)
    assert from_server(client, transport) == [Pong(b"x")]
    layer.data_received(client.send(CloseConnection(4001, "bye")), 0.0)
    [answer] = from_server(client, transport)
    assert isinstance(answer, CloseConnection) and answer.code == 4001
    assert handler.ended == [(4001, "bye")] and transport.closed


def test_a_message_over_the_limit_closes_with_1009() -> None:
    layer, handler, transport, client = session(max_size=10)
    layer.data_received(client.send(BytesMessage(b"x" * 11)), 0.0)
    [close] = from_server(client, transport)
    assert close.code == 1009 and handler.ended[0][0] == 1009 and handler.messages == []


def test_invalid_utf8_closes_with_1007() -> None:
    layer, handler, transport, client = session()
    frame = bytearray(client.send(BytesMessage(b"\xff\xfe")))
    frame[0] = (frame[0] & 0xF0) | 0x1  # the same payload as a text frame: not UTF-8
    layer.data_received(bytes(frame), 0.0)
    [close] = from_server(client, transport)
    assert close.code == 1007 and handler.ended[0][0] == 1007 and transport.closed


def test_an_end_without_a_close_is_1006_and_the_server_can_close_first() -> None:
    layer, handler, transport, _ = session()
    layer.eof_received(True, 0.0)
    assert handler.ended == [(1006, "")] and transport.closed
    layer, handler, transport, client = session()
    layer.close(1001, "going away")
    [close] = from_server(client, transport)
    assert close.code == 1001 and handler.ended == [(1001, "going away")]


def test_reading_pauses_and_what_was_received_waits() -> None:
    layer, handler, transport, client = session()
    layer.pause()
    assert not layer.reading
    layer.data_received(client.send(TextMessage("one")) + client.send(TextMessage("two")), 0.0)
    assert handler.messages == ["one"]  # the one being read; the next waits in wsproto
    layer.resume()
    assert handler.messages == ["one", "two"] and layer.reading and transport.synced == 1


def test_a_handshake_is_checked() -> None:
    def upgrade(*headers: tuple[bytes, bytes], method: str = "GET") -> Handshake | Response:
        return Handshake.check(request(method, "/ws", [(b"host", b"h"), *headers]))

    key = (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")  # RFC 6455's example
    version = (b"sec-websocket-version", b"13")
    handshake = upgrade(key, version, (b"sec-websocket-protocol", b"chat, superchat"))
    assert isinstance(handshake, Handshake) and handshake.subprotocols == ["chat", "superchat"]
    headers = dict(handshake.accept_headers("chat", [("x-extra", "1")]))
    assert headers[b"sec-websocket-accept"] == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
    assert headers[b"sec-websocket-protocol"] == b"chat" and headers["x-extra"] == "1"
    with pytest.raises(ValueError, match="not offered"):
        handshake.accept_headers("other")
    refused = upgrade(key, (b"sec-websocket-version", b"8"))
    assert isinstance(refused, Response) and refused.status == 426
    assert isinstance(upgrade(version), Response)  # no key
    assert isinstance(upgrade(key, version, method="POST"), Response)
