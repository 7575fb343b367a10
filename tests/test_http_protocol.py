"""The HTTP/1.1 layer, end to end in memory: the server stack driven by ``MemLink``.

Responses are checked with h11 in the CLIENT role, so framing mistakes (a body on HEAD, a
wrong Content-Length, a response glued to the next one) fail the parse rather than slip past
a string compare. Most behaviour is checked over plaintext and TLS, with the transport moving
whole buffers or one byte at a time.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
import pytest
from memlink import MemLink, http_server, read_response

from spcore.actions import Sync
from spcore.config import KiB, MiB
from spcore.errors import LocalProtocolError
from spcore.http.messages import App, Pipe, Request, Response, blocking, buffered
from spcore.http.protocol import HTTPProtocol
from spcore.layer import ProtocolLayer
from spcore.server import Listener, Server
from spcore.tls import ClientTLS, ServerTLS

# --- a parsing client ---------------------------------------------------------------------------


@dataclass
class Reply:
    """One response as h11 parsed it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    informational: list[int] = field(default_factory=list)

    def all(self, name: str) -> list[bytes]:
        key = name.lower().encode("ascii")
        return [value for key_, value in self.headers if key_ == key]

    def header(self, name: str) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None


def parse_replies(data: bytes, methods: Sequence[str], *, eof: bool = False) -> list[Reply]:
    """Exactly one complete response per request method in ``methods``, nothing left over."""
    replies = []
    for method in methods:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        client.send(h11.EndOfMessage())
        client.receive_data(data)
        if eof:
            client.receive_data(b"")
        informational, head, body = read_response(client)
        reply = Reply(head.status_code, list(head.headers), body, informational)
        replies.append(reply)
        data = client.trailing_data[0]
    assert data == b"", f"unexpected output after the responses: {data[:200]!r}"
    return replies


def parse_one(data: bytes, method: str = "GET", *, eof: bool = False) -> Reply:
    return parse_replies(data, (method,), eof=eof)[0]


def parse_partial(data: bytes) -> Reply:
    """The head and the body so far of a response still streaming."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "test")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    reply: Reply | None = None
    body = bytearray()
    while (event := client.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Response):
            reply = Reply(event.status_code, list(event.headers))
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            raise AssertionError(f"{event!r} while the response should still stream")
    assert reply is not None
    reply.body = bytes(body)
    return reply


def request(
    method: str = "GET",
    target: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if version == "1.1":
        lines.append("Host: test")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


def run_jobs(link: MemLink) -> int:
    """Play the driver's worker pool by hand (for links built with ``run_jobs=False``)."""
    jobs = link.take_jobs()
    for job in jobs:
        job.run()
        link.conn.job_done(job, link.clock.now)
    link.pump()
    return len(jobs)


def protocol(link: MemLink) -> HTTPProtocol:
    proto = link.conn.protocol
    assert isinstance(proto, HTTPProtocol)
    return proto


# --- applications -------------------------------------------------------------------------------


def hello(req: Request) -> Response:
    return Response(200, [], f"{req.method} {req.target}".encode())


def echo(req: Request, body: bytes) -> Response:
    return Response(200, [("x-length", str(len(body)))], body)


def raises(req: Request) -> Response:
    raise ValueError("app bug")


class Probe:
    """A response body iterable that records how far it was pulled and whether it was closed."""

    def __init__(self, chunks: int, size: int = 10, *, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.size = size
        self.fail_at = fail_at
        self.position = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.position == self.fail_at:
            raise RuntimeError("body source broke")
        if self.position >= self.chunks:
            raise StopIteration
        self.position += 1
        return b"%d" % (self.position % 10) * self.size

    def close(self) -> None:
        self.closed = True


# --- transports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transport:
    tls: bool
    chunk: int | None

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'plain'}-{'whole' if self.chunk is None else 'bytewise'}"


PLAIN = Transport(tls=False, chunk=None)
BYTEWISE = Transport(tls=False, chunk=1)
TLS = Transport(tls=True, chunk=None)
TLS_BYTEWISE = Transport(tls=True, chunk=1)

Connect = Callable[..., MemLink]


@pytest.fixture(scope="module")
def tls_contexts(server_tls: ServerTLS, client_tls: ClientTLS) -> tuple[ServerTLS, ClientTLS]:
    return server_tls, client_tls


def _connector(transport: Transport, contexts: tuple[ServerTLS, ClientTLS], codec: str) -> Connect:
    def connect(
        app: Callable[[Request], Response | None],
        *,
        run_jobs: bool = True,
        chunk: int | str | None = "transport",
        **limits: Any,
    ) -> MemLink:
        tls = contexts[0] if transport.tls else None
        server = http_server(app, tls=tls, http=codec, **limits)
        return MemLink(
            server,
            client=contexts[1] if transport.tls else None,
            chunk=transport.chunk if chunk == "transport" else chunk,  # type: ignore[arg-type]
            run_jobs=run_jobs,
        )

    return connect


@pytest.fixture(params=[PLAIN, BYTEWISE, TLS, TLS_BYTEWISE], ids=str)
def connect(request: pytest.FixtureRequest, tls_contexts: Any, http_codec: str) -> Connect:
    """Every codec and transport: plain and TLS, whole buffers and one byte at a time."""
    return _connector(request.param, tls_contexts, http_codec)


@pytest.fixture(params=[PLAIN, BYTEWISE], ids=str)
def connect_plain(request: pytest.FixtureRequest, tls_contexts: Any, http_codec: str) -> Connect:
    return _connector(request.param, tls_contexts, http_codec)


@pytest.fixture(params=[PLAIN, TLS], ids=str)
def connect_whole(request: pytest.FixtureRequest, tls_contexts: Any, http_codec: str) -> Connect:
    """Plain and TLS in whole buffers, for the tests that move megabytes."""
    return _connector(request.param, tls_contexts, http_codec)


@pytest.fixture(autouse=True)
def _no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing any test does may reach the connection's catch-all."""
    caplog.set_level(logging.INFO, logger="spcore")
    yield
    internal = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert internal == []


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


#: "413 Content Too Large: the request body exceeds 1000 bytes\n"
REASON_LINE = re.compile(rb"\d{3} [A-Za-z' -]+: [^\r\n]{10,}\n")


def assert_closed_with(link: MemLink, reply: Reply, status: int, reason: bytes) -> None:
    """An error answer: the status, a reason sentence in the body, and the connection closed."""
    assert reply.status == status
    assert REASON_LINE.fullmatch(reply.body), reply.body
    assert reply.body.startswith(b"%d " % status)
    assert reason in reply.body
    assert reply.header("connection") == b"close"
    assert link.client_got_eof


# --- connection reuse ---------------------------------------------------------------------------


