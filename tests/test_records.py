"""The ClientHello reader: real hellos from OpenSSL, every rejection's alert, and fuzzing."""

from __future__ import annotations

import ssl
import struct
import time

import pytest
from bytekit import FUZZ, cut_lists, mutate, mutation_lists, split, tls_client
from hypothesis import given, settings
from hypothesis import strategies as st

from spcore.errors import RemoteProtocolError
from spcore.tls.alerts import Alert
from spcore.tls.records import (
    MAX_CLIENT_HELLO,
    MAX_RECORD_PAYLOAD,
    ClientHello,
    ClientHelloReader,
    RecordError,
    alert_record,
)

# --- building ClientHellos -------------------------------------------------------------------


TLS13 = tls_client(alpn=["h2", "http/1.1"])[2].read()
TLS12 = tls_client(alpn=["http/1.1"], maximum_version=ssl.TLSVersion.TLSv1_2)[2].read()
NO_SNI = tls_client(server_hostname=None)[2].read()
REAL_HELLOS = [TLS13, TLS12, NO_SNI]


def _record(payload: bytes, content_type: int = 22, version: int = 0x0301) -> bytes:
    return struct.pack("!BHH", content_type, version, len(payload)) + payload


def _fragment(message: bytes, size: int, version: int = 0x0301) -> bytes:
    """Re-frame a handshake message into records of at most ``size`` bytes."""
    return b"".join(
        _record(message[i : i + size], version=version) for i in range(0, len(message), size)
    )


def _message(wire: bytes) -> bytes:
    """The handshake message carried by a single-record ClientHello."""
    (length,) = struct.unpack_from("!H", wire, 3)
    assert len(wire) == 5 + length
    return wire[5:]


