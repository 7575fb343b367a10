"""Property tests: arbitrary and mutated bytes through the whole server stack, plain and TLS.

Whatever arrives, in whatever chunking, no exception escapes the core (nothing reaches the
connection's "internal error" catch-all, nothing is logged at ERROR), the server answers only
with valid HTTP (200, 4xx or 5xx, as h11 parses it), a TLS alert or the plaintext 400, its
buffers stay within the limits, and once the client is gone and the timeouts have run the
connection is closed. The HTTP properties hold for each codec (``http_codec``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import h11
import hypothesis
import pytest
from engines import ENGINE_NAMES, skip_unavailable
from errorlog import no_error_logs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from memlink import MemLink, http_server

from spcore.http.messages import Pipe, Request, Response, buffered
from spcore.http.protocol import HTTPProtocol
from spcore.preamble import plaintext_http_rejection
from spcore.server import Server
from spcore.tls import ApplicationData, ClientContext, ClientTLS, ServerTLS, TLSError

LIMITS: dict[str, Any] = {
    "max_header_size": 2048,
    "max_url_length": 512,
    "max_body_size": 4096,
    "write_high_water": 8192,
    "write_low_water": 2048,
    "idle_timeout": 5.0,
    "header_timeout": 10.0,
    "body_timeout": 10.0,
    "send_timeout": 10.0,
    "handshake_timeout": 10.0,
}
#: Inputs are capped so that one byte at a time stays fast; the limits above are far smaller.
MAX_INPUT = 6000
STREAM_CHUNK = 3000  # /stream sends five of these: more than the high-water mark

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=5000,
    # http_codec is a function-scoped fixture, but only a name: nothing to reset per example.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# --- the application under the stack --------------------------------------------------------


def _echo(req: Request) -> Response:
    pipe = Pipe()
    req.read_body(pipe)
    return Response(200, [], pipe)


_buffered = buffered(lambda req, body: Response(200, [("x-length", str(len(body)))], body))


def router(req: Request) -> Response | None:
    """Every way of answering, picked by path; mutated paths get the plain bytes answer."""
    if req.path == "/echo":
        return _echo(req)
    if req.path == "/buffered":
        return _buffered(req)
    if req.path == "/stream":
        return Response(200, [], iter([b"s" * STREAM_CHUNK] * 5))
    return Response(200, [], b"hello")


# --- inputs -----------------------------------------------------------------------------------

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /buffered HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"PUT /buffered HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET /?q=1 HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
    b"abcGET /stream HTTP/1.1\r\nHost: a\r\n\r\n",
]
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b" HTTP/1.1",
]
LENGTHS = [
    b"99999999999999999999",
    b"9999999999999999999",
    b"4097",
    b"-1",
    b"1, 2",
    b" 5 ",
    b"0x10",
    b"",
]
CHUNK_SIZES = [b"ffffffffffffffffff", b"fffffff", b"1001", b"-1", b"g", b"5;ext=1", b""]
MUTATIONS = [
    "flip",
    "byte",
    "insert",
    "delete",
    "truncate",
    "duplicate-line",
    "content-length",
    "chunk-size",
    "long-line",
    "repeat",
]


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` after one to four mutations of the kinds a fuzzer would try.

    What is drawn never depends on the bytes: each mutation draws the same values whatever
    it is applied to, positions taken modulo the length. The flights of a real handshake
    differ from run to run (fresh keys), and Hypothesis requires a strategy to draw the same
    way when it replays a case (``FlakyStrategyDefinition`` otherwise).
    """
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, MAX_INPUT))  # where, modulo the length when it is applied
        if kind == "flip":
            bit = draw(st.integers(0, 7))
            if data:
                data[at % len(data)] ^= 1 << bit
        elif kind == "byte":
            value = draw(st.integers(0, 255))
            if data:
                data[at % len(data)] = value
        elif kind == "insert":
            i = at % (len(data) + 1)
            data[i:i] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            count = draw(st.integers(1, 32))
            if data:
                i = at % len(data)
                del data[i : i + count]
        elif kind == "truncate":
            del data[at % (len(data) + 1) :]
        elif kind == "duplicate-line":
            lines = bytes(data).split(b"\r\n")
            i = at % len(lines)
            lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
        elif kind == "content-length":
            value = draw(st.sampled_from(LENGTHS))
            data = bytearray(re.sub(rb"(?i)(content-length:)[^\r\n]*", b"\\1 " + value, data))
        elif kind == "chunk-size":
            value = draw(st.sampled_from(CHUNK_SIZES))
            data = bytearray(re.sub(rb"\r\n\r\n[0-9a-f]+\r\n", b"\r\n\r\n" + value + b"\r\n", data))
        elif kind == "long-line":
            i = at % (len(data) + 1)
            data[i:i] = draw(st.sampled_from([b"X-Pad: ", b"/", b""])) + b"p" * draw(
                st.integers(100, 3000)
            )
        else:  # repeat: a pipelining flood
            data *= draw(st.integers(2, 4))
    return bytes(data[:MAX_INPUT])


