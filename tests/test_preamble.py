"""First-bytes sniffing, the plain-HTTP answer, and the PROXY protocol v1/v2 reader."""

from __future__ import annotations

import struct

import h11
import pytest
from bytekit import FUZZ, cut_lists, mutate, mutation_lists, split, tls_client
from hypothesis import given, settings
from hypothesis import strategies as st

from spcore.errors import LocalProtocolError, RemoteProtocolError
from spcore.preamble import (
    ProxyError,
    ProxyHeaderReader,
    ProxyInfo,
    ProxyVersion,
    Sniff,
    plaintext_http_rejection,
    proxy_header,
    sniff,
)

CLIENT_HELLO = tls_client()[2].read()

# --- sniffing -------------------------------------------------------------------------------


def test_real_client_hello_is_tls_after_three_bytes() -> None:
    assert sniff(CLIENT_HELLO[:1]) is None
    assert sniff(CLIENT_HELLO[:2]) is None
    assert sniff(CLIENT_HELLO[:3]) is Sniff.TLS
    assert sniff(CLIENT_HELLO) is Sniff.TLS


@pytest.mark.parametrize("minor", [0, 1, 2, 3, 4])
def test_every_tls_record_version_is_tls(minor: int) -> None:
    assert sniff(bytes([0x16, 0x03, minor])) is Sniff.TLS


@pytest.mark.parametrize(
    "method",
    ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "PRI"],
)
def test_http_methods_are_http_once_the_space_arrives(method: str) -> None:
    request = f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    decided = len(method) + 1
    assert all(sniff(request[:n]) is None for n in range(decided))
    assert sniff(request[:decided]) is Sniff.HTTP
    assert sniff(request) is Sniff.HTTP


def test_http2_preface_is_http() -> None:
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") is Sniff.HTTP


@pytest.mark.parametrize(
    "first",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"get / HTTP/1.1\r\n",  # methods are case-sensitive
        b"GETS / HTTP/1.1\r\n",
        b"G\x00",
        b"\x16\x02",
        b"\x16\x03\x05",
        b"\x17\x03\x03",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-style hello
        b"PROXY TCP4 ",
        b"\x00",
    ],
)
def test_anything_else_is_other(first: bytes) -> None:
    assert sniff(first) is Sniff.OTHER


def test_nothing_yet_is_undecided() -> None:
    assert sniff(b"") is None


# --- the cleartext answer to plain HTTP -----------------------------------------------------


def test_plaintext_http_rejection_is_a_complete_400_that_closes() -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "example.com")]))
    client.receive_data(plaintext_http_rejection())
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 400
    headers = dict(response.headers)
    assert headers[b"content-type"].startswith(b"text/plain")
    assert headers[b"connection"] == b"close"
    body = client.next_event()
    assert isinstance(body, h11.Data)
    assert int(headers[b"content-length"]) == len(body.data)
    assert b"plain HTTP" in body.data
    assert b"https://" in body.data
    assert isinstance(client.next_event(), h11.EndOfMessage)


# --- PROXY protocol -------------------------------------------------------------------------


def _read(data: bytes) -> tuple[ProxyInfo, bytes] | None:
    return ProxyHeaderReader().feed(data)


def _one_byte_at_a_time(data: bytes) -> tuple[ProxyInfo, bytes]:
    reader = ProxyHeaderReader()
    for i in range(len(data) - 1):
        result = reader.feed(data[i : i + 1])
        if result is not None:
            # The header ended early; the remaining bytes must reach the caller unchanged.
            info, rest = result
            return info, rest + data[i + 1 :]
    result = reader.feed(data[-1:])
    assert result is not None
    return result


def _rejects(data: bytes) -> str:
    with pytest.raises(ProxyError) as info:
        _read(data)
    return str(info.value)


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _v2(payload: bytes, *, command: int = 1, family: int = 0x11, version: int = 2) -> bytes:
    header = struct.pack("!BBH", version << 4 | command, family, len(payload))
    return V2_SIGNATURE + header + payload


