"""The built-in app and LineEcho, driven in memory through a real core connection."""

from __future__ import annotations

import json
from dataclasses import dataclass

import h11
import pytest
from memlink import PEER, MemLink, http_server, read_response

from spcore.app import STREAM_CHUNK, STREAM_MAX, LineEcho, builtin_app, stream_pattern
from spcore.config import Limits
from spcore.http.messages import App, Request
from spcore.listeners import stream_listener
from spcore.server import Server
from spcore.tls import ClientTLS, ServerTLS


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """An h11 client on one in-memory connection."""

    def __init__(self, server: Server, **link_options: object) -> None:
        self.link = MemLink(server, **link_options)  # type: ignore[arg-type]
        self.h11 = h11.Connection(h11.CLIENT)

    def send_head(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        request = h11.Request(method=method, target=target, headers=[("host", "test"), *headers])
        self.link.send(self.h11.send(request))

    def send_body(self, data: bytes, *, end: bool = True) -> None:
        if data:
            self.link.send(self.h11.send(h11.Data(data=data)))
        if end:
            self.link.send(self.h11.send(h11.EndOfMessage()))

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        headers = list(headers or [])
        framed = any(name in ("content-length", "transfer-encoding") for name, _ in headers)
        if body and not framed:
            headers.append(("content-length", str(len(body))))
        self.send_head(method, target, headers)
        self.send_body(body)
        return self.response()

    def response(self) -> Reply:
        self.h11.receive_data(self.link.take())
        _, head, body = read_response(self.h11)
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = {k.decode(): v.decode() for k, v in head.headers}
        return Reply(head.status_code, headers, body)


def builtin_server(**options: object) -> Server:
    """A server running the built-in app (which needs the server, hence the indirection)."""
    apps: list[App] = []
    server = http_server(lambda request: apps[0](request), **options)
    apps.append(builtin_app(server))
    server.info["driver"] = "memlink"
    return server


@pytest.fixture
def client(http_codec: str) -> Client:
    return Client(builtin_server(http=http_codec))


def expected_pattern(offset: int, size: int) -> bytes:
    return bytes((offset + i) % 251 for i in range(size))


# -- /hello, /, /stats -----------------------------------------------------------------------------


def test_hello_is_fixed_text(client: Client) -> None:
    reply = client.request("GET", "/hello")
    assert reply.status == 200
    assert reply.body == b"Hello, world!"
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.headers["content-length"] == "13"


@pytest.mark.parametrize(
    ("target", "accept"),
    [("/?format=json", None), ("/", "application/json"), ("/", "application/json; q=0.9")],
)
def test_index_gives_json_when_asked(client: Client, target: str, accept: str | None) -> None:
    headers = [("accept", accept)] if accept else []
    reply = client.request("GET", target, headers)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    info = json.loads(reply.body)
    assert info["driver"] == "memlink"
    assert info["scheme"] == "http"
    assert info["tls"] is None
    assert info["client"] == list(PEER)


@pytest.mark.parametrize("accept", [None, "*/*", "text/html,application/json"])
def test_index_is_html_otherwise(client: Client, accept: str | None) -> None:
    reply = client.request("GET", "/", [("accept", accept)] if accept else [])
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert b"<td>memlink</td>" in reply.body
    assert b"127.0.0.1 port 50000" in reply.body


def test_index_escapes_what_it_shows(http_codec: str) -> None:
    server = builtin_server(http=http_codec)
    server.info["driver"] = "<script>&"
    reply = Client(server).request("GET", "/")
    assert b"<script>" not in reply.body
    assert b"&lt;script&gt;&amp;" in reply.body


def test_index_rejects_an_unknown_format(client: Client) -> None:
    reply = client.request("GET", "/?format=xml")
    assert reply.status == 400
    assert b"format must be html or json" in reply.body


def test_index_reports_the_tls_session(
    server_tls: ServerTLS, client_tls: ClientTLS, http_codec: str
) -> None:
    server = builtin_server(tls=server_tls, http=http_codec)
    client = Client(server, client=client_tls)
    info = json.loads(client.request("GET", "/?format=json").body)
    assert info["scheme"] == "https"
    assert info["tls"]["version"] == "TLSv1.3"
    assert info["tls"]["cipher"].startswith("TLS_")
    assert info["tls"]["alpn"] == "http/1.1"
    assert info["tls"]["server_name"] == "localhost"
    assert info["tls"]["client_certificate"] is False
    page = client.request("GET", "/").body
    assert b"<td>TLSv1.3</td>" in page
    assert b"<td>http/1.1</td>" in page


def test_stats_counts_and_names_the_driver(client: Client) -> None:
    client.request("GET", "/hello")
    stats = json.loads(client.request("GET", "/stats").body)
    assert stats["driver"] == "memlink"
    assert stats["requests"] == 2
    assert stats["connections_open"] == 1
    assert stats["connections_total"] == 1
    assert stats["bytes_received"] > 0


# -- /echo ---------------------------------------------------------------------------------------


def test_echo_returns_body_and_content_type(client: Client) -> None:
    reply = client.request("POST", "/echo", [("content-type", "text/x-test")], b"abc" * 1000)
    assert reply.status == 200
    assert reply.body == b"abc" * 1000
    assert reply.headers["content-type"] == "text/x-test"
    assert reply.headers["content-length"] == "3000"


def test_echo_of_a_chunked_body_is_chunked(client: Client) -> None:
    client.send_head("PUT", "/echo", [("transfer-encoding", "chunked")])
    client.send_body(b"first ", end=False)
    client.send_body(b"second")
    reply = client.response()
    assert reply.body == b"first second"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.headers["content-type"] == "application/octet-stream"


def test_echo_answers_a_body_framed_both_ways_with_400_and_closes(client: Client) -> None:
    """RFC 9112 §6.1: Content-Length beside chunked is the request-smuggling case; the
    tail hidden in the Content-Length-sized rest is never served as a request."""
    hidden = b"GET /stats HTTP/1.1\r\nHost: test\r\n\r\n"
    body = b"5\r\nhello\r\n0\r\n\r\n" + hidden
    head = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
    client.link.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    reply = client.response()
    assert reply.status == 400
    assert client.link.client_got_eof
    assert client.link.take() == b""  # nothing for the hidden request


def test_echo_of_a_malformed_chunk_size_gets_400(client: Client) -> None:
    client.link.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    reply = client.response()
    assert reply.status == 400
    assert b"chunk" in reply.body
    assert client.link.client_got_eof


def test_echo_gives_its_own_length_only_to_a_fixed_length_body() -> None:
    """(The core refuses a request framed both ways before any app sees it; the app does
    not count on that.)"""
    app = builtin_app(builtin_server())
    headers = [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]
    request = Request("POST", "/echo", headers, "1.1", client=None, server=None, tls=None)
    response = app(request)
    assert response is not None
    assert "content-length" not in dict(response.headers)  # type: ignore[arg-type]


def test_echo_streams_before_the_body_ends(client: Client) -> None:
    client.send_head("POST", "/echo", [("content-length", "10")])
    client.send_body(b"01234", end=False)
    client.h11.receive_data(client.link.take())
    head = client.h11.next_event()
    assert isinstance(head, h11.Response) and head.status_code == 200
    first = client.h11.next_event()
    assert isinstance(first, h11.Data) and first.data == b"01234"
    client.send_body(b"56789")
    client.h11.receive_data(client.link.take())
    rest = client.h11.next_event()
    assert isinstance(rest, h11.Data) and rest.data == b"56789"
    assert isinstance(client.h11.next_event(), h11.EndOfMessage)


def test_echo_of_a_large_body_in_small_pieces(http_codec: str) -> None:
    body = expected_pattern(0, 300_000)
    client = Client(builtin_server(http=http_codec), chunk=7000)
    assert client.request("POST", "/echo", body=body).body == body


# -- /stream -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 250, 251, STREAM_CHUNK, 3 * STREAM_CHUNK + 17])
def test_stream_sends_exactly_n_pattern_bytes(client: Client, n: int) -> None:
    reply = client.request("GET", f"/stream?n={n}")
    assert reply.status == 200
    assert reply.headers["content-length"] == str(n)
    assert reply.body == expected_pattern(0, n)


def test_stream_produces_64_kib_chunks() -> None:
    app = builtin_app(builtin_server())
    n = 2 * STREAM_CHUNK + 5
    request = Request("GET", f"/stream?n={n}", [], "1.1", client=None, server=None, tls=None)
    response = app(request)
    assert response is not None and not isinstance(response.body, (bytes, str))
    chunks = list(response.body)  # type: ignore[arg-type]
    assert [len(c) for c in chunks] == [STREAM_CHUNK, STREAM_CHUNK, 5]


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 0), (0, 10), (250, 3), (251, 251), (12345, 70_000), (7, 300_000), (10**12, 600)],
)
def test_stream_pattern_is_offset_mod_251(offset: int, size: int) -> None:
    assert stream_pattern(offset, size) == expected_pattern(offset, size)