#: How the transport cuts the bytes: whole, one byte at a time, or a pattern of sizes.
CHUNKINGS = st.one_of(
    st.just([0]),
    st.just([1]),
    st.lists(st.integers(1, 300), min_size=1, max_size=8),
)


def split(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    if sizes == [0]:
        if data:
            yield data
        return
    start = 0
    i = 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        yield data[start : start + size]
        start += size
        i += 1


# --- checks -----------------------------------------------------------------------------------


def note(outcome: str) -> None:
    """Tally an outcome for ``--hypothesis-show-statistics`` (what the fuzzing reached)."""
    if hypothesis.currently_in_test_context():
        hypothesis.event(outcome)


def check_bounded(link: MemLink, piece: int) -> None:
    """What the stack holds for this connection stays within the limits.

    ``piece`` is the largest read so far: h11 may hold one beyond its head limit before it
    complains, and one write may cross the high-water mark by a chunk and a head.
    """
    conn = link.conn
    slack = piece + 4096  # one write's worth beyond the mark: a chunk, a response head
    assert conn.output_size <= LIMITS["write_high_water"] + STREAM_CHUNK + slack
    protocol = conn.protocol
    assert isinstance(protocol, HTTPProtocol)
    assert protocol.buffered <= LIMITS["max_header_size"] + piece
    assert link.jobs_pending == []  # MemLink runs every job at once


def feed(link: MemLink, data: bytes, sizes: list[int]) -> None:
    """Deliver ``data`` cut as ``sizes`` says, checking the bounds after every read."""
    largest = 0
    for piece in split(data, sizes):
        largest = max(largest, len(piece))
        link.send_raw(piece)
        check_bounded(link, largest)


def finish(link: MemLink, linger: bool) -> None:
    """The client goes away (at once, or once the server's timeouts ran out on it); then every
    timeout runs out. The connection must be closed."""
    for _ in range(3 if linger else 0):
        link.advance(100.0)
    link.client_close(notify=False)
    for _ in range(3):
        link.advance(100.0)
    assert link.closed
    assert link.server.connections == {}


def check_http(data: bytes, *, eof: bool) -> None:
    """Valid responses back to back; only the last may be cut short, inside its body (abort)."""
    while data:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        client.send(h11.EndOfMessage())
        client.receive_data(data)
        if eof:
            client.receive_data(b"")
        in_body = False
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                assert in_body, f"invalid HTTP from the server ({exc}): {data[:300]!r}"
                return  # a body cut short by an abort, at the very end
            if isinstance(event, h11.InformationalResponse):
                assert event.status_code == 100
            elif isinstance(event, h11.Response):
                status = event.status_code
                assert status == 200 or 400 <= status < 600, status
                note(f"HTTP {status}")
                in_body = True
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA:
                assert in_body, f"a response head cut short: {data[:300]!r}"
                return
            else:
                assert isinstance(event, h11.Data), event
        data = client.trailing_data[0]


def check_tls_records(data: bytes) -> None:
    """Nothing, the plaintext 400, or whole, well-formed TLS records (handshake, alerts, data)."""
    if data in (b"", plaintext_http_rejection()):
        note("no output" if not data else "plaintext 400")
        return
    note("TLS records")
    at = 0
    while at < len(data):
        assert len(data) - at >= 5, f"a cut record header: {data[at:]!r}"
        kind, major, minor = data[at], data[at + 1], data[at + 2]
        length = int.from_bytes(data[at + 3 : at + 5], "big")
        assert kind in (20, 21, 22, 23), kind
        # OpenSSL answers a bad version with an alert carrying that version: the record's, or
        # the ClientHello's legacy_version (0x0203 gets protocol_version in a 0x0203 record).
        assert (major == 3 and minor <= 4) or kind == 21, (major, minor)
        assert length <= 2**14 + 256, length
        at += 5 + length
    assert at == len(data), "a cut record"


def check_counters(server: Server) -> None:
    """One protocol reaction at most per connection, and no connection left behind."""
    assert server.stats.errors <= 1
    assert server.stats.connections_open == 0


# --- plaintext --------------------------------------------------------------------------------


def drive_plain(data: bytes, sizes: list[int], linger: bool, codec: str) -> None:
    assume(b"HEAD" not in data)  # a HEAD response's framing needs the method to parse
    server = http_server(router, http=codec, **LIMITS)
    link = MemLink(server)
    with no_error_logs():
        feed(link, data, sizes)
        finish(link, linger)
    check_http(bytes(link.raw_received), eof=True)
    check_counters(server)


@FUZZ
@given(data=st.sampled_from(SEEDS).flatmap(mutations), sizes=CHUNKINGS, linger=st.booleans())
def test_mutated_requests(data: bytes, sizes: list[int], linger: bool, http_codec: str) -> None:
    drive_plain(data, sizes, linger, http_codec)


@FUZZ
@given(
    data=st.binary(max_size=2048) | st.builds(lambda b: b"GET /" + b, st.binary(max_size=600)),
    sizes=CHUNKINGS,
    linger=st.booleans(),
)
def test_arbitrary_bytes(data: bytes, sizes: list[int], linger: bool, http_codec: str) -> None:
    drive_plain(data, sizes, linger, http_codec)


def test_the_seeds_themselves_are_served(http_codec: str) -> None:
    """The properties start from requests the server answers with 200s."""
    for seed in SEEDS:
        server = http_server(router, http=http_codec, **LIMITS)
        link = MemLink(server)
        link.send_raw(seed)
        output = link.take()
        assert output.startswith(b"HTTP/1.1 ")
        assert b" 200 OK\r\n" in output
        check_http(output, eof=link.client_got_eof)
        assert server.stats.errors == 0


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def contexts(
    request: pytest.FixtureRequest, server_tls: ServerTLS, client_tls: ClientTLS
) -> dict[str, Any]:
    """The server's configuration and engine, and clients for both versions."""
    engine = skip_unavailable(request.param)
    return {
        "engine": engine,
        "server": server_tls,
        "1.3": ClientContext(client_tls),
        "1.2": ClientContext(dataclasses.replace(client_tls, max_version="1.2")),
    }


@FUZZ
@given(
    request=st.sampled_from(SEEDS) | st.sampled_from(SEEDS).flatmap(mutations),
    version=st.sampled_from(["1.3", "1.2"]),
    target=st.integers(0, 2),
    sizes=CHUNKINGS,
    linger=st.booleans(),
    draw=st.data(),
)
def test_mutated_ciphertext(
    contexts: dict[str, Any],
    request: bytes,
    version: str,
    target: int,
    sizes: list[int],
    linger: bool,
    draw: st.DataObject,
    http_codec: str,
) -> None:
    """A real client's flights, one of them (the ClientHello is flight 0) mutated in transit.

    The request inside may be mutated too, so the HTTP layer meets bad input behind TLS.
    """
    assume(b"HEAD" not in request)
    server = http_server(
        router, tls=contexts["server"], tls_engine=contexts["engine"], http=http_codec, **LIMITS
    )
    link = MemLink(server)  # no client engine in the link: the test plays the client
    client = contexts[version].new_engine("localhost")
    client.start()
    client.send(request)  # sent as soon as the handshake completes
    plaintext = bytearray()
    client_ok = True

    def to_client(data: bytes) -> None:
        nonlocal client_ok
        if not client_ok or not data:
            return
        try:
            for event in client.receive_data(data):
                if isinstance(event, ApplicationData):
                    plaintext.extend(event.data)
        except TLSError:
            client_ok = False

    with no_error_logs():
        for flight in range(6):
            out = client.data_to_send() if client_ok else b""
            if not out:
                break
            if flight == target:
                out = draw.draw(mutations(out), label="mutated flight")
            feed(link, out, sizes)
            to_client(link.take())
        finish(link, linger)
        to_client(link.take())
    check_tls_records(bytes(link.raw_received))
    check_http(bytes(plaintext), eof=False)
    check_counters(server)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=1024),
        st.builds(lambda b: b"\x16\x03\x01" + b, st.binary(max_size=600)),
        st.sampled_from(SEEDS).flatmap(mutations),
    ),
    sizes=CHUNKINGS,
    linger=st.booleans(),
)
def test_raw_bytes_on_a_tls_listener(
    contexts: dict[str, Any], data: bytes, sizes: list[int], linger: bool
) -> None:
    server = http_server(router, tls=contexts["server"], tls_engine=contexts["engine"], **LIMITS)
    link = MemLink(server)
    with no_error_logs():
        feed(link, data, sizes)
        finish(link, linger)
    check_tls_records(bytes(link.raw_received))
    check_counters(server)