def _vec(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def _ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!H", ext_type) + _vec(data, 2)


def _sni(*names: tuple[int, bytes]) -> bytes:
    return _ext(0, _vec(b"".join(bytes([t]) + _vec(n, 2) for t, n in names), 2))


def _alpn(*protocols: bytes) -> bytes:
    return _ext(16, _vec(b"".join(_vec(p, 1) for p in protocols), 2))


def _versions(*versions: int) -> bytes:
    return _ext(43, _vec(b"".join(struct.pack("!H", v) for v in versions), 1))


def _hello_message(
    extensions: bytes | None = b"",
    *,
    legacy_version: int = 0x0303,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01\x00\xff",
    compression: bytes = b"\x00",
    msg_type: int = 1,
) -> bytes:
    """A hand-built ClientHello handshake message (extensions=None omits the block)."""
    body = (
        struct.pack("!H", legacy_version)
        + bytes(32)
        + _vec(session_id, 1)
        + _vec(suites, 2)
        + _vec(compression, 1)
        + (b"" if extensions is None else _vec(extensions, 2))
    )
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def _parse(data: bytes) -> ClientHello | None:
    return ClientHelloReader().feed(data)


def _alert_of(data: bytes) -> Alert:
    with pytest.raises(RecordError) as info:
        _parse(data)
    return info.value.alert


# --- real ClientHellos ----------------------------------------------------------------------


def test_tls13_client_hello_exposes_sni_alpn_and_versions() -> None:
    hello = _parse(TLS13)
    assert hello is not None
    assert hello.server_name == "example.com"
    assert hello.alpn_protocols == ("h2", "http/1.1")
    assert 0x0304 in hello.supported_versions
    assert hello.max_version == 0x0304
    assert hello.legacy_version == 0x0303
    assert hello.record_version == 0x0301
    assert 0x1301 in hello.cipher_suites  # TLS_AES_128_GCM_SHA256
    assert {0, 16, 43} <= set(hello.extensions)


def test_tls12_max_client_hello_has_no_supported_versions() -> None:
    hello = _parse(TLS12)
    assert hello is not None
    assert hello.server_name == "example.com"
    assert hello.alpn_protocols == ("http/1.1",)
    assert hello.supported_versions == ()
    assert 43 not in hello.extensions
    assert hello.max_version == 0x0303
    assert 0x1301 not in hello.cipher_suites


def test_client_hello_without_sni_or_alpn() -> None:
    hello = _parse(NO_SNI)
    assert hello is not None
    assert hello.server_name is None
    assert hello.alpn_protocols == ()
    assert 0 not in hello.extensions


@pytest.mark.parametrize("wire", REAL_HELLOS, ids=["tls13", "tls12", "no-sni"])
def test_one_byte_at_a_time_gives_the_same_hello(wire: bytes) -> None:
    reader = ClientHelloReader()
    for byte in wire[:-1]:
        assert reader.feed(bytes([byte])) is None
    assert reader.feed(wire[-1:]) == _parse(wire)


@pytest.mark.parametrize("size", [1, 3, 4, 7, 100, 511])
def test_hello_fragmented_over_several_records(size: int) -> None:
    wire = _fragment(_message(TLS13), size)
    assert wire.count(b"\x16\x03\x01") >= len(_message(TLS13)) // size
    assert _parse(wire) == _parse(TLS13)


def test_fragmented_hello_fed_one_byte_at_a_time() -> None:
    wire = _fragment(_message(TLS13), 5)
    reader = ClientHelloReader()
    results = [reader.feed(bytes([b])) for b in wire]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == _parse(TLS13)


def test_bytes_after_the_hello_record_are_ignored() -> None:
    change_cipher_spec = _record(b"\x01", content_type=20, version=0x0303)
    assert _parse(TLS13 + change_cipher_spec + b"\x17\x03") == _parse(TLS13)


def test_reader_keeps_its_answer_after_completion() -> None:
    reader = ClientHelloReader()
    hello = reader.feed(TLS13)
    assert hello is not None
    assert reader.feed(b"more bytes") is hello


def test_reader_keeps_raising_after_an_error() -> None:
    reader = ClientHelloReader()
    with pytest.raises(RecordError) as first:
        reader.feed(b"\x17\x03\x03\x00\x01x")
    with pytest.raises(RecordError) as again:
        reader.feed(TLS13)
    assert again.value is first.value


@pytest.mark.parametrize("record_size", [16, 2**14])
def test_one_byte_feeding_cost_does_not_grow_with_buffered_bytes(record_size: int) -> None:
    """A maximal ClientHello fed a byte at a time: the last bytes cost what the first did.

    Tiny records catch a reader that rescans what it has buffered; full records catch one
    that copies its buffer on every call.
    """
    padding = MAX_CLIENT_HELLO - len(_hello_message())  # the handshake and extension headers
    message = _hello_message(_ext(21, bytes(padding)))
    assert len(message) == 4 + MAX_CLIENT_HELLO
    wire = _fragment(message, record_size)
    head, tail = wire[:4000], wire[-4000:]

    def timed(reader: ClientHelloReader, chunk: bytes) -> float:
        began = time.perf_counter()
        for i in range(len(chunk)):
            reader.feed(chunk[i : i + 1])
        return time.perf_counter() - began

    first, last = [], []
    for _ in range(3):
        early, late = ClientHelloReader(), ClientHelloReader()
        late.feed(wire[: -len(tail)])
        # Alternate small batches so that both ends see the same machine load.
        for start in range(0, len(tail), 100):
            first.append(timed(early, head[start : start + 100]))
            last.append(timed(late, tail[start : start + 100]))
        assert late.feed(b"") is not None
    # Linear feeding measures about 1.0 here; copying the buffer on every call measured 2 to 4.
    assert min(last) < 1.6 * min(first)


# --- synthetic ClientHellos: what the parser accepts ----------------------------------------


def test_grease_values_are_accepted_and_ignored_for_max_version() -> None:
    extensions = (
        _ext(0x0A0A, b"")
        + _sni((0, b"example.org"))
        + _versions(0x7A7A, 0x0304, 0x0303)
        + _alpn(b"h2")
        + _ext(0xFAFA, b"\x00")
    )
    hello = _parse(_record(_hello_message(extensions, suites=b"\x2a\x2a\x13\x01")))
    assert hello is not None
    assert hello.extensions == (0x0A0A, 0, 43, 16, 0xFAFA)
    assert hello.supported_versions == (0x7A7A, 0x0304, 0x0303)
    assert hello.max_version == 0x0304
    assert hello.cipher_suites == (0x2A2A, 0x1301)


def test_only_grease_versions_fall_back_to_legacy_version() -> None:
    hello = _parse(_record(_hello_message(_versions(0x1A1A))))
    assert hello is not None
    assert hello.max_version == 0x0303


def test_unknown_extensions_are_listed_but_not_interpreted() -> None:
    hello = _parse(_record(_hello_message(_ext(0xBEEF, b"\xff" * 9) + _ext(0xBEEE, b""))))
    assert hello is not None
    assert hello.extensions == (0xBEEF, 0xBEEE)
    assert hello.server_name is None


def test_hello_without_an_extensions_block() -> None:
    hello = _parse(_record(_hello_message(None, legacy_version=0x0301)))
    assert hello is not None
    assert hello.extensions == ()
    assert hello.max_version == 0x0301


def test_sni_entries_of_other_name_types_are_skipped() -> None:
    hello = _parse(_record(_hello_message(_sni((7, b"\x00\x01"), (0, b"xn--bcher-kva.example")))))
    assert hello is not None
    assert hello.server_name == "xn--bcher-kva.example"


def test_alpn_names_are_decoded_as_latin1() -> None:
    hello = _parse(_record(_hello_message(_alpn(b"\xe9t\xe9", b"h2"))))
    assert hello is not None
    assert hello.alpn_protocols == ("\xe9t\xe9", "h2")


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        _record(b"GET / HTTP/1.1\r\n", content_type=23),  # application data
        _record(b"\x02\x28", content_type=21),  # an alert
        _record(b"\x01", content_type=20),  # change_cipher_spec
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["application-data", "alert", "ccs", "plain-http"],
)
def test_non_handshake_first_record_is_unexpected(wire: bytes) -> None:
    assert _alert_of(wire) == Alert.UNEXPECTED_MESSAGE