def test_stream_head_of_the_largest_size_sends_no_body(client: Client) -> None:
    reply = client.request("HEAD", f"/stream?n={STREAM_MAX}")
    assert reply.status == 200
    assert reply.headers["content-length"] == str(STREAM_MAX)
    assert reply.body == b""


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?n=",
        "?n=abc",
        "?n=-1",
        "?n=%2B5",
        "?n=1e3",
        "?n=%205",
        f"?n={STREAM_MAX + 1}",
        "?n=" + "9" * 40,
    ],
)
def test_stream_rejects_a_bad_size(client: Client, query: str) -> None:
    reply = client.request("GET", "/stream" + query)
    assert reply.status == 400
    assert reply.body.startswith(b"400 Bad Request: ")
    assert b"n=BYTES" in reply.body or str(STREAM_MAX).encode() in reply.body


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/nope", "/hello/", "/echo/x", "//"])
def test_unknown_paths_are_404(client: Client, target: str) -> None:
    reply = client.request("GET", target)
    assert reply.status == 404
    assert reply.body.startswith(b"404 Not Found: nothing is served at this path")


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("POST", "/hello", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
        ("PUT", "/stream?n=1", "GET, HEAD"),
        ("GET", "/echo", "POST, PUT"),
    ],
)
def test_wrong_methods_are_405_with_allow(
    client: Client, method: str, target: str, allow: str
) -> None:
    reply = client.request(method, target)
    assert reply.status == 405
    assert reply.headers["allow"] == allow
    assert b"405 Method Not Allowed" in reply.body
    assert client.request("GET", "/hello").status == 200  # the connection is still usable