V2_TCP4 = _v2(bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443))
V2_TCP6 = _v2(
    bytes.fromhex("20010db800000000000000000000000120010db8000000000000000000000002")
    + struct.pack("!HH", 40000, 8443),
    family=0x21,
)
TLS_BYTES = CLIENT_HELLO[:40]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
            ProxyInfo(("192.0.2.1", 56324), ("198.51.100.7", 443), "TCP4"),
        ),
        (
            b"PROXY TCP6 2001:DB8::1 2001:db8:0:0:0:0:0:2 40000 8443\r\n",
            ProxyInfo(("2001:db8::1", 40000), ("2001:db8::2", 8443), "TCP6"),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyInfo(None, None, "UNKNOWN")),
        (b"PROXY UNKNOWN whatever follows ::1 is ignored\r\n", ProxyInfo(None, None, "UNKNOWN")),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            ProxyInfo(("0.0.0.0", 0), ("255.255.255.255", 65535), "TCP4"),
        ),
        (V2_TCP4, ProxyInfo(("192.0.2.1", 56324), ("198.51.100.7", 443), "TCP4")),
        (V2_TCP6, ProxyInfo(("2001:db8::1", 40000), ("2001:db8::2", 8443), "TCP6")),
        (_v2(b"", command=0, family=0), ProxyInfo(None, None, "LOCAL")),
        (_v2(bytes(12), command=0, family=0x11), ProxyInfo(None, None, "LOCAL")),
        (_v2(b"", family=0x00), ProxyInfo(None, None, "UNKNOWN")),
        (_v2(bytes(20), family=0x00), ProxyInfo(None, None, "UNKNOWN")),
    ],
    ids=[
        "v1-tcp4",
        "v1-tcp6",
        "v1-unknown",
        "v1-unknown-junk",
        "v1-extremes",
        "v2-tcp4",
        "v2-tcp6",
        "v2-local",
        "v2-local-with-addresses",
        "v2-unspec",
        "v2-unspec-with-bytes",
    ],
)
def test_headers_parse_and_keep_the_following_bytes(header: bytes, expected: ProxyInfo) -> None:
    assert _read(header + TLS_BYTES) == (expected, TLS_BYTES)
    assert _read(header) == (expected, b"")
    assert _one_byte_at_a_time(header + TLS_BYTES) == (expected, TLS_BYTES)


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    addresses = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2)
    tlvs = b"\x01\x00\x02h2" + b"\x05\x00\x04abcd"  # ALPN, UNIQUE_ID
    assert _read(_v2(addresses + tlvs) + b"rest") == (
        ProxyInfo(("10.0.0.1", 1), ("10.0.0.2", 2), "TCP4"),
        b"rest",
    )


def test_v1_line_of_exactly_107_bytes_is_accepted() -> None:
    full = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 107
    assert _read(line) == (ProxyInfo(None, None, "UNKNOWN"), b"")


def test_v1_line_longer_than_107_bytes_is_refused_without_waiting_for_its_end() -> None:
    assert "longer than 107" in _rejects(b"PROXY UNKNOWN " + b"x" * 93)
    assert _read(b"PROXY UNKNOWN " + b"x" * 92) is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n",  # bare LF
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 \r\n",  # trailing space
        b"PROXY TCP4  192.0.2.1 198.51.100.7 56324 443\r\n",  # double space
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n",  # missing port
        b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",  # IPv6 address under TCP4
        b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",  # IPv4 address under TCP6
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",  # scope id
        b"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n",  # leading zero in an octet
        b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",  # port out of range
        b"PROXY TCP4 192.0.2.1 198.51.100.7 080 443\r\n",  # leading zero in a port
        b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",  # sign
        b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 443\r\n",
        b"PROXY TCP4 192.0.2.\xc3\xa9 198.51.100.7 1 2\r\n",  # not ASCII
        b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY UNKNOWNISH\r\n",
        b"PROXY \r\n",
    ],
)
def test_malformed_v1_lines_are_refused(line: bytes) -> None:
    _rejects(line)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (_v2(b"", version=1), "version 1"),
        (_v2(b"", version=3), "version 3"),
        (_v2(b"", command=2), "command 2"),
        (_v2(bytes(12), family=0x12), "unsupported"),  # UDP over IPv4
        (_v2(bytes(216), family=0x31), "unsupported"),  # AF_UNIX
        (_v2(bytes(12), family=0x41), "invalid"),
        (_v2(bytes(12), family=0x13), "invalid"),
        (_v2(bytes(11), family=0x11), "too short"),
        (_v2(bytes(35), family=0x21), "too short"),
    ],
)
def test_malformed_v2_headers_are_refused(header: bytes, reason: str) -> None:
    assert reason in _rejects(header)


def test_v2_length_over_the_cap_is_refused_from_the_fixed_header() -> None:
    header = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 0xFFFF)
    assert "bytes" in _rejects(header)


def test_v2_waits_for_its_announced_length() -> None:
    assert _read(V2_TCP4[:-1]) is None