class TestConnectionReuse:
    def test_keep_alive_serves_several_requests_on_one_connection(self, connect: Connect) -> None:
        link = connect(hello)
        for path in ("/one", "/two", "/three"):
            link.send(request(target=path))
            reply = parse_one(link.take())
            assert reply.status == 200
            assert reply.body == f"GET {path}".encode()
            assert reply.header("connection") is None
            assert not link.client_got_eof
        assert link.server.stats.connections_total == 1
        assert link.server.stats.requests == 3

    def test_pipelined_requests_are_answered_in_order(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(b"".join(request(target=f"/{n}") for n in range(3)))
        replies = parse_replies(link.take(), ["GET"] * 3)
        assert [r.body for r in replies] == [b"GET /0", b"GET /1", b"GET /2"]
        assert not link.client_got_eof

    def test_pipelined_requests_with_bodies_in_order(self, connect: Connect) -> None:
        link = connect(buffered(echo))
        link.send(
            request("POST", "/", [("Content-Length", "3")], b"abc")
            + request("POST", "/", [("Transfer-Encoding", "chunked")], chunked(b"de", b"f"))
            + request(target="/last")
        )
        replies = parse_replies(link.take(), ["POST", "POST", "GET"])
        assert [r.body for r in replies] == [b"abc", b"def", b""]

    def test_http_1_0_closes_after_the_response(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(request(version="1.0"))
        reply = parse_one(link.take(), eof=link.client_got_eof)
        assert reply.body == b"GET /"
        assert link.client_got_eof

    def test_http_1_0_streamed_body_is_delimited_by_close(self, connect: Connect) -> None:
        probe = Probe(3)
        link = connect(lambda req: Response(200, [], probe))
        link.send(request(version="1.0"))
        data = link.take()
        assert link.client_got_eof
        reply = parse_one(data, eof=True)
        assert reply.header("transfer-encoding") is None
        assert reply.body == b"1" * 10 + b"2" * 10 + b"3" * 10
        assert probe.closed

    def test_connection_close_is_honoured(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(request(headers=[("Connection", "close")]))
        reply = parse_one(link.take())
        assert reply.header("connection") == b"close"
        assert link.client_got_eof

    def test_bytes_after_a_closing_request_do_not_break_its_streamed_response(
        self, connect_whole: Connect
    ) -> None:
        probe = Probe(50, 10 * KiB)  # more than the high-water mark: it streams across calls
        link = connect_whole(lambda req: Response(200, [], probe))
        link.window = 0
        link.send(request(headers=[("Connection", "close")]) + b"GET /next HTTP/1.1\r\n\r\n")
        link.let_client_read(None)
        reply = parse_one(link.take())
        assert len(reply.body) == 500 * KiB
        assert link.client_got_eof

    def test_half_closed_client_still_gets_its_response(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(request())
        link.client_close(notify=False)
        reply = parse_one(link.take())
        assert reply.body == b"GET /"
        assert link.closed


# --- Expect: 100-continue -----------------------------------------------------------------------


class TestExpectContinue:
    HEAD = request("POST", "/", [("Content-Length", "5"), ("Expect", "100-continue")])

    def test_100_is_sent_when_the_app_reads_the_body(self, connect: Connect) -> None:
        link = connect(buffered(echo))
        link.send(self.HEAD)
        interim = link.take()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        link.send(b"hello")
        reply = parse_one(interim + link.take())
        assert reply.informational == [100]
        assert (reply.status, reply.body) == (200, b"hello")
        assert not link.client_got_eof

    def test_100_waits_for_a_blocking_app_to_ask_for_the_body(self, connect: Connect) -> None:
        link = connect(blocking(buffered(echo)), run_jobs=False)
        link.send(self.HEAD)
        assert link.take() == b""  # the app has not run yet
        assert run_jobs(link) == 1
        assert link.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        link.send(b"hello")
        while run_jobs(link):
            pass
        assert parse_one(link.take()).body == b"hello"

    def test_app_answering_without_reading_gets_no_100_and_closes(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(self.HEAD)
        reply = parse_one(link.take())
        assert reply.informational == []
        assert reply.status == 200
        assert reply.header("connection") == b"close"
        assert link.client_got_eof

    def test_too_large_body_gets_413_at_once_without_100(self, connect: Connect) -> None:
        link = connect(buffered(echo), max_body_size=4)
        link.send(self.HEAD)
        reply = parse_one(link.take())
        assert reply.informational == []
        assert_closed_with(link, reply, 413, b"exceeds 4 bytes")


# --- request bodies -----------------------------------------------------------------------------


class Counting:
    """A BodyReader that counts, and watches how much the stack holds while it reads."""

    def __init__(self) -> None:
        self.link: MemLink | None = None
        self.calls = 0
        self.size = 0
        self.peak_output = 0
        self.peak_buffered = 0

    def data(self, chunk: bytes) -> None:
        assert self.link is not None
        self.calls += 1
        self.size += len(chunk)
        self.peak_output = max(self.peak_output, self.link.conn.output_size)
        self.peak_buffered = max(self.peak_buffered, protocol(self.link).buffered)

    def end(self) -> Response:
        return Response(200, [], b"%d in %d" % (self.size, self.calls))


class TestRequestBodies:
    @pytest.mark.parametrize("framing", ["length", "chunked"])
    def test_body_reaches_the_reader_in_pieces(self, connect: Connect, framing: str) -> None:
        counting = Counting()
        link = connect(lambda req: req.read_body(counting), chunk=4)
        counting.link = link
        pieces = [bytes(range(30)), b"\x1e", bytes(range(31, 100))]
        if framing == "length":
            link.send(request("PUT", "/", [("Content-Length", "100")]))
            for piece in pieces:  # separate sends: separate TLS records too
                link.send(piece)
        else:
            link.send(request("PUT", "/", [("Transfer-Encoding", "chunked")]))
            for piece in pieces:
                link.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            link.send(b"0\r\n\r\n")
        reply = parse_one(link.take())
        assert reply.body.startswith(b"100 in ")
        assert counting.calls > 1

    @pytest.mark.parametrize("framing", ["length", "chunked"])
    def test_a_mebibyte_streams_through_without_being_held(
        self, connect_whole: Connect, framing: str
    ) -> None:
        counting = Counting()
        link = connect_whole(lambda req: req.read_body(counting), chunk=16 * KiB)
        counting.link = link
        body = b"x" * MiB
        if framing == "length":
            link.send(request("PUT", "/", [("Content-Length", str(MiB))], body))
        else:
            pieces = [body[i : i + 100 * KiB] for i in range(0, MiB, 100 * KiB)]
            link.send(request("PUT", "/", [("Transfer-Encoding", "chunked")], chunked(*pieces)))
        reply = parse_one(link.take())
        assert reply.body.startswith(b"%d in " % MiB)
        assert counting.size == MiB
        assert counting.calls >= 32
        assert counting.peak_buffered <= 32 * KiB
        assert counting.peak_output <= 1 * KiB

    def test_buffered_app_gets_the_whole_body(self, connect: Connect) -> None:
        seen: list[bytes] = []

        def app(req: Request, body: bytes) -> Response:
            seen.append(body)
            return Response(201, [], b"ok")

        link = connect(buffered(app))
        body = b"0123456789" * 30
        link.send(
            request("POST", "/", [("Transfer-Encoding", "chunked")], chunked(body[:7], body[7:]))
        )
        assert parse_one(link.take()).status == 201
        assert seen == [body]

    def test_unread_small_body_is_drained_and_the_connection_kept(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(request("POST", "/a", [("Content-Length", "10")], b"0123456789") + request())
        replies = parse_replies(link.take(), ["POST", "GET"])
        assert [r.body for r in replies] == [b"POST /a", b"GET /"]
        assert not link.client_got_eof

    def test_unread_large_body_closes_after_the_response(self, connect_whole: Connect) -> None:
        link = connect_whole(hello)
        link.send(request("POST", "/", [("Content-Length", str(MiB))]))
        reply = parse_one(link.take())
        assert reply.header("connection") == b"close"
        assert link.client_got_eof


# --- response bodies ----------------------------------------------------------------------------


class TestResponseBodies:
    def test_bytes_get_a_content_length(self, connect: Connect) -> None:
        link = connect(lambda req: Response(200, [("Content-Type", "x/y")], b"12345"))
        link.send(request())
        reply = parse_one(link.take())
        assert reply.header("content-length") == b"5"
        assert reply.header("content-type") == b"x/y"
        assert reply.body == b"12345"

    def test_text_is_utf8_with_a_text_plain_default(self, connect: Connect) -> None:
        link = connect(lambda req: Response(200, [], "héllo ✓"))
        link.send(request())
        reply = parse_one(link.take())
        assert reply.body.decode("utf-8") == "héllo ✓"
        assert reply.header("content-length") == str(len(reply.body)).encode()
        assert reply.header("content-type") == b"text/plain; charset=utf-8"

    def test_text_keeps_the_apps_content_type(self, connect_plain: Connect) -> None:
        link = connect_plain(lambda req: Response(200, {"Content-Type": "text/html"}, "<p>"))
        link.send(request())
        assert parse_one(link.take()).all("content-type") == [b"text/html"]

    def test_iterable_is_chunked(self, connect: Connect) -> None:
        probe = Probe(3)
        link = connect(lambda req: Response(200, [], probe))
        link.send(request() + request())  # the second proves the chunked framing ended
        replies = parse_replies(link.take(), ["GET", "GET"])
        assert replies[0].header("transfer-encoding") == b"chunked"
        assert replies[0].header("content-length") is None
        assert replies[0].body == b"1" * 10 + b"2" * 10 + b"3" * 10
        assert probe.closed

    def test_iterable_with_the_apps_content_length(self, connect: Connect) -> None:
        link = connect(lambda req: Response(200, [("Content-Length", "6")], iter([b"abc", b"def"])))
        link.send(request() + request())
        replies = parse_replies(link.take(), ["GET", "GET"])
        assert replies[0].header("content-length") == b"6"
        assert replies[0].header("transfer-encoding") is None
        assert replies[1].body == b"abcdef"

    def test_pipe_echoes_the_request_body_as_it_arrives(self, connect: Connect) -> None:
        def app(req: Request) -> Response:
            pipe = Pipe()
            req.read_body(pipe)
            return Response(200, [], pipe)

        link = connect(app)
        link.send(request("POST", "/", [("Transfer-Encoding", "chunked")]) + b"5\r\nfirst\r\n")
        partial = link.take()
        assert parse_partial(partial).body == b"first"  # streamed back before the body ended
        link.send(b"6\r\nsecond\r\n0\r\n\r\n")
        reply = parse_one(partial + link.take())
        assert reply.body == b"firstsecond"
        assert not link.client_got_eof

    def test_pipe_fed_from_outside_the_connection(self, connect: Connect) -> None:
        pipe = Pipe()
        link = connect(lambda req: Response(200, [], pipe))
        link.send(request())
        assert link.take().startswith(b"HTTP/1.1 200 ")
        pipe.write(b"late")
        pipe.close()
        link.pump()  # the driver syncs the woken connection
        assert link.take() == b"4\r\nlate\r\n0\r\n\r\n"


def test_a_handshake_larger_than_the_high_water_mark_completes(
    server_tls: ServerTLS, client_tls: ClientTLS, http_codec: str
) -> None:
    server = http_server(
        hello, tls=server_tls, http=http_codec, write_high_water=100, write_low_water=0
    )
    link = MemLink(server, client=client_tls)  # the certificate alone is over 100 bytes
    link.send(request())
    assert parse_one(link.take()).body == b"GET /"
    assert not link.closed


class TestStreamingBackPressure:
    CHUNK = 64 * KiB
    CHUNKS = 320  # 20 MiB

    def test_a_large_body_is_pulled_only_as_the_client_reads(self, connect_whole: Connect) -> None:
        probe = Probe(self.CHUNKS, self.CHUNK)
        link = connect_whole(lambda req: Response(200, [], probe))
        limits = link.conn.limits
        bound = limits.write_high_water + self.CHUNK + KiB  # one chunk plus its framing
        pulled_bound = limits.write_high_water // self.CHUNK + 1
        link.window = 0
        link.send(request())
        assert 0 < probe.position <= pulled_bound
        assert link.conn.output_size <= bound
        assert not link.conn.reading
        link.advance(1.0)  # time alone changes nothing
        assert probe.position <= pulled_bound

        link.let_client_read(MiB)
        assert probe.position <= MiB // self.CHUNK + pulled_bound + 1
        assert link.conn.output_size <= bound

        link.let_client_read(None)
        reply = parse_one(link.take())
        assert len(reply.body) == self.CHUNKS * self.CHUNK
        assert probe.position == self.CHUNKS
        assert probe.closed
        assert link.conn.reading

    def test_pipelined_requests_wait_while_the_client_does_not_read(
        self, connect_whole: Connect
    ) -> None:
        marks = {"write_high_water": 8 * KiB, "write_low_water": 2 * KiB}
        link = connect_whole(lambda req: Response(200, [], req.path.encode() * 100), **marks)
        link.window = 0
        link.send(b"".join(request(target=f"/{n:03}") for n in range(100)))
        assert link.conn.output_size <= 8 * KiB + 2 * KiB  # not 100 responses' worth
        assert link.server.stats.requests < 100
        link.let_client_read(None)
        replies = parse_replies(link.take(), ["GET"] * 100)
        assert [r.body[:4] for r in replies] == [b"/%03d" % n for n in range(100)]


# --- HEAD and bodiless statuses -----------------------------------------------------------------


class TestBodilessResponses:
    def test_head_has_the_get_length_and_no_body(self, connect: Connect) -> None:
        link = connect(lambda req: Response(200, [], b"0123456789"))
        link.send(request("HEAD") + request("GET"))
        head, get = parse_replies(link.take(), ["HEAD", "GET"])
        assert head.header("content-length") == b"10"
        assert head.body == b""
        assert get.body == b"0123456789"

    def test_head_does_not_iterate_a_streamed_body_and_closes_it(self, connect: Connect) -> None:
        probe = Probe(3)
        link = connect(lambda req: Response(200, [], probe))
        link.send(request("HEAD") + request("HEAD"))
        parse_replies(link.take(), ["HEAD", "HEAD"])
        assert probe.position == 0
        assert probe.closed

    @pytest.mark.parametrize("status", [204, 304])
    def test_no_body_statuses_carry_no_body(self, connect: Connect, status: int) -> None:
        probe = Probe(2)
        responses = [Response(status, [], b"ignored"), Response(status, [], probe)]
        responses.append(Response(200, [], b"after"))
        link = connect(lambda req: responses.pop(0))
        link.send(request() + request() + request("GET", "/after"))
        replies = parse_replies(link.take(), ["GET"] * 3)
        assert [r.status for r in replies] == [status, status, 200]
        assert replies[0].body == replies[1].body == b""
        assert replies[0].header("content-length") is None
        assert replies[2].body == b"after"
        assert probe.position == 0
        assert probe.closed

    @pytest.mark.parametrize(
        ("app", "target", "status"),
        [
            pytest.param(raises, "/", 500, id="app-exception"),
            pytest.param(lambda req: Response(99, [], b""), "/", 500, id="invalid-response"),
            pytest.param(hello, "/" + "a" * 200, 414, id="long-target"),
        ],
    )
    def test_errors_answer_head_with_a_head(
        self, connect: Connect, app: Any, target: str, status: int
    ) -> None:
        link = connect(app, max_url_length=100)
        link.send(request("HEAD", target))
        reply = parse_one(link.take(), "HEAD")
        assert (reply.status, reply.body) == (status, b"")  # h11 parsed it as a HEAD reply
        assert link.client_got_eof


# --- Date and Server ----------------------------------------------------------------------------


IMF_FIXDATE = re.compile(rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT")


class TestStandardHeaders:
    def test_date_and_server_are_added(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(request())
        reply = parse_one(link.take())
        # http_server starts the server with wall time 1_700_000_000 at driver time 1000.
        assert reply.all("date") == [b"Tue, 14 Nov 2023 22:13:20 GMT"]
        assert reply.all("server") == [b"spcore"]

    def test_date_follows_the_driver_clock(self, connect_plain: Connect) -> None:
        link = connect_plain(hello, idle_timeout=100.0)
        link.advance(61.5)
        link.send(request())
        date = parse_one(link.take()).header("date")
        assert date is not None and IMF_FIXDATE.fullmatch(date)
        parsed = email.utils.parsedate_to_datetime(date.decode())
        assert parsed.timestamp() == 1_700_000_000 + 61

    def test_apps_date_and_server_are_not_duplicated(self, connect: Connect) -> None:
        headers = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Server", "custom/1")]
        link = connect(lambda req: Response(200, headers, b""))
        link.send(request())
        reply = parse_one(link.take())
        assert reply.all("date") == [b"Mon, 01 Jan 2024 00:00:00 GMT"]
        assert reply.all("server") == [b"custom/1"]

    def test_error_responses_carry_them_too(self, connect_plain: Connect) -> None:
        link = connect_plain(hello)
        link.send(b"NOT A REQUEST\r\n\r\n")
        reply = parse_one(link.take())
        assert reply.status == 400
        assert reply.all("server") == [b"spcore"]
        assert reply.header("date") is not None


# --- limits -------------------------------------------------------------------------------------


class TestLimits:
    def test_header_block_just_under_the_limit_is_accepted(self, connect: Connect) -> None:
        link = connect(hello, max_header_size=1024)
        link.send(request(headers=[("X-Pad", "p" * 900)]))
        assert parse_one(link.take()).status == 200

    def test_header_block_too_large_in_one_piece_gets_431(self, connect: Connect) -> None:
        link = connect(hello, max_header_size=1024)
        link.send(request(headers=[("X-Pad", "p" * 2000)]))
        reply = parse_one(link.take())
        assert_closed_with(link, reply, 431, b"request head is larger")

    def test_header_block_too_large_gets_431_before_it_ends(self, connect: Connect) -> None:
        link = connect(hello, max_header_size=1024)
        link.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 1100)  # no end in sight
        reply = parse_one(link.take())
        assert_closed_with(link, reply, 431, b"request head is larger")

    def test_url_at_the_limit_is_accepted(self, connect: Connect) -> None:
        link = connect(hello, max_url_length=100)
        target = "/" + "u" * 99
        link.send(request(target=target))
        assert parse_one(link.take()).body == f"GET {target}".encode()

    def test_url_over_the_limit_gets_414(self, connect: Connect) -> None:
        link = connect(hello, max_url_length=100)
        link.send(request(target="/" + "u" * 100))
        assert_closed_with(link, parse_one(link.take()), 414, b"request target is longer")

    def test_endless_request_line_gets_414_without_waiting_for_its_end(
        self, connect: Connect
    ) -> None:
        link = connect(hello, max_url_length=100)
        link.send(b"GET /" + b"u" * 300)
        assert_closed_with(link, parse_one(link.take()), 414, b"request target is longer")

    def test_url_longer_than_the_header_limit_in_one_piece_gets_414(
        self, connect_whole: Connect
    ) -> None:
        link = connect_whole(hello)  # default limits: 8 KiB URL, 16 KiB head
        link.send(request(target="/" + "u" * 20 * KiB))
        assert_closed_with(link, parse_one(link.take()), 414, b"request target is longer")

    def test_pipelined_endless_request_line_gets_414(self, connect: Connect) -> None:
        link = connect(hello, max_url_length=100)
        link.send(request() + b"GET /" + b"u" * 300)
        first, second = parse_replies(link.take(), ["GET", "GET"])
        assert first.status == 200
        assert_closed_with(link, second, 414, b"request target is longer")

    def test_content_length_over_the_limit_gets_413(self, connect: Connect) -> None:
        link = connect(buffered(echo), max_body_size=1000)
        link.send(request("POST", "/", [("Content-Length", "1001")]))
        assert_closed_with(link, parse_one(link.take()), 413, b"exceeds 1000 bytes")

    def test_huge_content_length_gets_413(self, connect_plain: Connect) -> None:
        link = connect_plain(buffered(echo))
        link.send(request("POST", "/", [("Content-Length", "9" * 19)]))  # h11 allows 19 digits
        assert_closed_with(link, parse_one(link.take()), 413, b"exceeds")

    def test_body_at_the_limit_is_accepted(self, connect: Connect) -> None:
        link = connect(buffered(echo), max_body_size=1000)
        link.send(request("POST", "/", [("Transfer-Encoding", "chunked")], chunked(b"b" * 1000)))
        assert parse_one(link.take()).header("x-length") == b"1000"

    def test_chunked_body_over_the_limit_gets_413(self, connect: Connect) -> None:
        link = connect(buffered(echo), max_body_size=1000)
        head = request("POST", "/", [("Transfer-Encoding", "chunked")])
        link.send(head + b"258\r\n" + b"b" * 600 + b"\r\n")
        assert link.take() == b""
        link.send(b"258\r\n" + b"b" * 600 + b"\r\n")
        assert_closed_with(link, parse_one(link.take()), 413, b"exceeds 1000 bytes")


# --- malformed requests -------------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param(b"GET /marker-xyz HTTP/1.1 more\r\nHost: t\r\n\r\n", 400, id="request-line"),
    pytest.param(b"\x16\x03\x01marker-xyz\r\n\r\n", 400, id="binary"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: marker-xyz\r\n\r\n", 400, id="header"),
    pytest.param(b"GET / HTTP/1.1\r\n marker-xyz\r\nHost: t\r\n\r\n", 400, id="fold"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
        id="conflicting-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: marker-xyz\r\n\r\n", 400, id="bad-length"
    ),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400, id="gzip"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
        id="gzip-chunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nmarker-xyz\r\n",
        400,
        id="chunk-header",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabmarker-xyz\r\n",
        400,
        id="chunk-footer",
    ),
]


class TestMalformedRequests:
    @pytest.mark.parametrize(("data", "status"), BAD_REQUESTS)
    def test_h11_errors_get_the_right_status(
        self, connect: Connect, caplog: pytest.LogCaptureFixture, data: bytes, status: int
    ) -> None:
        link = connect(buffered(echo))
        link.send(data)
        reply = parse_one(link.take())
        assert_closed_with(link, reply, status, b"")
        assert len(reply.body.splitlines()) == 1  # one reason sentence
        assert b"marker" not in reply.body  # the peer's bytes are never reflected
        assert error_records(caplog) == []
        assert link.server.stats.errors == 1

    def test_a_bad_request_after_a_good_one(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(request() + b"BROKEN\r\n\r\n")
        good, bad = parse_replies(link.take(), ["GET", "GET"])
        assert good.status == 200
        assert bad.status == 400
        assert link.client_got_eof

    def test_eof_inside_a_head_gets_400(self, connect: Connect) -> None:
        link = connect(hello)
        link.send(b"GET / HT")
        link.client_close()  # TLS: close_notify first, so the server may still answer
        assert_closed_with(link, parse_one(link.take()), 400, b"closed")
        assert link.closed

    def test_ragged_tls_eof_inside_a_head_just_closes(self, connect_whole: Connect) -> None:
        link = connect_whole(hello)
        link.send(b"GET / HT")
        link.client_close(notify=False)  # TLS: the session dies with it, nothing can be sent
        assert link.closed
        data = link.take()
        if link.client is None:
            assert parse_one(data).status == 400  # plaintext can still answer
        else:
            assert data == b""

    def test_connect_gets_501_without_calling_the_app(self, connect: Connect) -> None:
        calls: list[Request] = []
        link = connect(lambda req: calls.append(req) or Response(200, [], b"tunnel"))
        link.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert_closed_with(link, parse_one(link.take()), 501, b"CONNECT")
        assert calls == []

    def test_upgrade_is_declined_and_the_connection_kept(self, connect: Connect) -> None:
        link = connect(hello)
        upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
        link.send(request(target="/ws", headers=upgrade) + request(target="/next"))
        replies = parse_replies(link.take(), ["GET", "GET"])
        assert [r.body for r in replies] == [b"GET /ws", b"GET /next"]
        assert not link.client_got_eof


# --- timeouts -----------------------------------------------------------------------------------


class TestTimeouts:
    LIMITS = {"idle_timeout": 5.0, "header_timeout": 10.0, "body_timeout": 20.0}

    def test_idle_keep_alive_connection_is_closed_quietly(self, connect: Connect) -> None:
        link = connect(hello, **self.LIMITS)
        link.send(request())
        parse_one(link.take())
        link.advance(4.9)
        assert not link.client_got_eof
        link.advance(0.2)
        assert link.client_got_eof
        assert link.take() == b""
        assert link.server.stats.timeouts == 0

    def test_silent_new_connection_is_closed_after_the_idle_timeout(self, connect: Connect) -> None:
        link = connect(hello, **self.LIMITS)
        link.advance(5.1)
        assert link.client_got_eof
        assert link.take() == b""

    def test_partial_head_gets_408(self, connect: Connect) -> None:
        link = connect(hello, **self.LIMITS)
        link.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        link.advance(9.9)
        assert link.take() == b""
        link.advance(0.2)
        assert_closed_with(link, parse_one(link.take()), 408, b"request head")
        assert link.server.stats.timeouts == 1

    def test_header_deadline_is_not_refreshed_by_a_trickle(self, connect: Connect) -> None:
        link = connect(hello, **self.LIMITS)
        for byte in b"GET / HTTP/1.1\r\n":
            link.send(bytes([byte]))
            link.advance(1.0)
        assert_closed_with(link, parse_one(link.take()), 408, b"request head")

    def test_stalled_body_gets_408(self, connect: Connect) -> None:
        link = connect(buffered(echo), **self.LIMITS)
        link.send(request("POST", "/", [("Content-Length", "10")], b"abc"))
        link.advance(19.9)
        assert link.take() == b""
        link.advance(0.2)
        assert_closed_with(link, parse_one(link.take()), 408, b"body")

    def test_body_progress_refreshes_the_deadline(self, connect: Connect) -> None:
        link = connect(buffered(echo), **self.LIMITS)
        link.send(request("POST", "/", [("Content-Length", "4")], b"a"))
        for byte in (b"b", b"c", b"d"):
            link.advance(15.0)
            link.send(byte)
        assert parse_one(link.take()).body == b"abcd"

    def test_no_body_timeout_while_a_blocking_app_works(self, connect: Connect) -> None:
        link = connect(blocking(buffered(echo)), run_jobs=False, **self.LIMITS)
        link.send(request("POST", "/", [("Content-Length", "2")], b"a"))
        assert run_jobs(link) == 1  # the app asked for the body
        link.send(b"b")  # the data() job is out now
        link.advance(100.0)  # the server's own slowness is not the client's fault
        assert link.take() == b""
        while run_jobs(link):
            pass
        assert parse_one(link.take()).body == b"ab"

    def test_no_body_timeout_while_a_pull_job_is_out(self, connect: Connect) -> None:
        probe = Probe(3)
        app = blocking(lambda req: Response(200, [], probe))
        link = connect(app, run_jobs=False, **self.LIMITS)
        link.send(request("POST", "/", [("Content-Length", "4")], b"ab"))
        assert run_jobs(link) == 1  # the app answered without reading; a pull job is out
        link.advance(100.0)
        assert not link.client_got_eof
        while run_jobs(link):
            pass
        link.send(b"cd")  # the rest of the unread body is drained
        assert parse_one(link.take()).body == b"1" * 10 + b"2" * 10 + b"3" * 10
        assert not link.client_got_eof

    def test_no_body_timeout_while_our_output_holds_reading_back(self, http_codec: str) -> None:
        def pipe_echo(req: Request) -> Response:
            pipe = Pipe()
            req.read_body(pipe)
            return Response(200, [], pipe)

        size = 256 * KiB
        marks = {"write_high_water": 64 * KiB, "write_low_water": 16 * KiB}
        server = http_server(pipe_echo, http=http_codec, **self.LIMITS, **marks)  # type: ignore[arg-type]
        link = MemLink(server, chunk=16 * KiB)  # the body arrives as the server reads it
        link.window = 0
        link.send(request("POST", "/", [("Content-Length", str(size))], b"y" * size))
        assert not link.conn.reading  # our output is full: the server stopped reading
        # A client reading 1 KiB/s: steady, but each drain from high to low water takes 48 s,
        # more than the 20 s body timeout.
        for _ in range(400):
            link.let_client_read(KiB)
            link.advance(1.0)
            if len(link.received) > size:
                break
            assert not link.client_got_eof
        assert parse_one(link.take(), "POST").body == b"y" * size


# --- application errors -------------------------------------------------------------------------


BAD_RESPONSES = [
    pytest.param(Response("200", [], b""), id="status-type"),  # type: ignore[arg-type]
    pytest.param(Response(99, [], b""), id="status-range"),
    pytest.param(Response(200, [("x-bad", "a\r\nb")], b""), id="header-value"),
    pytest.param(Response(200, [("bad name", "v")], b""), id="header-name"),
    pytest.param(Response(200, [("x",)], b""), id="header-pair"),  # type: ignore[list-item]
    pytest.param(Response(200, 5, b""), id="headers-type"),  # type: ignore[arg-type]
    pytest.param(Response(200, [("x", "€")], b""), id="header-encoding"),
    pytest.param(Response(200, [], 42), id="body-type"),  # type: ignore[arg-type]
    pytest.param(Response(200, [("Content-Length", "9")], b"short"), id="length-mismatch"),
    pytest.param(Response(200, [("x-bad", "a\x00b")], b""), id="header-nul"),
    pytest.param(Response(200, [("x-bad", "a\nb")], b""), id="header-lf"),
    pytest.param(Response(200, [("x-bad", " padded")], b""), id="header-outer-space"),
    pytest.param(Response(200, [("Transfer-Encoding", "chunked")], b"x"), id="te-on-bytes"),
    pytest.param(Response(200, [("Transfer-Encoding", "gzip")], iter([b"x"])), id="te-gzip"),
    pytest.param(Response(101, [], b""), id="status-informational"),
    pytest.param("not a response", id="not-a-response"),
]


class TestApplicationErrors:
    def test_app_exception_is_a_500_with_the_traceback_logged(
        self, connect: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        link = connect(raises)
        link.send(request())
        assert_closed_with(link, parse_one(link.take()), 500, b"raised an exception")
        records = error_records(caplog)
        assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in records)

    def test_blocking_app_exception_is_a_500_with_the_traceback_logged(
        self, connect_plain: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        link = connect_plain(blocking(raises))
        link.send(request())
        assert_closed_with(link, parse_one(link.take()), 500, b"raised an exception")
        assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)

    def test_body_reader_exception_is_a_500(self, connect_plain: Connect) -> None:
        def app(req: Request, body: bytes) -> Response:
            raise KeyError(body)

        link = connect_plain(buffered(app))
        link.send(request("POST", "/", [("Content-Length", "2")], b"ab"))
        assert_closed_with(link, parse_one(link.take()), 500, b"raised an exception")

    @pytest.mark.parametrize("response", BAD_RESPONSES)
    def test_garbage_response_is_a_500(
        self, connect_plain: Connect, caplog: pytest.LogCaptureFixture, response: Any
    ) -> None:
        link = connect_plain(lambda req: response)
        link.send(request())
        assert_closed_with(link, parse_one(link.take()), 500, b"")
        assert error_records(caplog)
        assert link.server.stats.errors == 1

    def test_none_without_reading_the_body_is_a_500(self, connect: Connect) -> None:
        link = connect(lambda req: None)
        link.send(request())
        assert_closed_with(link, parse_one(link.take()), 500, b"no response")

    def test_a_rejected_response_has_its_body_closed(self, connect_plain: Connect) -> None:
        probe = Probe(2)
        link = connect_plain(lambda req: Response(99, [], probe))
        link.send(request())
        assert_closed_with(link, parse_one(link.take()), 500, b"invalid response")
        assert probe.closed and probe.position == 0

    def test_a_second_response_is_ignored_and_its_body_closed(self, connect_plain: Connect) -> None:
        probe = Probe(2)

        class Late:
            def data(self, chunk: bytes) -> None:
                pass

            def end(self) -> Response:
                return Response(500, [], probe)

        def app(req: Request) -> Response:
            req.read_body(Late())
            return Response(200, [], b"first")

        link = connect_plain(app)
        link.send(request("POST", "/", [("Content-Length", "1")], b"x"))
        assert parse_one(link.take()).body == b"first"
        assert probe.closed and probe.position == 0

    def test_reader_end_returning_none_is_a_500(self, connect_plain: Connect) -> None:
        class Sink:
            def data(self, chunk: bytes) -> None:
                pass

            def end(self) -> None:
                return None

        link = connect_plain(lambda req: req.read_body(Sink()))
        link.send(request("POST", "/", [("Content-Length", "1")], b"x"))
        assert_closed_with(link, parse_one(link.take()), 500, b"no response")

    def test_iterable_raising_mid_stream_aborts_the_connection(
        self, connect: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        probe = Probe(5, 10 * KiB, fail_at=3)
        link = connect(
            lambda req: Response(200, [], probe),
            write_high_water=16 * KiB,
            write_low_water=4 * KiB,
        )
        link.send(request())
        assert link.closed  # aborted: no close handshake
        reply = parse_partial(link.take())  # never followed by a second (500) response
        assert reply.status == 200
        # what was flushed before the failure; the abort drops the third chunk with it
        assert reply.body == b"1" * 10 * KiB + b"2" * 10 * KiB
        assert probe.closed
        assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)

    def test_iterable_yielding_text_aborts_the_connection(self, connect_plain: Connect) -> None:
        link = connect_plain(lambda req: Response(200, [], iter(["text"])))
        link.send(request())
        assert link.closed
        assert b" 500 " not in link.take()

    @pytest.mark.parametrize("mark", [lambda app: app, blocking], ids=["inline", "blocking"])
    def test_an_iterable_that_only_yields_empty_chunks_is_cut(
        self, connect_plain: Connect, mark: Callable[[App], App], caplog: pytest.LogCaptureFixture
    ) -> None:
        link = connect_plain(mark(lambda req: Response(200, [], itertools.repeat(b""))))
        link.send(request())  # returns: the loop (or a worker) is not held forever
        assert link.closed
        assert "empty chunks in a row" in caplog.text

    def test_empty_chunks_between_data_are_skipped(self, connect_plain: Connect) -> None:
        chunks = [b"", b"a", *[b""] * 1000, b"b", b""]
        link = connect_plain(lambda req: Response(200, [], iter(chunks)))
        link.send(request())
        assert parse_one(link.take()).body == b"ab"

    def test_iterable_overrunning_its_content_length_aborts(self, connect_plain: Connect) -> None:
        link = connect_plain(lambda req: Response(200, [("Content-Length", "2")], iter([b"abc"])))
        link.send(request())
        assert link.closed

    def test_iterable_is_closed_on_success(self, connect: Connect) -> None:
        probe = Probe(2)
        link = connect(lambda req: Response(200, [], probe))
        link.send(request())
        parse_one(link.take())
        assert probe.closed

    def test_iterable_is_closed_on_connection_loss(self, connect_whole: Connect) -> None:
        probe = Probe(100, 64 * KiB)
        link = connect_whole(lambda req: Response(200, [], probe))
        link.window = 0
        link.send(request())
        assert not probe.closed
        link.conn.connection_lost(ConnectionResetError(), link.clock.now)
        link.closed = True
        assert probe.closed
        assert link.server.connections == {}


# --- the exchange's own API: deferred responses, flow control, back-pressure ------------------


class TestExchangeAPI:
    def test_a_response_given_later_from_outside_the_call(self, connect: Connect) -> None:
        waiting: list[Request] = []

        def app(req: Request) -> None:
            req.exchange.defer()
            waiting.append(req)

        link = connect(app)
        link.send(request(target="/later"))
        # Reading goes on while the response is pending (to notice a client that leaves)...
        assert link.take() == b"" and link.conn.reading
        link.send(request(target="/next"))
        assert not link.conn.reading  # ...until a next request arrives: it waits
        assert len(waiting) == 1
        waiting[0].exchange.respond(Response(200, [], b"answered later"))
        link.pump()  # the driver syncs the woken connection
        assert parse_one(link.take()).body == b"answered later"
        assert [req.target for req in waiting] == ["/later", "/next"]  # then the next, in order
        waiting[1].exchange.respond(Response(200, [], b"and the next"))
        link.pump()
        assert parse_one(link.take()).body == b"and the next"

    def test_a_response_given_through_the_exchange_within_the_call(
        self, connect_plain: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        link = connect_plain(lambda req: req.exchange.respond(Response(200, [], b"direct")))
        link.send(request())
        assert parse_one(link.take()).body == b"direct"
        assert error_records(caplog) == [] and not link.client_got_eof

    def test_a_streamed_response_given_later(self, connect_plain: Connect) -> None:
        waiting: list[Request] = []
        link = connect_plain(lambda req: waiting.append(req) or req.exchange.defer())
        link.send(request())
        pipe = Pipe()
        waiting[0].exchange.respond(Response(200, [], pipe))
        pipe.write(b"late ")
        pipe.write(b"data")
        pipe.close()
        link.pump()
        assert parse_one(link.take()).body == b"late data"

    def test_a_second_response_given_later_is_ignored(
        self, connect_plain: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        waiting: list[Request] = []
        link = connect_plain(lambda req: waiting.append(req) or Response(200, [], b"first"))
        link.send(request())
        probe = Probe(1)
        waiting[0].exchange.respond(Response(200, [], probe))
        assert parse_one(link.take()).body == b"first"
        assert probe.closed and "second response" in caplog.text

    def test_a_reader_pauses_the_body_until_it_resumes(self, connect_plain: Connect) -> None:
        """(Plaintext: over TLS a whole record is decrypted at once, so the pause holds the
        rest in the codec instead of in the client's socket.)"""

        class Slow:
            """Takes one piece, then asks for a pause until the test resumes it."""

            def __init__(self) -> None:
                self.chunks: list[bytes] = []
                self.request: Request | None = None

            def data(self, chunk: bytes) -> bool:
                self.chunks.append(chunk)
                return False

            def end(self) -> Response:
                return Response(200, [], b"".join(self.chunks))

        reader = Slow()

        def app(req: Request) -> None:
            reader.request = req
            req.read_body(reader)

        link = connect_plain(app, chunk=512)
        body = bytes(range(256)) * 40
        link.send(request("POST", "/", [("Content-Length", str(len(body)))], body))
        assert len(reader.chunks) == 1 and not link.conn.reading
        assert len(link.to_server) > len(body) // 2  # the rest waits on the client's side
        assert reader.request is not None
        resumed = 0
        while not link.received and resumed < 200:
            pieces = len(reader.chunks)
            reader.request.exchange.resume_body()
            link.pump()
            resumed += 1
            assert len(reader.chunks) <= pieces + 1  # one piece per resume, at most
        assert parse_one(link.take(), "POST").body == body
        assert resumed > 5

    def test_a_body_resumed_from_outside_a_driver_call_has_the_driver_read_again(
        self, connect_plain: Connect
    ) -> None:
        """``resume_body()`` in a call handed to the loop thread writes nothing, yet reading
        changes: the connection is synced, or a real driver would never read again."""
        readers: list[Request] = []

        class Pausing:
            def data(self, chunk: bytes) -> bool:
                return False

            def end(self) -> Response:
                return Response(200, [], b"all read")

        def app(req: Request) -> None:
            readers.append(req)
            req.read_body(Pausing())

        link = connect_plain(app, chunk=None)
        link.send(request("POST", "/", [("Content-Length", "10")], b"12345"))
        assert not link.conn.reading
        readers[0].exchange.resume_body()
        assert link.server.next_action() == Sync(link.conn)

    def test_writable_and_on_writable_follow_the_client(self, connect_whole: Connect) -> None:
        pipe = Pipe(high_water=1 << 30)
        served: list[Request] = []
        link = connect_whole(
            lambda req: served.append(req) or Response(200, [], pipe),
            write_high_water=16 * KiB,
            write_low_water=4 * KiB,
        )
        link.window = 0  # the client does not read
        link.send(request())
        exchange = served[0].exchange
        pipe.write(b"x" * 64 * KiB)
        link.pump()
        assert not exchange.writable
        calls: list[bool] = []
        exchange.on_writable(lambda: calls.append(exchange.writable))
        link.let_client_read(None)
        assert calls == [True]

    def test_a_lost_connection_is_reported_to_a_deferred_response(self, connect: Connect) -> None:
        gone: list[str] = []

        def app(req: Request) -> None:
            req.exchange.defer()
            req.exchange.on_disconnect(lambda: gone.append(req.target))

        link = connect(app)
        link.send(request(target="/waiting"))
        link.conn.abort("the peer reset the connection")  # as a driver reports a reset
        link.pump()
        assert link.closed and gone == ["/waiting"]

    def test_a_client_leaving_while_a_response_waits_is_noticed_at_once(
        self, connect: Connect
    ) -> None:
        """Its end of input is read although no byte was written: no response, no timeout
        needed. (What is answered afterwards still goes out, for a client that half-closed:
        over plaintext here, as TLS ends with the client's close_notify.)"""
        waiting: list[Request] = []
        events: list[str] = []

        def app(req: Request) -> None:
            req.exchange.defer()
            req.exchange.on_client_eof(lambda: events.append("eof"))
            req.exchange.on_disconnect(lambda: events.append("lost"))
            waiting.append(req)

        link = connect(app)
        link.send(request(target="/waiting"))
        link.client_close(notify=False)
        assert events == ["eof"] and not link.closed
        waiting[0].exchange.respond(Response(200, [], b"for a half-closed client"))
        link.pump()
        if link.client is None:
            assert parse_one(link.take(), eof=True).body == b"for a half-closed client"
        assert events == ["eof"]  # the response ended: no disconnect after it

    def test_a_request_that_fails_reports_its_disconnect(self, connect_plain: Connect) -> None:
        gone: list[str] = []

        def app(req: Request) -> None:
            req.exchange.defer()
            req.exchange.on_disconnect(lambda: gone.append(req.target))
            req.read_body(Pipe())

        link = connect_plain(app, body_timeout=5.0)
        link.send(request("POST", "/upload", [("Content-Length", "100")], b"only part"))
        link.advance(6.0)
        assert_closed_with(link, parse_one(link.take(), "POST"), 408, b"stopped arriving")
        assert gone == ["/upload"]

    def test_a_response_cut_short_reports_its_disconnect(
        self, connect_plain: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        gone: list[str] = []

        def app(req: Request) -> Response:
            req.exchange.on_disconnect(lambda: gone.append(req.target))
            return Response(200, [], Probe(5, fail_at=2))

        link = connect_plain(app)
        link.send(request(target="/broken"))
        assert link.closed and gone == ["/broken"]
        assert "response body iterator failed" in caplog.text

    def test_the_server_address_is_the_proxy_headers_destination(self) -> None:
        seen: list[Request] = []
        listener = Listener(
            protocol=lambda: HTTPProtocol(lambda req: seen.append(req) or hello(req)),
            proxy_protocol=True,
        )
        server = Server([listener])
        server.start(1000.0, 1_700_000_000.0)
        link = MemLink(server)
        link.send(b"PROXY TCP4 192.0.2.7 198.51.100.2 4321 443\r\n" + request())
        assert parse_one(link.take()).status == 200
        assert (seen[0].client, seen[0].server) == (("192.0.2.7", 4321), ("198.51.100.2", 443))

    def test_an_upgrade_hands_the_connection_and_what_followed_to_another_layer(
        self, connect: Connect
    ) -> None:
        class Echo(ProtocolLayer):
            def connection_made(self, conn: Any, now: float) -> None:
                self.conn = conn

            def data_received(self, data: bytes, now: float) -> None:
                self.conn.write(data.upper())

        def app(req: Request) -> Response | None:
            if req.path != "/ws":
                return Response(200, [], b"plain")
            req.exchange.upgrade(Echo(), [("Upgrade", "shout"), ("Connection", "Upgrade")])
            return None

        link = connect(app)
        asking = [("Connection", "Upgrade"), ("Upgrade", "shout")]
        link.send(request(target="/ws", headers=asking) + b"already sent")
        head, _, rest = link.take().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: shout" in head.lower() and rest == b"ALREADY SENT"
        link.send(b"and more")
        assert link.take() == b"AND MORE"
        assert link.conn.reading and not link.client_got_eof

    def test_only_a_request_asking_for_an_upgrade_gets_one(
        self, connect_plain: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        def app(req: Request) -> Response | None:
            req.exchange.upgrade(ProtocolLayer())
            return None

        link = connect_plain(app)
        link.send(request())
        assert_closed_with(link, parse_one(link.take()), 500, b"raised an exception")

    def test_a_request_outside_an_exchange_has_none(self) -> None:
        req = Request("GET", "/", [], "1.1", client=None, server=None, tls=None)
        with pytest.raises(LocalProtocolError):
            req.exchange  # noqa: B018

    def test_an_int_enum_status_is_a_status(self, connect_plain: Connect) -> None:
        link = connect_plain(lambda req: Response(HTTPStatus.CREATED, [], b"made"))
        link.send(request())
        assert parse_one(link.take()).status == 201


# --- blocking applications ----------------------------------------------------------------------


class TestBlockingApps:
    def test_call_is_a_job_and_reading_pauses_while_it_is_out(self, connect: Connect) -> None:
        calls: list[str] = []

        @blocking
        def app(req: Request) -> Response:
            calls.append(req.path)
            return Response(200, [], b"done")

        link = connect(app, run_jobs=False)
        link.send(request(target="/job"))
        assert calls == []  # not called on the loop thread
        assert link.take() == b""
        assert not link.conn.reading
        jobs = link.take_jobs()
        assert len(jobs) == 1
        jobs[0].run()
        assert calls == ["/job"]
        link.conn.job_done(jobs[0], link.clock.now)
        link.pump()
        assert parse_one(link.take()).body == b"done"
        assert link.conn.reading

    def test_pipelined_requests_are_answered_in_order_one_job_at_a_time(
        self, connect: Connect
    ) -> None:
        link = connect(blocking(hello), run_jobs=False)
        link.send(b"".join(request(target=f"/{n}") for n in range(3)))
        rounds = 0
        while True:
            jobs = link.take_jobs()
            if not jobs:
                break
            assert len(jobs) == 1
            rounds += 1
            jobs[0].run()
            link.conn.job_done(jobs[0], link.clock.now)
            link.pump()
        assert rounds == 3
        replies = parse_replies(link.take(), ["GET"] * 3)
        assert [r.body for r in replies] == [b"GET /0", b"GET /1", b"GET /2"]

    def test_blocking_body_reader_runs_in_jobs(self, connect_plain: Connect) -> None:
        in_job = False
        seen: list[bool] = []

        class Reader:
            def data(self, chunk: bytes) -> None:
                seen.append(in_job)

            def end(self) -> Response:
                seen.append(in_job)
                return Response(200, [], b"read")

        link = connect_plain(blocking(lambda req: req.read_body(Reader())), run_jobs=False)
        link.send(request("POST", "/", [("Transfer-Encoding", "chunked")]))
        for piece in (b"one", b"two"):
            link.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        link.send(b"0\r\n\r\n")
        while True:
            jobs = link.take_jobs()
            if not jobs:
                break
            assert not link.conn.reading
            in_job = True
            jobs[0].run()
            in_job = False
            link.conn.job_done(jobs[0], link.clock.now)
            link.pump()
        assert parse_one(link.take()).body == b"read"
        assert len(seen) >= 3
        assert all(seen)

    def test_blocking_apps_iterable_is_pulled_in_jobs(self, connect: Connect) -> None:
        probe = Probe(3)
        link = connect(blocking(lambda req: Response(200, [], probe)), run_jobs=False)
        link.send(request())
        assert run_jobs(link) == 1  # the app call
        assert probe.position == 0  # the loop thread never pulls a blocking app's body
        while run_jobs(link):
            pass
        assert parse_one(link.take()).body == b"1" * 10 + b"2" * 10 + b"3" * 10
        assert probe.closed

    def test_pull_job_keeps_the_body_open_until_it_returns(self, connect_plain: Connect) -> None:
        probe = Probe(3)
        link = connect_plain(blocking(lambda req: Response(200, [], probe)), run_jobs=False)
        link.send(request())
        run_jobs(link)  # the app call; a pull job is now out
        jobs = link.take_jobs()
        assert len(jobs) == 1
        link.conn.connection_lost(ConnectionResetError(), link.clock.now)
        link.closed = True
        assert not probe.closed  # a worker may be inside it: closing it now would race
        jobs[0].run()
        link.conn.job_done(jobs[0], link.clock.now)
        assert probe.closed

    def test_large_blocking_body_respects_back_pressure(self, connect_whole: Connect) -> None:
        probe = Probe(100, 64 * KiB)
        link = connect_whole(blocking(lambda req: Response(200, [], probe)))
        link.window = 0
        link.send(request())
        limits = link.conn.limits
        assert link.conn.output_size <= limits.write_high_water + 256 * KiB + 64 * KiB + KiB
        assert probe.position < 100
        link.let_client_read(None)
        assert len(parse_one(link.take()).body) == 100 * 64 * KiB

    def test_a_response_returned_after_the_client_left_is_closed(self, connect: Connect) -> None:
        probe = Probe(2)
        link = connect(blocking(lambda req: Response(200, [], probe)), run_jobs=False)
        link.send(request())
        (job,) = link.take_jobs()
        link.conn.connection_lost(ConnectionResetError(), link.clock.now)
        link.closed = True
        job.run()
        link.conn.job_done(job, link.clock.now)
        assert probe.closed and probe.position == 0

    def test_a_pipe_written_by_the_job_is_sent_from_the_loop_thread(self, connect: Connect) -> None:
        @blocking
        def pipe_echo(req: Request) -> Response:
            pipe = Pipe()
            req.read_body(pipe)
            return Response(200, [], pipe)

        link = connect(pipe_echo, run_jobs=False)
        writers: list[str] = []
        write = link.conn.write

        def spy(data: bytes) -> None:
            writers.append(threading.current_thread().name)
            write(data)

        link.conn.write = spy  # type: ignore[method-assign]
        link.send(request("POST", "/", [("Content-Length", "10")], b"hello"))
        link.send(b"world")
        for _ in range(100):  # each job on a real worker thread, as a driver runs it
            jobs = link.take_jobs()
            if not jobs:
                break
            for job in jobs:
                worker = threading.Thread(target=job.run, name="worker")
                worker.start()
                worker.join()
                link.conn.job_done(job, link.clock.now)
            link.pump()
        assert parse_one(link.take(), "POST").body == b"helloworld"
        assert writers and set(writers) == {threading.current_thread().name}


# --- graceful shutdown --------------------------------------------------------------------------


class TestShutdown:
    def test_idle_keep_alive_connection_is_closed(self, connect_whole: Connect) -> None:
        link = connect_whole(hello)
        link.send(request())
        parse_one(link.take())
        server = link.server
        server.request_stop(link.clock.now)
        assert not server.accepting
        link.pump()
        assert link.client_got_eof
        assert link.take() == b""
        link.client_close()
        assert link.closed
        assert server.finished

    def test_in_flight_request_finishes_with_connection_close(self, connect_whole: Connect) -> None:
        link = connect_whole(blocking(hello), run_jobs=False)
        link.send(request())
        server = link.server
        server.request_stop(link.clock.now)
        link.pump()
        assert not link.client_got_eof
        assert not server.finished
        run_jobs(link)
        reply = parse_one(link.take())
        assert reply.status == 200
        assert reply.header("connection") == b"close"
        assert link.client_got_eof
        link.client_close()
        assert server.finished

    def test_half_received_request_is_answered_then_closed(self, connect_whole: Connect) -> None:
        link = connect_whole(hello)
        link.send(b"GET / HTTP/1.1\r\n")
        link.server.request_stop(link.clock.now)
        link.pump()
        assert not link.client_got_eof
        link.send(b"Host: t\r\n\r\n")
        assert parse_one(link.take()).header("connection") == b"close"
        assert link.client_got_eof

    def test_grace_deadline_aborts_a_stuck_connection(self, connect_whole: Connect) -> None:
        link = connect_whole(blocking(hello), run_jobs=False, shutdown_grace=3.0)
        link.send(request())
        server = link.server
        server.request_stop(link.clock.now)
        link.pump()
        assert server.deadline == link.clock.now + 3.0
        link.clock.now += 3.0
        server.on_deadline(link.clock.now)
        link.pump()
        assert link.closed
        assert server.finished
        assert server.deadline is None
        assert run_jobs(link) == 1  # the job still comes back, harmlessly
        assert link.take() == b""
