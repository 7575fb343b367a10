"""Tricky requests and the RFC 9112 / RFC 9110 decision each must get, from every codec.

One table, one test: each request goes through the whole server stack (in memory, plain),
delivered in one piece and one byte at a time, with each codec as a parameter. A row says
either which requests the application must see (and whether the connection stays open), or
which status refuses the request (after how many good ones) -- and both codecs must agree
with it. ``spcore.http.rules`` says why each decision is the one it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
import pytest
from memlink import MemLink, http_server, read_response

from spcore.http.messages import Request, Response, buffered

LIMITS = {"max_header_size": 1024, "max_url_length": 256, "max_body_size": 1000}


@dataclass(frozen=True)
class Seen:
    """A request as the application must see it."""

    method: str = "GET"
    target: str = "/"
    path: str | None = None  # None: the target's path
    query: str = ""
    version: str = "1.1"
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()  # among the request's headers


@dataclass(frozen=True)
class Served:
    """The application gets these requests, each answered 200."""

    requests: tuple[Seen, ...] = (Seen(),)
    keep_alive: bool = True
    interim: tuple[int, ...] = ()  # informational statuses before the first response


@dataclass(frozen=True)
class Refused:
    """``served`` good requests are answered, then ``status`` refuses the next; it closes."""

    status: int
    served: int = 0


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    outcome: Served | Refused
    eof: bool = False  # the client ends its side after sending
    marks: list[pytest.MarkDecorator] = field(default_factory=list)


HOST = b"Host: a\r\n"


def get(target: bytes = b"/", *headers: bytes, version: bytes = b"1.1", host: bool = True) -> bytes:
    line = b"GET " + target + b" HTTP/" + version + b"\r\n"
    return line + (HOST if host else b"") + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def post(body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    host = HOST if version == b"1.1" else b""
    head = b"POST / HTTP/" + version + b"\r\n" + host
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def chunked(body: bytes, *headers: bytes) -> bytes:
    return post(body, b"Transfer-Encoding: chunked", *headers)


def ok(**fields: object) -> Served:
    return Served((Seen(**fields),))  # type: ignore[arg-type]


def closing(**fields: object) -> Served:
    return Served((Seen(**fields),), keep_alive=False)  # type: ignore[arg-type]


SEEN_POST = Seen(method="POST", body=b"hello")
CHUNKS = b"5\r\nhello\r\n0\r\n\r\n"

CASES = [
    # -- the request line and its version (RFC 9112 §3) ------------------------------------
    Case("get", get(), ok()),
    Case("query", get(b"/a/b?x=1&y"), ok(target="/a/b?x=1&y", path="/a/b", query="x=1&y")),
    Case("percent-encoded", get(b"/a%20b"), ok(target="/a%20b")),
    Case("double-slash-path", get(b"//a/b"), ok(target="//a/b")),
    Case(
        "absolute-form",
        get(b"http://example.com/hello?x=1"),
        ok(target="http://example.com/hello?x=1", path="/hello", query="x=1"),
    ),
    Case(
        "absolute-form-https-port",
        get(b"https://a:8443/p"),
        ok(target="https://a:8443/p", path="/p"),
    ),
    Case("absolute-form-no-path", get(b"http://a"), ok(target="http://a", path="/")),
    Case("absolute-form-upper-scheme", get(b"HTTP://A/b"), ok(target="HTTP://A/b", path="/b")),
    Case("absolute-form-ftp", get(b"ftp://a/b"), Refused(400)),
    Case(
        "asterisk-options",
        b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n",
        ok(method="OPTIONS", target="*", path="*"),
    ),
    Case("asterisk-get", get(b"*"), Refused(400)),
    Case("not-origin-form", get(b"hello"), Refused(400)),
    Case("authority-form-get", get(b"a:80"), Refused(400)),
    Case("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Refused(501)),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Refused(400)),
    Case("version-2.0", get(version=b"2.0"), Refused(505)),
    Case("version-9.9", get(version=b"9.9"), Refused(505)),
    Case("version-0.9", get(version=b"0.9"), Refused(505)),
    Case("version-1.2-served-as-1.1", get(version=b"1.2"), ok(version="1.1")),
    Case("version-1.10", get(version=b"1.10"), Refused(400)),
    Case("version-lower-case", b"GET / http/1.1\r\n" + HOST + b"\r\n", Refused(400)),
    Case("no-version", b"GET /\r\n" + HOST + b"\r\n", Refused(505)),
    Case("space-after-version", b"GET / HTTP/1.1 \r\n" + HOST + b"\r\n", Refused(400)),
    Case("two-spaces-before-target", b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n", ok()),
    Case("two-spaces-after-target", b"GET /x  HTTP/1.1\r\n" + HOST + b"\r\n", ok(target="/x")),
    Case("tab-separator", b"GET\t/ HTTP/1.1\r\n" + HOST + b"\r\n", Refused(400)),
    Case("leading-space", b" GET / HTTP/1.1\r\n" + HOST + b"\r\n", Refused(400)),
    Case("method-lower-case", b"get / HTTP/1.1\r\n" + HOST + b"\r\n", Refused(400)),
    Case("method-unknown", b"FOO / HTTP/1.1\r\n" + HOST + b"\r\n", Refused(400)),
    Case("method-not-a-token", b"G@T / HTTP/1.1\r\n" + HOST + b"\r\n", Refused(400)),
    Case("method-webdav", b"PROPFIND / HTTP/1.1\r\n" + HOST + b"\r\n", ok(method="PROPFIND")),
    Case("method-m-search", b"M-SEARCH / HTTP/1.1\r\n" + HOST + b"\r\n", ok(method="M-SEARCH")),
    Case("empty-line-first", b"\r\n" + get(), ok()),
    Case("empty-lines-first", b"\r\n\r\n\r\n" + get(), ok()),
    Case("bare-lf-first", b"\n" + get(), ok()),
    Case("bare-lf-line-ends", b"GET / HTTP/1.1\nHost: a\n\n", Refused(400)),
    Case("bare-cr-in-head", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Refused(400)),
    Case("nul-in-target", get(b"/a\x00b"), Refused(400)),
    Case("del-in-target", get(b"/a\x7fb"), Refused(400)),
    Case("obs-text-in-target", get(b"/a\xffb"), Refused(400)),
    Case("control-in-target", get(b"/a\x01b"), Refused(400)),
    Case("tab-in-target", get(b"/a\tb"), Refused(400)),
    Case("target-at-the-limit", get(b"/" + b"a" * 255), ok(target="/" + "a" * 255)),
    Case("target-over-the-limit", get(b"/" + b"a" * 256), Refused(414)),
    Case("endless-request-line", b"GET /" + b"a" * 2000, Refused(414)),
    # -- header fields (RFC 9112 §5, RFC 9110 §5.5) ----------------------------------------
    Case("no-host", get(host=False), Refused(400)),
    Case("no-host-http-1.0", get(version=b"1.0", host=False), closing(version="1.0")),
    Case("two-hosts", get(b"/", b"Host: b"), Refused(400)),
    Case("host-a-b", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Refused(400)),
    Case("host-path-userinfo", b"GET / HTTP/1.1\r\nHost: x/y@z\r\n\r\n", Refused(400)),
    Case("host-bad-port", b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", Refused(400)),
    Case("host-empty", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", ok(headers=((b"host", b""),))),
    Case(
        "host-ipv6",
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        ok(headers=((b"host", b"[::1]:8080"),)),
    ),
    Case(
        "host-port", b"GET / HTTP/1.1\r\nHost: a:8080\r\n\r\n", ok(headers=((b"host", b"a:8080"),))
    ),
    Case("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Refused(400)),
    Case("tab-before-colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", Refused(400)),
    Case("obs-fold", get(b"/", b"X: a", b" b"), Refused(400)),
    Case("obs-fold-tab", get(b"/", b"X: a", b"\tb"), Refused(400)),
    Case("fold-first", b"GET / HTTP/1.1\r\n x: a\r\nHost: a\r\n\r\n", Refused(400)),
    Case("nul-in-value", get(b"/", b"X: a\x00b"), Refused(400)),
    Case("control-in-value", get(b"/", b"X: a\x01b"), Refused(400)),
    Case("del-in-value", get(b"/", b"X: a\x7fb"), Refused(400)),
    Case("vt-in-value", get(b"/", b"X: a\x0bb"), Refused(400)),
    Case("obs-text-in-value", get(b"/", b"X: a\xffb"), ok(headers=((b"x", b"a\xffb"),))),
    Case("non-token-name", get(b"/", b"X-\xc3\xa9: b"), Refused(400)),
    Case("empty-name", get(b"/", b": b"), Refused(400)),
    Case("nul-in-name", get(b"/", b"X\x00: b"), Refused(400)),
    Case("outer-whitespace-stripped", get(b"/", b"X: \t a b \t"), ok(headers=((b"x", b"a b"),))),
    Case(
        "names-lower-cased", get(b"/", b"X-Mixed-Case: v"), ok(headers=((b"x-mixed-case", b"v"),))
    ),
    Case(
        "head-too-large",
        get(b"/", *[b"X-%d: %s" % (i, b"v" * 40) for i in range(30)]),
        Refused(431),
    ),
    Case("header-line-endless", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 2000, Refused(431)),
    Case(
        "head-under-the-limit",
        get(b"/", b"X: " + b"v" * 900),
        ok(headers=((b"x", b"v" * 900),)),
    ),
    # -- the body and its framing (RFC 9112 §6, §7) ----------------------------------------
    Case("content-length", post(b"hello", b"Content-Length: 5"), Served((SEEN_POST,))),
    Case("content-length-zero", post(b"", b"Content-Length: 0"), ok(method="POST")),
    Case(
        "content-length-leading-zeros", post(b"hello", b"Content-Length: 005"), Served((SEEN_POST,))
    ),
    Case("content-length-plus", post(b"hello", b"Content-Length: +5"), Refused(400)),
    Case("content-length-minus", post(b"hello", b"Content-Length: -1"), Refused(400)),
    Case("content-length-list", post(b"hello", b"Content-Length: 5, 5"), Refused(400)),
    Case(
        "content-length-twice",
        post(b"hello", b"Content-Length: 5", b"Content-Length: 5"),
        Refused(400),
    ),
    Case(
        "content-length-conflict",
        post(b"hello", b"Content-Length: 5", b"Content-Length: 6"),
        Refused(400),
    ),
    Case("content-length-hex", post(b"hello", b"Content-Length: 0x5"), Refused(400)),
    Case("content-length-empty", post(b"hello", b"Content-Length:"), Refused(400)),
    Case(
        "content-length-overflow",
        post(b"hello", b"Content-Length: 99999999999999999999999"),
        Refused(400),
    ),
    Case(
        "content-length-largest",
        post(b"x", b"Content-Length: 18446744073709551615"),
        Refused(413),
    ),
    Case("content-length-over-the-limit", post(b"x", b"Content-Length: 1001"), Refused(413)),
    Case("content-length-and-chunked", chunked(CHUNKS, b"Content-Length: 5"), Refused(400)),
    Case("chunked", chunked(CHUNKS), Served((SEEN_POST,))),
    Case("chunked-capitalised", post(CHUNKS, b"Transfer-Encoding: Chunked"), Served((SEEN_POST,))),
    Case("coding-gzip", post(b"", b"Transfer-Encoding: gzip"), Refused(400)),
    Case(
        "coding-gzip-then-chunked", post(CHUNKS, b"Transfer-Encoding: gzip, chunked"), Refused(501)
    ),
    Case("chunked-chunked", post(CHUNKS, b"Transfer-Encoding: chunked, chunked"), Refused(400)),
    Case(
        "transfer-encoding-twice",
        post(CHUNKS, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        Refused(400),
    ),
    Case("coding-identity", post(b"", b"Transfer-Encoding: identity"), Refused(400)),
    Case(
        "chunked-on-http-1.0",
        post(CHUNKS, b"Transfer-Encoding: chunked", version=b"1.0"),
        Refused(400),
    ),
    Case("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-size-plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-size-minus", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-size-overflow", chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case(
        "chunk-size-leading-zeros",
        chunked(b"0000000000000000005\r\nhello\r\n0\r\n\r\n"),
        Served((SEEN_POST,)),
    ),
    Case("chunk-size-space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-ext", chunked(b"5;a=b;c\r\nhello\r\n0\r\n\r\n"), Served((SEEN_POST,))),
    Case("chunk-ext-quoted", chunked(b'5;a="x y"\r\nhello\r\n0\r\n\r\n'), Served((SEEN_POST,))),
    Case("chunk-ext-space", chunked(b"5 ;a\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-size-bare-lf", chunked(b"5\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-ext-bare-cr", chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-ext-nul", chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n"), Refused(400)),
    Case("chunk-data-no-crlf", chunked(b"5\r\nhelloX0\r\n\r\n"), Refused(400)),
    Case("chunk-data-bare-lf", chunked(b"5\r\nhello\n0\r\n\r\n"), Refused(400)),
    Case("chunk-data-bare-cr", chunked(b"5\r\nhello\r0\r\n\r\n"), Refused(400)),
    Case("last-chunk-bare-lf", chunked(b"5\r\nhello\r\n0\n\r\n"), Refused(400)),
    Case("trailer", chunked(b"5\r\nhello\r\n0\r\nX-T: t\r\n\r\n"), Served((SEEN_POST,))),
    Case("trailer-control", chunked(b"5\r\nhello\r\n0\r\nX-T: \x01\r\n\r\n"), Refused(400)),
    Case("trailer-bare-cr", chunked(b"5\r\nhello\r\n0\r\n\r\r\n"), Refused(400)),
    Case(
        "chunked-over-the-limit", chunked(b"3e9\r\n" + b"x" * 1001 + b"\r\n0\r\n\r\n"), Refused(413)
    ),
    Case("chunked-cut-short", chunked(b"5\r\nhello\r\n0\r\n"), Refused(400), eof=True),
    Case("body-cut-short", post(b"hel", b"Content-Length: 5"), Refused(400), eof=True),
    Case("head-cut-short", b"GET / HTTP/1.1\r\nHo", Refused(400), eof=True),
    Case("request-line-cut-short", b"GET / HT", Refused(400), eof=True),
    # -- connections: keep-alive, pipelining, 100-continue, Upgrade (RFC 9112 §9) ----------
    Case("http-1.0-closes", get(version=b"1.0"), closing(version="1.0")),
    Case(
        "http-1.0-keep-alive-closes",
        get(b"/", b"Connection: keep-alive", version=b"1.0"),
        closing(version="1.0"),
    ),
    Case("connection-close", get(b"/", b"Connection: close"), closing()),
    Case("connection-close-in-a-list", get(b"/", b"Connection: foo, Close"), closing()),
    Case("pipelined", get(b"/1") + get(b"/2"), Served((Seen(target="/1"), Seen(target="/2")))),
    Case(
        "pipelined-after-a-body",
        post(b"hello", b"Content-Length: 5") + get(b"/2"),
        Served((SEEN_POST, Seen(target="/2"))),
    ),
    Case(
        "pipelined-after-chunks",
        chunked(CHUNKS) + get(b"/2"),
        Served((SEEN_POST, Seen(target="/2"))),
    ),
    Case(
        "pipelined-after-an-empty-line",
        post(b"hello", b"Content-Length: 5") + b"\r\n" + get(b"/2"),
        Served((SEEN_POST, Seen(target="/2"))),
    ),
    Case(
        "pipelined-after-a-closing-request",
        get(b"/1", b"Connection: close") + get(b"/2"),
        Served((Seen(target="/1"),), keep_alive=False),
    ),
    Case(
        "pipelined-bad-after-good", get(b"/1") + b"G@T / HTTP/1.1\r\n\r\n", Refused(400, served=1)
    ),
    Case(
        "smuggled-by-content-length-and-chunked",
        chunked(b"0\r\n\r\n" + get(b"/smuggled"), b"Content-Length: 40"),
        Refused(400),
    ),
    Case(
        "expect-100-continue",
        post(b"hello", b"Content-Length: 5", b"Expect: 100-continue"),
        Served((SEEN_POST,), interim=(100,)),
    ),
    Case(
        "expect-100-continue-on-http-1.0",
        post(b"hello", b"Content-Length: 5", b"Expect: 100-continue", version=b"1.0"),
        Served((Seen(method="POST", body=b"hello", version="1.0"),), keep_alive=False),
    ),
    Case(
        "upgrade-declined",
        get(b"/ws", b"Connection: Upgrade", b"Upgrade: websocket") + get(b"/2"),
        Served((Seen(target="/ws"), Seen(target="/2"))),
    ),
    Case(
        "upgrade-with-a-body-declined",
        post(b"hello", b"Content-Length: 5", b"Connection: Upgrade", b"Upgrade: h2c") + get(b"/2"),
        Served((SEEN_POST, Seen(target="/2"))),
    ),
    Case(
        "upgrade-with-chunks-declined",
        chunked(CHUNKS, b"Connection: Upgrade", b"Upgrade: h2c") + get(b"/2"),
        Served((SEEN_POST, Seen(target="/2"))),
    ),
]


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    assert len(CASES) >= 80
    assert len({case.id for case in CASES}) == len(CASES)


def _record(seen: list[Request], bodies: list[bytes]) -> object:
    def app(request: Request, body: bytes) -> Response:
        seen.append(request)
        bodies.append(body)
        return Response(200, [], b"ok")

    return buffered(app)


def _responses(data: bytes, count: int) -> list[tuple[list[int], int]]:
    """(informational statuses, status) of ``count`` responses, and nothing after them."""
    replies = []
    for _ in range(count):
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        client.send(h11.EndOfMessage())
        client.receive_data(data)
        informational, head, _body = read_response(client)
        replies.append((informational, head.status_code))
        data = client.trailing_data[0]
    assert data == b"", f"more after {count} responses: {data[:200]!r}"
    return replies


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_request(case: Case, chunk: int | None, http_codec: str) -> None:
    seen: list[Request] = []
    bodies: list[bytes] = []
    server = http_server(_record(seen, bodies), http=http_codec, **LIMITS)
    link = MemLink(server, chunk=chunk)
    link.send(case.data)
    if case.eof:
        link.client_close()
    outcome = case.outcome
    if isinstance(outcome, Refused):
        replies = _responses(link.take(), outcome.served + 1)
        assert [status for _, status in replies] == [200] * outcome.served + [outcome.status]
        assert len(seen) == outcome.served
        assert link.client_got_eof, "a refused request closes the connection"
        return
    replies = _responses(link.take(), len(outcome.requests))
    assert [status for _, status in replies] == [200] * len(outcome.requests)
    assert tuple(replies[0][0]) == outcome.interim
    assert len(seen) == len(outcome.requests)
    for request, body, expected in zip(seen, bodies, outcome.requests, strict=True):
        path = expected.target.partition("?")[0] if expected.path is None else expected.path
        assert (request.method, request.target, request.path, request.query) == (
            expected.method,
            expected.target,
            path,
            expected.query,
        )
        assert (request.http_version, body) == (expected.version, expected.body)
        for header in expected.headers:
            assert header in request.headers
    assert link.client_got_eof is not outcome.keep_alive