@pytest.mark.parametrize(
    "data",
    [CLIENT_HELLO, b"GET / HTTP/1.1\r\n", b"PROXX", b"\r\n\r\n\x00\r\nQUIX", b"\r\n\r\n\r\n"],
)
def test_data_without_a_proxy_header_is_refused(data: bytes) -> None:
    assert "does not start" in _rejects(data)


def test_prefixes_of_either_signature_wait_for_more() -> None:
    for n in range(1, len(V2_SIGNATURE) + 1):
        assert _read(V2_SIGNATURE[:n]) is None
    for n in range(1, 7):
        assert _read(b"PROXY "[:n]) is None


def test_a_finished_reader_refuses_more_bytes() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(LocalProtocolError):
        reader.feed(b"late")


def test_proxy_error_is_a_remote_protocol_error_with_status_400() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        _read(b"nope")
    assert info.value.error_status_hint == 400


# --- fuzzing --------------------------------------------------------------------------------
_CUTS = cut_lists(2**10)
_MUTATIONS = mutation_lists(2**10, blob_size=3, count=3)
_PROXY_SEEDS = [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
    b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 1 2\r\n",
    b"PROXY UNKNOWN\r\n",
    V2_TCP4,
    V2_TCP6,
    _v2(b"", command=0, family=0),
]


def _proxy_outcome(chunks: list[bytes]) -> tuple[ProxyInfo, bytes] | str | None:
    """Feed the chunks; the answer's trailing bytes include every chunk not yet fed."""
    reader = ProxyHeaderReader()
    try:
        for i, chunk in enumerate(chunks):
            result = reader.feed(chunk)
            if result is not None:
                info, rest = result
                return info, rest + b"".join(chunks[i + 1 :])
    except ProxyError:
        return "error"
    return None


@settings(FUZZ, max_examples=200)
@given(
    base=st.sampled_from([b"", b"GET / ", b"OPTIONS * ", b"PRI * ", b"\x16\x03\x01\x02\x00"]),
    mutations=_MUTATIONS,
    extra=st.binary(max_size=10),
)
def test_sniff_decides_early_and_never_changes_its_mind(
    base: bytes, mutations: list[tuple[str, int, bytes]], extra: bytes
) -> None:
    first = mutate(base, mutations) + extra
    verdict = sniff(first)
    assert verdict is None or isinstance(verdict, Sniff)
    if len(first) >= 8:
        assert verdict is not None
    for n in range(len(first)):
        earlier = sniff(first[:n])
        assert earlier is None or earlier is verdict


@FUZZ
@given(
    base=st.sampled_from([b"", b"PROXY ", V2_SIGNATURE, *_PROXY_SEEDS]),
    mutations=_MUTATIONS,
    extra=st.binary(max_size=60),
    cuts=_CUTS,
)
def test_proxy_reader_only_raises_proxy_error(
    base: bytes, mutations: list[tuple[str, int, bytes]], extra: bytes, cuts: list[int]
) -> None:
    wire = mutate(base, mutations) + extra
    outcome = _proxy_outcome(split(wire, cuts))
    assert outcome == _proxy_outcome([wire])
    if isinstance(outcome, tuple):
        assert wire.endswith(outcome[1])


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("source", "destination", "expected"),
    [
        (
            ("192.0.2.7", 51000),
            ("198.51.100.1", 443),
            ProxyInfo(("192.0.2.7", 51000), ("198.51.100.1", 443), "TCP4"),
        ),
        (
            ("2001:db8::7", 51000, 0, 0),
            ("2001:db8::1", 443, 0, 0),
            ProxyInfo(("2001:db8::7", 51000), ("2001:db8::1", 443), "TCP6"),
        ),
        (None, ("198.51.100.1", 443), ProxyInfo(None, None, "UNKNOWN")),
        (("192.0.2.7", 51000), ("2001:db8::1", 443, 0, 0), ProxyInfo(None, None, "UNKNOWN")),
    ],
    ids=["ipv4", "ipv6", "unix-client", "mixed-families"],
)
def test_a_header_we_send_reads_back_as_sent(
    version: ProxyVersion, source: object, destination: object, expected: ProxyInfo
) -> None:
    header = proxy_header(source, destination, version)
    assert ProxyHeaderReader().feed(header + b"rest") == (expected, b"rest")
    assert header.startswith(b"PROXY " if version == "v1" else b"\r\n\r\n\x00\r\nQUIT\n")