def test_oversized_record_is_refused_from_its_header_alone() -> None:
    header = struct.pack("!BHH", 22, 0x0301, MAX_RECORD_PAYLOAD + 1)
    assert _alert_of(header) == Alert.RECORD_OVERFLOW


def test_record_of_the_maximum_size_is_waited_for() -> None:
    header = struct.pack("!BHH", 22, 0x0301, MAX_RECORD_PAYLOAD)
    assert _parse(header + bytes(100)) is None


def test_zero_length_handshake_record_is_unexpected() -> None:
    assert _alert_of(_record(b"") + TLS13) == Alert.UNEXPECTED_MESSAGE


@pytest.mark.parametrize("msg_type", [0, 2, 11, 20])
def test_other_handshake_messages_are_unexpected(msg_type: int) -> None:
    message = _hello_message(msg_type=msg_type)
    assert _alert_of(_record(message[:4])) == Alert.UNEXPECTED_MESSAGE


def test_an_oversized_client_hello_is_left_to_the_engine_from_its_header_alone() -> None:
    """The engine's own limit and alert apply (OpenSSL and GnuTLS take up to 128 KiB)."""
    header = b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big") + b"\x03\x03"
    hello = _parse(_record(header))
    assert hello is not None and not hello.read
    assert hello.legacy_version == 0x0303 and hello.server_name is None


def test_client_hello_of_the_maximum_size_is_waited_for() -> None:
    header = b"\x01" + MAX_CLIENT_HELLO.to_bytes(3, "big")
    assert _parse(_record(header)) is None


@pytest.mark.parametrize("version", [0x0201, 0x0002, 0x0403, 0xFEFD])
def test_record_version_without_major_3_is_refused(version: int) -> None:
    assert _alert_of(_fragment(_message(TLS13), 600, version)) == Alert.PROTOCOL_VERSION


def test_record_version_checked_on_every_fragment() -> None:
    message = _message(TLS13)
    wire = _record(message[:100]) + _record(message[100:], version=0x0101)
    assert _alert_of(wire) == Alert.PROTOCOL_VERSION


@pytest.mark.parametrize("legacy_version", [0x0200, 0x0400, 0xFFFF])
def test_any_legacy_version_is_read_for_the_engine_to_negotiate(legacy_version: int) -> None:
    """RFC 8446 4.1.2 / RFC 5246 Appendix E: version tolerance is the engine's business."""
    hello = _parse(_record(_hello_message(_sni((0, b"a.test")), legacy_version=legacy_version)))
    assert hello is not None and hello.read
    assert hello.legacy_version == legacy_version and hello.server_name == "a.test"


def test_sslv2_style_hello_is_refused() -> None:
    # 2-byte SSLv2 header (top bit set), MSG_CLIENT-HELLO, version 3.1, then lengths and data.
    body = b"\x01\x03\x01\x00\x03\x00\x00\x00\x10" + b"\x00\x00\x2f" + bytes(16)
    wire = struct.pack("!H", 0x8000 | len(body)) + body
    assert _alert_of(wire[:5]) == Alert.PROTOCOL_VERSION


def test_non_handshake_record_inside_a_fragmented_hello_is_unexpected() -> None:
    message = _message(TLS13)
    wire = _record(message[:50]) + _record(b"\x01", content_type=20) + _record(message[50:])
    assert _alert_of(wire) == Alert.UNEXPECTED_MESSAGE


def test_data_after_the_hello_in_its_record_is_unexpected() -> None:
    assert _alert_of(_record(_message(TLS13) + b"\x00")) == Alert.UNEXPECTED_MESSAGE


