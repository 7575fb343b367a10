"""Our HTTP/1.1 response writer (the httptools codec's): honest bytes whatever it is given.

The exchange checks an application's headers before they get here; the writer still refuses
what would split a response or break its framing, since it is the last step before the wire.
Its output is read back with h11 in the CLIENT role.
"""

from __future__ import annotations

import h11
import pytest
from memlink import read_response

from spcore.errors import LocalProtocolError
from spcore.http.codec import CHUNKED, FIXED, NO_BODY, UNTIL_CLOSE, ResponseHead
from spcore.http.writer import ResponseWriter


def parsed(data: bytes, method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    _, head, body = read_response(client)
    assert client.trailing_data[0] == b""
    return head.status_code, list(head.headers), body


def test_a_fixed_length_response_in_one_call() -> None:
    head = ResponseHead(200, [(b"content-length", b"5"), (b"x-a", b"b c")], FIXED, 5)
    data = ResponseWriter().response(head, b"hello", True)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert parsed(data) == (200, [(b"content-length", b"5"), (b"x-a", b"b c")], b"hello")


def test_a_fixed_length_body_in_pieces() -> None:
    writer = ResponseWriter()
    head = ResponseHead(201, [(b"content-length", b"6")], FIXED, 6)
    data = (
        writer.response(head, b"ab", False) + writer.data(b"cd", False) + writer.data(b"ef", True)
    )
    assert parsed(data)[::2] == (201, b"abcdef")


@pytest.mark.parametrize(
    ("pieces", "end"), [([b"toolong"], True), ([b"abc", b"defg"], False), ([b"ab"], True)]
)
def test_more_or_fewer_bytes_than_the_length_are_refused(pieces: list[bytes], end: bool) -> None:
    writer = ResponseWriter()
    writer.response(ResponseHead(200, [(b"content-length", b"5")], FIXED, 5), b"", False)
    with pytest.raises(LocalProtocolError):
        for piece in pieces:
            writer.data(piece, end)


def test_chunked_framing_is_written_and_ends() -> None:
    writer = ResponseWriter()
    head = ResponseHead(200, [(b"transfer-encoding", b"chunked")], CHUNKED)
    data = writer.response(head, b"first", False) + writer.data(b"", False)
    data += writer.data(b"second" * 10, False) + writer.data(b"", True)
    assert data.endswith(b"3c\r\n" + b"second" * 10 + b"\r\n0\r\n\r\n")
    assert parsed(data)[2] == b"first" + b"second" * 10


@pytest.mark.parametrize(("status", "method"), [(204, "GET"), (304, "GET"), (200, "HEAD")])
def test_no_body_framing_sends_none_and_refuses_one(status: int, method: str) -> None:
    writer = ResponseWriter()
    head = ResponseHead(status, [(b"content-length", b"10")], NO_BODY)
    data = writer.response(head, b"", True)
    assert data.endswith(b"\r\n\r\n") and parsed(data, method) == (status, head.headers, b"")
    with pytest.raises(LocalProtocolError, match="no body"):
        writer.data(b"x", True)


def test_until_close_framing_writes_the_body_as_it_is() -> None:
    writer = ResponseWriter()
    out = writer.response(ResponseHead(200, [(b"connection", b"close")], UNTIL_CLOSE), b"a", False)
    assert out.endswith(b"\r\n\r\na") and writer.data(b"b", True) == b"b"


@pytest.mark.parametrize(
    "header",
    [
        (b"x-a", b"a\r\nx-injected: 1"),
        (b"x-a", b"a\nb"),
        (b"x-a", b"a\rb"),
        (b"x-a", b"a\x00b"),
        (b"x-a\r\nx-b", b"v"),
        (b"x a", b"v"),
        (b"x:a", b"v"),
        (b"", b"v"),
        (b"x\x00", b"v"),
    ],
    ids=repr,
)
def test_header_lines_that_would_split_the_response_are_refused(
    header: tuple[bytes, bytes],
) -> None:
    head = ResponseHead(200, [(b"content-length", b"0"), header], FIXED, 0)
    with pytest.raises(LocalProtocolError):
        ResponseWriter().response(head, b"", True)


def test_a_refused_header_is_refused_every_time() -> None:
    """(Accepted lines are remembered; refused ones must never be.)"""
    head = ResponseHead(200, [(b"x-a", b"a\nb")], FIXED, 0)
    for _ in range(3):
        with pytest.raises(LocalProtocolError):
            ResponseWriter().response(head, b"", True)


def test_statuses_without_a_phrase_and_out_of_range() -> None:
    data = ResponseWriter().response(ResponseHead(599, [], NO_BODY), b"", True)
    assert data == b"HTTP/1.1 599 \r\n\r\n"
    with pytest.raises(LocalProtocolError):
        ResponseWriter().response(ResponseHead(42, [], NO_BODY), b"", True)


def test_interim_responses() -> None:
    assert ResponseWriter().interim(100, []) == b"HTTP/1.1 100 Continue\r\n\r\n"
    with pytest.raises(LocalProtocolError):
        ResponseWriter().interim(200, [])
