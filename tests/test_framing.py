"""Stream framings: decoding in any chunking, encoding round trips, limits and truncation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from bytekit import split
from hypothesis import given
from hypothesis import strategies as st

from spcore.errors import LocalProtocolError, RemoteProtocolError
from spcore.framing import (
    DotFraming,
    Framing,
    FramingError,
    LengthPrefixFraming,
    LineFraming,
    RawFraming,
)


def feed_all(framing: Framing, chunks: list[bytes]) -> list[bytes]:
    messages: list[bytes] = []
    for chunk in chunks:
        messages.extend(framing.feed(chunk))
    return messages


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- the error type ---------------------------------------------------------------------------


def test_framing_error_is_a_remote_protocol_error_answered_with_400() -> None:
    with pytest.raises(FramingError) as info:
        LineFraming(max_length=2).feed(b"abc")
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.error_status_hint == 400


# --- LineFraming ------------------------------------------------------------------------------


def test_line_framing_splits_lines_and_keeps_the_unterminated_rest() -> None:
    framing = LineFraming()
    assert framing.feed(b"one\ntwo\r\nthr") == [b"one", b"two"]
    assert framing.buffered == 3
    assert framing.feed(b"ee\n\n") == [b"three", b""]
    assert framing.buffered == 0


def test_line_framing_one_byte_at_a_time() -> None:
    data = b"alpha\r\nbeta\n\r\ngamma\r\n"
    assert feed_all(LineFraming(), bytewise(data)) == [b"alpha", b"beta", b"", b"gamma"]


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"a\r\n", [b"a"]),
        (b"a\n", [b"a"]),
        (b"a\r\r\n", [b"a\r"]),  # only the CR of the terminator goes
        (b"a\rb\n", [b"a\rb"]),  # a CR inside a line stays
        (b"\r\n", [b""]),
    ],
)
def test_line_framing_strips_one_cr_before_lf(data: bytes, lines: list[bytes]) -> None:
    assert LineFraming().feed(data) == lines


def test_line_framing_cr_and_lf_in_separate_chunks() -> None:
    framing = LineFraming()
    assert framing.feed(b"ab\r") == []
    assert framing.feed(b"\n") == [b"ab"]


def test_line_framing_custom_terminators() -> None:
    nul = LineFraming(terminator=b"\0")
    assert nul.feed(b"a\r\0b\nc\0") == [b"a\r", b"b\nc"]
    assert nul.frame(b"x") == b"x\0"
    crlf = LineFraming(terminator=b"\r\n")
    assert feed_all(crlf, [b"a\nb\r", b"\nc\r\n"]) == [b"a\nb", b"c"]
    assert crlf.frame(b"x") == b"x\r\n"


def test_line_framing_frames_with_crlf_and_refuses_embedded_newlines() -> None:
    framing = LineFraming()
    assert framing.frame(b"hello") == b"hello\r\n"
    with pytest.raises(LocalProtocolError):
        framing.frame(b"two\nlines")


def test_line_framing_accepts_a_line_of_exactly_max_length() -> None:
    framing = LineFraming(max_length=8)
    assert framing.feed(b"12345678") == []
    assert framing.feed(b"\r") == []  # may still be the CR of a CRLF
    assert framing.feed(b"\n") == [b"12345678"]


def test_line_framing_rejects_a_long_line_as_soon_as_it_is_too_long() -> None:
    framing = LineFraming(max_length=8)
    for byte in bytewise(b"12345678"):
        assert framing.feed(byte) == []
    with pytest.raises(FramingError, match="longer than 8 bytes"):
        framing.feed(b"9")
    assert framing.buffered == 0


def test_line_framing_a_cr_that_is_not_followed_by_lf_counts() -> None:
    framing = LineFraming(max_length=8)
    framing.feed(b"12345678\r")
    with pytest.raises(FramingError):
        framing.feed(b"x")


def test_line_framing_rejects_a_complete_line_over_the_limit() -> None:
    with pytest.raises(FramingError):
        LineFraming(max_length=8).feed(b"ok\n123456789\n")


def test_a_failed_framing_refuses_further_input() -> None:
    framing = LineFraming(max_length=4)
    with pytest.raises(FramingError):
        framing.feed(b"12345")
    with pytest.raises(FramingError, match="after a framing error"):
        framing.feed(b"\n")


def test_line_framing_eof_inside_a_line_is_truncation() -> None:
    framing = LineFraming()
    framing.feed(b"done\npart")
    with pytest.raises(FramingError, match="incomplete line"):
        framing.eof()


def test_line_framing_eof_between_lines_is_clean() -> None:
    framing = LineFraming()
    framing.feed(b"done\n")
    framing.eof()


class CountingBuffer(bytearray):
    """A buffer that counts how many bytes its searches may have to look at."""

    scanned = 0

    def find(self, sub: object, start: object = 0, *rest: object) -> int:
        assert isinstance(start, int)
        CountingBuffer.scanned += len(self) - start
        return super().find(sub, start, *rest)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [LineFraming, DotFraming], ids=["line", "dot"])
def test_a_long_message_arriving_byte_by_byte_is_scanned_in_linear_time(
    make: Callable[[int], Framing], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 20_000
    framing = make(10 * size)
    framing._buf = CountingBuffer()  # type: ignore[attr-defined]  # spy on the private buffer
    monkeypatch.setattr(CountingBuffer, "scanned", 0)
    for byte in bytewise(b"x" * size):
        framing.feed(byte)
    # A search restarting at the beginning of the line each time would look at size**2 / 2.
    assert CountingBuffer.scanned <= 8 * size
    assert framing.buffered == size


# --- DotFraming -------------------------------------------------------------------------------


def test_dot_framing_ends_a_message_at_a_lone_dot_line() -> None:
    framing = DotFraming()
    assert framing.feed(b"Subject: hi\r\n\r\nbody\r\n.\r\nnext") == [b"Subject: hi\r\n\r\nbody"]
    assert framing.buffered == 4


@pytest.mark.parametrize("data", [b".\r\n", b"\r\n.\r\n"])
def test_dot_framing_empty_message_forms(data: bytes) -> None:
    assert DotFraming().feed(data) == [b""]


def test_dot_framing_empty_messages_between_others() -> None:
    framing = DotFraming()
    assert feed_all(framing, bytewise(b".\r\nabc\r\n.\r\n.\r\n")) == [b"", b"abc", b""]


def test_dot_framing_unstuffs_leading_dots() -> None:
    framing = DotFraming()
    assert framing.feed(b"..x\r\n..\r\nab\r\n...\r\n.\r\n") == [b".x\r\n.\r\nab\r\n.."]


def test_dot_framing_stuffs_leading_dots() -> None:
    framing = DotFraming()
    assert framing.frame(b".x\r\n.\r\nab") == b"..x\r\n..\r\nab\r\n.\r\n"
    assert framing.frame(b"") == b".\r\n"
    assert framing.frame(b"a\r\n") == b"a\r\n\r\n.\r\n"


def test_dot_framing_limit_counts_the_body_as_sent() -> None:
    framing = DotFraming(max_length=10)
    framing.feed(b"0123456789")
    framing.feed(b"\r\n.\r")  # may still be the terminator
    assert framing.feed(b"\n") == [b"0123456789"]
    with pytest.raises(FramingError, match="longer than 10 bytes"):
        framing.feed(b"0123456789\r\nx")
    assert framing.buffered == 0


def test_dot_framing_eof_inside_a_message_is_truncation() -> None:
    framing = DotFraming()
    framing.feed(b"abc\r\n.")
    with pytest.raises(FramingError, match="incomplete message"):
        framing.eof()


# --- LengthPrefixFraming ----------------------------------------------------------------------


@pytest.mark.parametrize("header_size", [1, 2, 4, 8])
def test_length_prefix_header_sizes(header_size: int) -> None:
    framing = LengthPrefixFraming(header_size)
    wire = framing.frame(b"abc") + framing.frame(b"")
    assert wire == (3).to_bytes(header_size, "big") + b"abc" + bytes(header_size)
    assert feed_all(framing, bytewise(wire)) == [b"abc", b""]


def test_length_prefix_is_big_endian() -> None:
    assert LengthPrefixFraming(2).feed(b"\x00\x03abc\x01") == [b"abc"]


def test_length_prefix_rejects_an_oversized_length_before_the_payload() -> None:
    framing = LengthPrefixFraming(4, max_length=100)
    assert framing.feed((100).to_bytes(4, "big")) == []
    framing = LengthPrefixFraming(4, max_length=100)
    with pytest.raises(FramingError, match="101 bytes"):
        framing.feed((101).to_bytes(4, "big"))
    assert framing.buffered == 0


def test_length_prefix_refuses_to_frame_what_the_header_cannot_count() -> None:
    framing = LengthPrefixFraming(1)
    assert len(framing.frame(b"x" * 255)) == 256
    with pytest.raises(LocalProtocolError):
        framing.frame(b"x" * 256)


@pytest.mark.parametrize("header_size", [0, 3, 16])
def test_length_prefix_header_size_must_be_a_power_of_two_up_to_8(header_size: int) -> None:
    with pytest.raises(ValueError):
        LengthPrefixFraming(header_size)


@pytest.mark.parametrize("partial", [b"\x00\x00", b"\x00\x00\x00\x05ab"])
def test_length_prefix_eof_inside_header_or_payload_is_truncation(partial: bytes) -> None:
    framing = LengthPrefixFraming(4)
    framing.feed(partial)
    assert framing.buffered == len(partial)
    with pytest.raises(FramingError):
        framing.eof()


# --- RawFraming -------------------------------------------------------------------------------


def test_raw_framing_passes_chunks_through() -> None:
    framing = RawFraming()
    assert framing.feed(b"ab") == [b"ab"]
    assert framing.feed(b"") == []
    assert framing.buffered == 0
    assert framing.frame(b"xyz") == b"xyz"
    framing.eof()


# --- properties over every framing ------------------------------------------------------------

FACTORIES: dict[str, Callable[[], Framing]] = {
    "line": lambda: LineFraming(max_length=16),
    "line-nul": lambda: LineFraming(max_length=16, terminator=b"\0"),
    "dot": lambda: DotFraming(max_length=16),
    "length1": lambda: LengthPrefixFraming(1, max_length=16),
    "length4": lambda: LengthPrefixFraming(4, max_length=16),
}

# Messages each framing can carry (a line cannot contain its terminator), within the limits,
# with the delimiter characters over-represented.
PIECES = st.sampled_from([b".", b"\r", b"\n", b"\r\n", b".\r\n", b"\0", b"a"])
ANY = st.binary(max_size=16) | st.lists(PIECES, max_size=8).map(b"".join)
PAYLOADS: dict[str, st.SearchStrategy[bytes]] = {
    "line": ANY.filter(lambda b: b"\n" not in b and len(b) <= 16),
    "line-nul": ANY.filter(lambda b: b"\0" not in b and len(b) <= 16),
    "dot": ANY,
    "length1": ANY,
    "length4": ANY,
}

# The most each framing may hold between feeds: the limit plus what might still be delimiter.
BOUNDS = {"line": 17, "line-nul": 16, "dot": 20, "length1": 16, "length4": 19}


def wire_size_fits(name: str, framing: Framing, message: bytes) -> bool:
    """Messages over the limit (for dot framing: once stuffed) are not round-trip material."""
    if name == "dot":
        return len(framing.frame(message)) - 5 <= 16
    return len(message) <= 16


@pytest.mark.parametrize("name", FACTORIES)
@given(data=st.data())
def test_round_trip_in_any_chunking(name: str, data: st.DataObject) -> None:
    encoder = FACTORIES[name]()
    messages = data.draw(st.lists(PAYLOADS[name], max_size=6))
    messages = [m for m in messages if wire_size_fits(name, encoder, m)]
    wire = b"".join(encoder.frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    decoder = FACTORIES[name]()
    assert feed_all(decoder, split(wire, cuts)) == messages
    assert decoder.buffered == 0
    decoder.eof()


@pytest.mark.parametrize("name", FACTORIES)
@given(data=st.data())
def test_whole_and_bytewise_feeding_agree(name: str, data: st.DataObject) -> None:
    wire = data.draw(st.binary(max_size=40) | st.lists(PIECES, max_size=20).map(b"".join))

    def outcome(chunks: list[bytes]) -> list[bytes] | str:
        try:
            return feed_all(FACTORIES[name](), chunks)
        except FramingError:
            return "error"

    assert outcome([wire]) == outcome(bytewise(wire))


@pytest.mark.parametrize("name", [*FACTORIES, "raw"])
@given(data=st.data())
def test_arbitrary_bytes_only_raise_framing_error_and_stay_bounded(
    name: str, data: st.DataObject
) -> None:
    framing = RawFraming() if name == "raw" else FACTORIES[name]()
    bound = BOUNDS.get(name, 0)
    chunks = data.draw(st.lists(st.binary(max_size=24), max_size=8))
    try:
        for chunk in chunks:
            framing.feed(chunk)
            assert framing.buffered <= bound
    except FramingError:
        assert framing.buffered == 0  # a failed framing lets go of what it held
        return
    with pytest.raises(FramingError) if framing.buffered else contextlib.nullcontext():
        framing.eof()