@pytest.mark.parametrize(
    "message",
    [
        b"\x01\x00\x00\x00",  # empty body
        _hello_message(suites=b"\x13"),  # odd cipher suite list
        _hello_message(suites=b""),  # no cipher suites
        _hello_message(compression=b""),  # no compression methods
        _hello_message(session_id=bytes(33)),  # session id too long
        _hello_message(_ext(0, b"")),  # empty SNI extension
        _hello_message(_sni((0, b""))),  # empty host name
        _hello_message(_ext(0, b"\x00\x05\x00\x00\x09ab")),  # host name runs past its list
        _hello_message(_sni((0, b"a.example"))[:-1]),  # extension runs past the block
        _hello_message(_alpn(b"h2", b"")),  # empty ALPN protocol name
        _hello_message(_ext(16, b"\x00\x00")),  # empty ALPN list
        _hello_message(_ext(43, b"\x03\x03\x04\x03")),  # odd supported_versions
        _hello_message(_ext(43, b"\x00")),  # empty supported_versions
        _hello_message(_ext(43, b"\x02\x03\x04\x00")),  # trailing byte in the extension
        _hello_message(b"\x00"),  # half an extension type
    ],
    ids=[
        "empty-body",
        "odd-suites",
        "no-suites",
        "no-compression",
        "long-session-id",
        "empty-sni-ext",
        "empty-host-name",
        "host-name-overrun",
        "extension-overrun",
        "empty-alpn-name",
        "empty-alpn-list",
        "odd-versions",
        "empty-versions",
        "trailing-in-extension",
        "half-extension",
    ],
)
def test_malformed_hello_is_a_decode_error(message: bytes) -> None:
    assert _alert_of(_record(message)) == Alert.DECODE_ERROR


def test_hello_whose_length_exceeds_its_fields_is_a_decode_error() -> None:
    message = _hello_message(_alpn(b"h2"))
    body = message[4:] + b"\x00"
    wire = _record(b"\x01" + len(body).to_bytes(3, "big") + body)
    assert _alert_of(wire) == Alert.DECODE_ERROR


@pytest.mark.parametrize(
    "extensions",
    [
        _alpn(b"h2") + _alpn(b"http/1.1"),
        _ext(0xBEEF, b"") + _ext(0xBEEF, b""),
        _sni((0, b"a.example"), (0, b"b.example")),
        _sni((0, b"b\xfccher.example")),
        _sni((0, b"evil.example\r\nX: 1")),
        _sni((0, b"nul\x00.example")),
    ],
    ids=["dup-alpn", "dup-unknown", "two-host-names", "non-ascii", "crlf", "nul"],
)
def test_illegal_parameters(extensions: bytes) -> None:
    assert _alert_of(_record(_hello_message(extensions))) == Alert.ILLEGAL_PARAMETER


def test_record_error_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        _parse(b"\x17\x03\x03\x00\x01x")
    assert info.value.error_status_hint == 400


# --- the alert we answer with ---------------------------------------------------------------


def test_alert_record_layout() -> None:
    assert alert_record(Alert.HANDSHAKE_FAILURE) == b"\x15\x03\x03\x00\x02\x02\x28"
    assert alert_record(Alert.DECODE_ERROR, version=0x0301)[1:3] == b"\x03\x01"


def test_openssl_client_understands_our_alert() -> None:
    client, incoming, _ = tls_client()
    incoming.write(alert_record(Alert.UNRECOGNIZED_NAME))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        client.do_handshake()


# --- fuzzing --------------------------------------------------------------------------------
_CUTS = cut_lists(2**17)
_MUTATIONS = mutation_lists(2**17, blob_size=4, count=4)
_FUZZ_BASES = [*REAL_HELLOS, *(_fragment(_message(TLS13), size) for size in (1, 9, 200))]


def _outcome(chunks: list[bytes]) -> ClientHello | Alert | None:
    """Feed the chunks (stopping at the first answer); any exception but RecordError fails."""
    reader = ClientHelloReader()
    try:
        for chunk in chunks:
            hello = reader.feed(chunk)
            if hello is not None:
                return hello
    except RecordError as exc:
        assert isinstance(exc.alert, Alert)
        return exc.alert
    return None


@FUZZ
@given(
    wire=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b),
        st.binary(max_size=300).map(lambda b: _record(b"\x01" + b)),
    ),
    cuts=_CUTS,
)
def test_arbitrary_bytes_only_raise_record_error(wire: bytes, cuts: list[int]) -> None:
    assert _outcome(split(wire, cuts)) == _outcome([wire])


@FUZZ
@given(base=st.sampled_from(_FUZZ_BASES), mutations=_MUTATIONS, cuts=_CUTS)
def test_mutated_real_hellos_only_raise_record_error(
    base: bytes, mutations: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    wire = mutate(base, mutations)
    assert _outcome(split(wire, cuts)) == _outcome([wire])


@settings(FUZZ, max_examples=100)
@given(wire=st.sampled_from(REAL_HELLOS), cuts=_CUTS)
def test_valid_hello_parses_the_same_whatever_the_chunking(wire: bytes, cuts: list[int]) -> None:
    assert _outcome(split(wire, cuts)) == _parse(wire)