# -- LineEcho ------------------------------------------------------------------------------------


def echo_server(idle_timeout: float | None = 300.0) -> Server:
    listener = stream_listener(lambda: LineEcho(idle_timeout))
    server = Server([listener], Limits())
    server.start(1000.0, 1_700_000_000.0)
    return server


def test_line_echo_sends_each_line_back() -> None:
    link = MemLink(echo_server())
    link.send(b"hello\r\nworld\npart")
    assert link.take() == b"hello\r\nworld\r\n"
    link.send(b"ial\n")
    assert link.take() == b"partial\r\n"


def test_line_echo_quit_says_bye_and_closes() -> None:
    link = MemLink(echo_server())
    link.send(b"quit\r\n")
    assert link.take() == b"bye\r\n"
    assert link.client_got_eof


def test_line_echo_all_broadcasts_to_the_others() -> None:
    server = echo_server()
    alice, bob, carol = MemLink(server), MemLink(server), MemLink(server)
    alice.send(b"/all hi there\n")
    assert alice.take() == b"sent to 2\r\n"
    assert bob.take() == b"#%d: hi there\r\n" % alice.conn.id
    assert carol.take() == b"#%d: hi there\r\n" % alice.conn.id
    bob.send(b"quit\n")
    carol.send(b"/all bye\n")
    assert carol.take() == b"sent to 1\r\n"
    assert alice.take() == b"#%d: bye\r\n" % carol.conn.id


def test_line_echo_all_without_text_explains() -> None:
    server = echo_server()
    alice, bob = MemLink(server), MemLink(server)
    alice.send(b"/all\n/all   \n")
    assert alice.take() == b"usage: /all <text>\r\n" * 2
    assert bob.take() == b""


def test_line_echo_closes_an_idle_session() -> None:
    link = MemLink(echo_server(idle_timeout=5.0))
    link.advance(4.0)
    assert not link.client_got_eof
    link.advance(1.5)
    assert link.client_got_eof
