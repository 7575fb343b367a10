"""The OpenSSL TLS engine: in memory against itself, and against stdlib ``ssl`` and s_client.

Each section pins a behaviour that TLS over memory BIOs must get right, as other projects
learnt it: the alert of a failed handshake flushed (asyncio and uvloop lose it), TLS 1.3
session tickets that follow the handshake (https://github.com/python-trio/trio/issues/819,
https://github.com/openssl/openssl/issues/7948), reads that stop without an exception per
record (https://github.com/python/cpython/issues/123954), close during the handshake
(https://bugs.python.org/issue29743), ragged EOF told from close_notify (trio's
``https_compatible``), no byte from after close_notify taken as data (the class of bug of
CVE-2023-40217), the rejected client certificate of TLS 1.3 seen at the first read, a refused
renegotiation that hangs nobody. In-memory tests move bytes with ``pump``, in whole buffers
and one byte at a time; socket tests run the peer in a thread with timeouts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from conftest import PKI
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spcore.certs import CertPair
from spcore.errors import LocalProtocolError
from spcore.tls import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    OpenSSLEngine,
    RaggedEOF,
    TLSClosedError,
    TLSError,
    TLSEvent,
    client_context,
    server_context,
)

T = TypeVar("T")
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3
MAX = ssl.TLSVersion.MAXIMUM_SUPPORTED
MiB = 1024 * 1024
TIMEOUT = 5.0

VERSIONS = pytest.mark.parametrize(
    ("maximum", "version"), [(TLS12, "TLSv1.2"), (MAX, "TLSv1.3")], ids=["tls12", "tls13"]
)

# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(params=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    """Deliver ciphertext in whole buffers, or one byte per ``receive_data`` call."""
    return bool(request.param == "bytewise")


def server(pki: PKI, **options: Any) -> OpenSSLEngine:
    ctx = server_context(pki.server.certfile, pki.server.keyfile, **options)
    return OpenSSLEngine(ctx, server_side=True)


def client(
    pki: PKI, hostname: str | None = "localhost", *, maximum: ssl.TLSVersion = MAX, **options: Any
) -> OpenSSLEngine:
    options.setdefault("cafile", pki.ca_file)
    ctx = client_context(maximum_version=maximum, **options)
    return OpenSSLEngine(ctx, server_side=False, server_hostname=hostname)


def feed(data: bytes, dst: OpenSSLEngine, bytewise: bool = False) -> list[TLSEvent]:
    """Give ``data`` to ``dst``, all at once or byte by byte; return its events.

    Nothing to give is not an EOF: call ``receive_data(b"")`` directly for that.
    """
    if not data:
        return []
    if not bytewise:
        return dst.receive_data(data)
    events: list[TLSEvent] = []
    for i in range(len(data)):
        events += dst.receive_data(data[i : i + 1])
    return events


def move(src: OpenSSLEngine, dst: OpenSSLEngine, bytewise: bool = False) -> list[TLSEvent]:
    """Deliver everything ``src`` has to send to ``dst``."""
    return feed(src.data_to_send(), dst, bytewise)


def pump(
    a: OpenSSLEngine, b: OpenSSLEngine, bytewise: bool = False
) -> tuple[list[TLSEvent], list[TLSEvent]]:
    """Move bytes both ways until neither side has anything to send; return both events."""
    events_a: list[TLSEvent] = []
    events_b: list[TLSEvent] = []
    for _ in range(100):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return events_a, events_b
        events_b += feed(out_a, b, bytewise)
        events_a += feed(out_b, a, bytewise)
    raise AssertionError("the engines did not settle")


def connect(
    s: OpenSSLEngine, c: OpenSSLEngine, bytewise: bool = False
) -> tuple[list[TLSEvent], list[TLSEvent]]:
    """Run the handshake; return (server events, client events)."""
    s.start()
    c.start()
    events_c, events_s = pump(c, s, bytewise)
    assert s.handshake_complete and c.handshake_complete
    return events_s, events_c


def data_of(events: list[TLSEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ApplicationData))


def der(pair: CertPair) -> bytes:
    cert = x509.load_pem_x509_certificate(pair.certfile.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def names(certificate: bytes | None) -> list[str]:
    """The DNS names in a DER certificate's subjectAltName."""
    assert certificate is not None
    cert = x509.load_der_x509_certificate(certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def records(wire: bytes) -> Iterator[tuple[int, int]]:
    """(content type, length) of each TLS record in ``wire``, which must hold whole records."""
    offset = 0
    while offset < len(wire):
        kind, _version, length = struct.unpack_from("!BHH", wire, offset)
        offset += 5 + length
        yield kind, length
    assert offset == len(wire)


def expect_error(call: Callable[[], object]) -> TLSError:
    with pytest.raises(TLSError) as info:
        call()
    return info.value


# --- the handshake loop -----------------------------------------------------------------------


@VERSIONS
def test_each_flight_is_flushed_while_the_handshake_wants_more(
    pki: PKI, bytewise: bool, maximum: ssl.TLSVersion, version: str
) -> None:
    s, c = server(pki), client(pki, maximum=maximum)
    s.start()
    assert s.data_to_send() == b""  # a server speaks second
    c.start()
    hello = c.data_to_send()
    assert hello[:1] == b"\x16" and hello[5:6] == b"\x01"  # handshake record, ClientHello
    assert feed(hello, s, bytewise) == []
    flight = s.data_to_send()
    assert flight[:1] == b"\x16" and flight[5:6] == b"\x02"  # ServerHello first
    assert not s.handshake_complete and not c.handshake_complete
    events_c = feed(flight, c, bytewise)
    finished = c.data_to_send()
    assert finished  # TLS 1.3: client Finished; TLS 1.2: key exchange, CCS, Finished
    events_s = feed(finished, s, bytewise)
    assert [type(e) for e in events_s] == [HandshakeComplete]
    if version == "TLSv1.3":
        assert [type(e) for e in events_c] == [HandshakeComplete]  # the client finishes first
    else:
        assert events_c == []
        assert [type(e) for e in move(s, c, bytewise)] == [HandshakeComplete]
    assert s.info is not None and c.info is not None
    assert s.info.version == c.info.version == version


@VERSIONS
def test_handshake_info(pki: PKI, bytewise: bool, maximum: ssl.TLSVersion, version: str) -> None:
    s, c = server(pki), client(pki, maximum=maximum)
    events_s, events_c = connect(s, c, bytewise)
    info_s = next(e.info for e in events_s if isinstance(e, HandshakeComplete))
    info_c = next(e.info for e in events_c if isinstance(e, HandshakeComplete))
    assert info_s == s.info and info_c == c.info
    assert info_s.version == info_c.version == version
    assert info_s.cipher == info_c.cipher
    expected_cipher = "TLS_AES_" if version == "TLSv1.3" else "ECDHE-ECDSA-AES"
    assert info_s.cipher.startswith(expected_cipher)
    assert info_s.alpn_protocol == info_c.alpn_protocol == "http/1.1"
    assert info_s.server_name == info_c.server_name == "localhost"
    assert info_c.peer_certificate == der(pki.server)
    assert info_s.peer_certificate is None  # no client certificate asked for


def test_no_server_name_when_the_client_sends_no_sni(pki: PKI) -> None:
    s, c = server(pki), client(pki, "127.0.0.1")  # clients send no SNI for IP addresses
    connect(s, c)
    assert s.info is not None and s.info.server_name is None


# --- failed handshakes: the reason, and the alert reaching the peer ---------------------------


@VERSIONS
@pytest.mark.parametrize(
    ("case", "message", "alert"),
    [
        ("unknown_ca", "unable to get local issuer certificate", "TLSV1_ALERT_UNKNOWN_CA"),
        ("self_signed", "self-signed certificate", "TLSV1_ALERT_UNKNOWN_CA"),
        ("expired", "certificate has expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
        ("wrong_host", "Hostname mismatch", "SSLV3_ALERT_BAD_CERTIFICATE"),
    ],
)
def test_certificate_verification_failure_is_reported_and_alerted(
    pki: PKI,
    bytewise: bool,
    maximum: ssl.TLSVersion,
    version: str,
    case: str,
    message: str,
    alert: str,
) -> None:
    cert = {"self_signed": pki.self_signed, "expired": pki.expired}.get(case, pki.server)
    s = OpenSSLEngine(server_context(cert.certfile, cert.keyfile), server_side=True)
    cafile = pki.rogue_ca_file if case == "unknown_ca" else pki.ca_file
    c = client(
        pki,
        "wrong.test" if case == "wrong_host" else "localhost",
        maximum=maximum,
        cafile=cafile,
    )
    c.start()
    move(c, s, bytewise)
    error = expect_error(lambda: move(s, c, bytewise))
    assert error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert error.verify_message is not None
    # OpenSSL 1.1.1 writes "self signed", OpenSSL 3 "self-signed".
    assert message in error.verify_message.replace("self signed", "self-signed")
    assert error.verify_message in str(error)
    assert error.during_handshake and c.closed and not c.handshake_complete
    alert_bytes = c.data_to_send()
    # A plaintext alert record, under TLS 1.3 too: OpenSSL's client switches its write side
    # to the handshake keys only for its second flight.
    assert [kind for kind, _ in records(alert_bytes)] == [0x15]
    server_error = expect_error(lambda: feed(alert_bytes, s, bytewise))
    assert server_error.reason == alert
    assert alert in str(server_error) and server_error.during_handshake
    assert s.closed and s.data_to_send() == b""  # no answer to a fatal alert


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_version_mismatch_fails_both_sides(pki: PKI, bytewise: bool) -> None:
    s = server(pki, minimum_version=TLS13)
    c = client(pki, maximum=TLS12)
    c.start()
    server_error = expect_error(lambda: move(c, s, bytewise))
    assert server_error.reason == "UNSUPPORTED_PROTOCOL"
    client_error = expect_error(lambda: move(s, c, bytewise))
    assert client_error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert client_error.during_handshake and server_error.during_handshake


def test_plaintext_is_never_taken_for_application_data(pki: PKI) -> None:
    s = server(pki)
    error = expect_error(lambda: s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert error.reason == "HTTP_REQUEST" and error.during_handshake
    assert s.receive_data(b"more") == [] and s.closed


# --- application data written before the handshake completes -------------------------------


def test_data_before_the_handshake_is_queued_then_delivered_in_order(
    pki: PKI, bytewise: bool
) -> None:
    s, c = server(pki), client(pki)
    c.send(b"one ")
    c.send(b"two")
    s.send(b"alpha ")
    s.send(b"beta")
    assert c.pending_output == 7 and s.pending_output == 10  # plaintext waits outside OpenSSL
    assert c.data_to_send() == b"" and s.data_to_send() == b""
    c.start()
    hello = c.data_to_send()
    c.start()  # no second ClientHello
    assert c.data_to_send() == b"" and c.pending_output == 7
    events_s = feed(hello, s, bytewise)
    assert s.pending_output > 10  # its flight, and still the queued plaintext
    events_c, more_s = pump(c, s, bytewise)
    events_s += more_s
    for events, expected in [(events_s, b"one two"), (events_c, b"alpha beta")]:
        assert isinstance(events[0], HandshakeComplete)
        assert all(isinstance(e, ApplicationData) for e in events[1:])
        assert data_of(events) == expected
    assert s.pending_output == c.pending_output == 0


# --- TLS 1.3 session tickets and resumption ---------------------------------------------------


def test_tls13_tickets_follow_the_handshake_and_yield_no_application_data(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    c.start()
    move(c, s)
    move(s, c)
    assert c.handshake_complete and c.session is not None
    assert not c.session.has_ticket
    assert [type(e) for e in move(c, s)] == [HandshakeComplete]
    tickets = s.data_to_send()  # written by the handshake that just completed, not by a send
    assert len(tickets) > 100 and {kind for kind, _ in records(tickets)} == {0x17}
    assert feed(tickets, c) == []  # consumed without an ApplicationData event
    assert c.data_to_send() == b""
    assert c.session.has_ticket


def test_tls13_tickets_go_out_with_the_first_write_in_lock_step(pki: PKI) -> None:
    """A client that sends a request and waits for the answer gets tickets and answer at once.

    The deadlock of trio#819 / openssl#7948 happens when the tickets stay behind until the
    server writes; here the request rides with the client's Finished and the owner takes the
    output once, after answering.
    """
    s, c = server(pki), client(pki)
    c.start()
    move(c, s)
    assert [type(e) for e in move(s, c)] == [HandshakeComplete]
    c.send(b"ping")
    events = move(c, s)  # Finished and the request in one delivery
    assert [type(e) for e in events] == [HandshakeComplete, ApplicationData]
    assert data_of(events) == b"ping"
    s.send(b"pong")
    out = s.data_to_send()
    assert [kind for kind, _ in records(out)].count(0x17) >= 3  # tickets, then the answer
    assert feed(out, c) == [ApplicationData(b"pong")]
    assert c.session is not None and c.session.has_ticket


@VERSIONS
def test_session_resumption(pki: PKI, maximum: ssl.TLSVersion, version: str) -> None:
    # A session belongs to its client context; the server context holds the ticket keys.
    server_ctx = server_context(pki.server.certfile, pki.server.keyfile)
    client_ctx = client_context(cafile=pki.ca_file, maximum_version=maximum)

    def handshake(session: ssl.SSLSession | None) -> tuple[OpenSSLEngine, OpenSSLEngine]:
        s = OpenSSLEngine(server_ctx, server_side=True)
        c = OpenSSLEngine(
            client_ctx, server_side=False, server_hostname="localhost", session=session
        )
        connect(s, c)
        return s, c

    s1, first = handshake(None)
    assert not first.session_reused and not s1.session_reused
    assert first.session is not None and first.session.has_ticket
    s2, second = handshake(first.session)
    assert second.session_reused and s2.session_reused
    assert second.info is not None and second.info.version == version
    # A resumed handshake carries no certificate; the client still knows whom it talks to.
    assert second.info.peer_certificate == der(pki.server)


# --- writes: zero length, large, back-pressure ------------------------------------------------


def test_zero_length_send_is_a_no_op(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    c.send(b"")
    assert c.pending_output == 0
    c.start()
    c.send(b"")
    hello = c.data_to_send()
    assert c.pending_output == 0
    feed(hello, s)
    pump(c, s)
    for engine in (s, c):
        engine.send(b"")
        assert engine.pending_output == 0 and engine.data_to_send() == b""
    c.send(b"x")
    assert feed(c.data_to_send(), s) == [ApplicationData(b"x")]


@VERSIONS
def test_one_mebibyte_send_arrives_whole_in_records(
    pki: PKI, maximum: ssl.TLSVersion, version: str
) -> None:
    s, c = server(pki), client(pki, maximum=maximum)
    connect(s, c)
    payload = random.Random(1).randbytes(MiB)
    s.send(payload)
    assert s.pending_output > MiB  # back-pressure must come from here: OpenSSL never refuses
    wire = s.data_to_send()
    assert s.pending_output == 0
    sizes = [length for kind, length in records(wire) if kind == 0x17]
    assert len(sizes) >= MiB // 16384 and max(sizes) <= 16384 + 256
    received = b""
    for start in range(0, len(wire), 10_000):  # arbitrary cuts through the records
        events = c.receive_data(wire[start : start + 10_000])
        assert all(isinstance(e, ApplicationData) for e in events)
        received += data_of(events)
    assert received == payload


def test_large_send_before_the_handshake_counts_as_pending(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    payload = random.Random(2).randbytes(MiB)
    c.send(payload)
    assert c.pending_output == MiB
    c.start()
    assert c.pending_output > MiB  # the ClientHello, and the queued plaintext
    events_s, _ = connect(s, c)
    assert data_of(events_s) == payload


# --- reads: loop until no plaintext is left, without an exception per read -------------------


class CountingSSLObject:
    """Wraps an ``SSLObject``, counting ``read`` calls and the WantRead exceptions they raise."""

    def __init__(self, inner: ssl.SSLObject) -> None:
        self._inner = inner
        self.reads = 0
        self.want_read = 0

    def read(self, *args: Any) -> bytes:
        self.reads += 1
        try:
            return self._inner.read(*args)
        except ssl.SSLWantReadError:
            self.want_read += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("partial_tail", [False, True], ids=["whole_records", "partial_tail"])
def test_several_records_come_out_as_one_event_at_bounded_cost(
    pki: PKI, partial_tail: bool
) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    pieces = [b"record-%d;" % i for i in range(8)]
    wire = b""
    for piece in pieces:
        c.send(piece)
        wire += c.data_to_send()
    assert len(list(records(wire))) == 8
    tail = b""
    if partial_tail:
        c.send(b"late")
        tail = c.data_to_send()
        wire += tail[:7]
    counter = CountingSSLObject(s._ssl)
    s._ssl = counter  # type: ignore[assignment]
    events = s.receive_data(wire)
    assert events == [ApplicationData(b"".join(pieces))]
    assert counter.want_read <= 1 and counter.want_read == int(partial_tail)
    assert counter.reads <= 8 + 1
    if partial_tail:
        assert s.receive_data(tail[7:]) == [ApplicationData(b"late")]


# --- closing ----------------------------------------------------------------------------------


@VERSIONS
@pytest.mark.parametrize("closer", ["server", "client"])
def test_close_notify_reaches_the_peer(
    pki: PKI, bytewise: bool, maximum: ssl.TLSVersion, version: str, closer: str
) -> None:
    s, c = server(pki), client(pki, maximum=maximum)
    connect(s, c, bytewise)
    closing, peer = (s, c) if closer == "server" else (c, s)
    closing.send(b"last words")
    closing.close()
    assert closing.closed
    events = feed(closing.data_to_send(), peer, bytewise)
    assert data_of(events) == b"last words"  # flushed before the close_notify
    assert events[-1] == CloseNotify() and events.count(CloseNotify()) == 1
    assert not peer.closed  # receiving close_notify does not close our side


@VERSIONS
def test_half_close_the_peer_may_keep_sending_after_our_close_notify(
    pki: PKI, maximum: ssl.TLSVersion, version: str
) -> None:
    """After the client's close_notify the server may still answer, and OpenSSL lets the
    client read that answer: our close_notify only ends *our* direction (TLS 1.3 says so
    explicitly; OpenSSL behaves the same under TLS 1.2). The server's own close_notify
    ends the other direction."""
    s, c = server(pki), client(pki, maximum=maximum)
    connect(s, c)
    c.send(b"request")
    c.close()
    with pytest.raises(TLSClosedError):
        c.send(b"more")
    assert move(c, s) == [ApplicationData(b"request"), CloseNotify()]
    s.send(b"response")
    assert move(s, c) == [ApplicationData(b"response")]
    s.close()
    assert move(s, c) == [CloseNotify()]
    assert s.closed and c.closed
    assert s.data_to_send() == c.data_to_send() == b""


@pytest.mark.parametrize(
    "late",
    [b"\x17\x03\x03\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n", b"\x15\x03\x03\x00\x02\x02\x28"],
    ids=["record", "plaintext", "alert"],
)
@pytest.mark.parametrize("together", [True, False], ids=["same_feed", "later_feed"])
def test_nothing_after_close_notify_becomes_application_data(
    pki: PKI, late: bytes, together: bool
) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    c.send(b"genuine")
    c.close()
    wire = c.data_to_send()
    if together:
        events = s.receive_data(wire + late)
    else:
        events = s.receive_data(wire) + s.receive_data(late)
    assert events == [ApplicationData(b"genuine"), CloseNotify()]
    assert s.receive_data(late) == [] and s.receive_data(b"") == []
    assert not s.closed  # the peer's close; ours is still to send
    s.close()
    assert s.data_to_send()  # our close_notify


def test_bytes_after_close_notify_are_not_kept(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    c.close()
    assert move(c, s) == [CloseNotify()]
    for _ in range(16):
        assert s.receive_data(b"\x17\x03\x03\x40\x00" + bytes(16384)) == []
    assert s._incoming.pending == 0  # a peer streaming after its close cannot fill our memory


@VERSIONS
def test_ragged_eof_is_not_a_close_notify(pki: PKI, maximum: ssl.TLSVersion, version: str) -> None:
    s, c = server(pki), client(pki, maximum=maximum)
    connect(s, c)
    c.send(b"maybe truncated")
    assert move(c, s) == [ApplicationData(b"maybe truncated")]
    assert s.receive_data(b"") == [RaggedEOF()]
    # OpenSSL treats the missing close_notify as fatal (OpenSSL 3 even queues a decode_error
    # alert, harmless to send): the session is over.
    assert s.closed
    with pytest.raises(TLSClosedError):
        s.send(b"answer")
    assert s.receive_data(b"") == []
    s.close()  # nothing left to close, and no exception


def test_eof_inside_a_record_is_a_ragged_eof(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    c.send(b"abc")
    s.receive_data(c.data_to_send())  # a complete record
    c.send(b"def")
    wire = c.data_to_send()
    assert s.receive_data(wire[:-3]) == []  # most of a record
    assert s.receive_data(b"") == [RaggedEOF()]  # the record never completes


@pytest.mark.parametrize("side", ["server", "client"])
def test_eof_during_the_handshake_is_an_error_not_a_close(pki: PKI, side: str) -> None:
    s, c = server(pki), client(pki)
    c.start()
    hello = c.data_to_send()
    engine = s if side == "server" else c
    if side == "server":
        s.receive_data(hello[:50])
    error = expect_error(lambda: engine.receive_data(b""))
    assert error.during_handshake
    assert error.reason == "UNEXPECTED_EOF_WHILE_READING"
    assert "during the TLS handshake" in str(error)
    assert engine.closed and not engine.handshake_complete
    assert engine.receive_data(b"") == []


def test_data_after_eof_is_refused_as_a_local_error(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    c.close()
    assert s.receive_data(c.data_to_send()) == [CloseNotify()]
    assert s.receive_data(b"") == []
    with pytest.raises(TLSClosedError):
        s.receive_data(b"after the end")


@pytest.mark.parametrize("how", ["close", "failure"])
def test_send_after_close_or_failure_raises_tls_closed_error(pki: PKI, how: str) -> None:
    s, c = server(pki), client(pki)
    if how == "close":
        connect(s, c)
        s.close()
    else:
        expect_error(lambda: s.receive_data(b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(TLSClosedError) as info:
        s.send(b"data")
    assert isinstance(info.value, LocalProtocolError)
    assert not isinstance(info.value, ssl.SSLError)


def test_close_is_idempotent(pki: PKI) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    s.close()
    first = s.data_to_send()
    s.close()
    s.close()
    assert s.data_to_send() == b""
    assert feed(first, c) == [CloseNotify()]


@pytest.mark.parametrize("side", ["client", "server"])
def test_close_during_the_handshake_aborts(pki: PKI, side: str) -> None:
    s, c = server(pki), client(pki)
    c.start()
    hello = c.data_to_send()
    c.send(b"queued")
    s.receive_data(hello)
    if side == "client":
        engine, incoming = c, s.data_to_send()  # the server's flight, arriving too late
    else:
        move(s, c)
        engine, incoming = s, c.data_to_send()  # the client's Finished, arriving too late
    assert engine.data_to_send() == b""  # the owner took everything produced so far
    engine.close()
    assert engine.closed and not engine.handshake_complete
    assert engine.data_to_send() == b"" and engine.pending_output == 0
    assert incoming and engine.receive_data(incoming) == []
    assert engine.data_to_send() == b""  # no Finished, no close_notify: nothing at all
    engine.close()
    with pytest.raises(TLSClosedError):
        engine.send(b"x")


def test_close_with_unread_application_data_still_sends_close_notify(pki: PKI) -> None:
    """Records waiting unread make OpenSSL's shutdown fail (APPLICATION_DATA_AFTER_CLOSE_NOTIFY)
    after it wrote close_notify; the engine must not raise, and must let the alert out."""
    s, c = server(pki), client(pki)
    connect(s, c)
    c.send(b"unread")
    s._incoming.write(c.data_to_send())  # arrived, never read: bypass receive_data
    s.close()
    assert s.closed
    assert move(s, c) == [CloseNotify()]
    s.close()
    assert s.receive_data(b"whatever") == []


# --- ALPN -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "served", "expected"),
    [
        (["http/1.1"], ["http/1.1"], "http/1.1"),
        (["h2", "http/1.1"], ["http/1.1"], "http/1.1"),
        (["h2"], ["http/1.1"], None),  # no overlap: no protocol, not an error
        ([], ["http/1.1"], None),
    ],
)
def test_alpn(pki: PKI, offered: list[str], served: list[str], expected: str | None) -> None:
    s = server(pki, alpn_protocols=served)
    c = client(pki, alpn_protocols=offered)
    connect(s, c)
    assert s.info is not None and c.info is not None
    assert s.info.alpn_protocol == c.info.alpn_protocol == expected


# --- SNI --------------------------------------------------------------------------------------


def sni_server(pki: PKI, **options: Any) -> OpenSSLEngine:
    certificates = {
        "other.test": (pki.other.certfile, pki.other.keyfile),
        "*.wild.test": (pki.wild.certfile, pki.wild.keyfile),
    }
    return server(pki, sni_certificates=certificates, **options)


@pytest.mark.parametrize(
    ("hostname", "presented"),
    [
        ("other.test", ["other.test"]),
        ("OTHER.test", ["other.test"]),
        ("a.wild.test", ["*.wild.test"]),
        ("localhost", ["localhost"]),  # the default certificate
        ("deep.a.wild.test", ["localhost"]),  # a wildcard covers one label only
        ("unknown.test", ["localhost"]),
    ],
)
def test_sni_selects_the_certificate(pki: PKI, hostname: str, presented: list[str]) -> None:
    s = sni_server(pki)
    c = client(pki, hostname, check_hostname=False)  # see what is presented, even if wrong
    connect(s, c)
    assert c.info is not None and names(c.info.peer_certificate) == presented
    assert s.info is not None and s.info.server_name == hostname


def test_sni_certificate_verifies_for_its_name(pki: PKI) -> None:
    s, c = sni_server(pki), client(pki, "other.test")
    connect(s, c)
    assert c.info is not None and c.info.server_name == "other.test"


def test_strict_sni_refuses_an_unknown_name(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    s, c = sni_server(pki, strict_sni=True), client(pki, "unknown.test")
    c.start()
    with caplog.at_level(logging.INFO, logger="spcore.tls"):
        server_error = expect_error(lambda: move(c, s))
    assert server_error.during_handshake
    assert "unknown.test" in caplog.text
    client_error = expect_error(lambda: move(s, c))
    assert client_error.reason is not None and "UNRECOGNIZED_NAME" in client_error.reason


def test_strict_sni_accepts_known_names_and_no_name(pki: PKI) -> None:
    for hostname in ("other.test", "127.0.0.1"):
        s, c = sni_server(pki, strict_sni=True), client(pki, hostname)
        connect(s, c)


class BrokenMapping(dict[str, ssl.SSLContext]):
    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("broken certificate table")


def test_a_failing_sni_callback_fails_the_handshake_cleanly(
    pki: PKI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ctx = server_context(pki.server.certfile, pki.server.keyfile)
    assert ctx.sni_callback is not None
    monkeypatch.setattr(ctx.sni_callback, "_exact", BrokenMapping())
    s, c = OpenSSLEngine(ctx, server_side=True), client(pki)
    c.start()
    with caplog.at_level(logging.ERROR, logger="spcore.tls"):
        server_error = expect_error(lambda: move(c, s))
    assert server_error.reason == "CALLBACK_FAILED" and server_error.during_handshake
    assert "SNI callback failed" in caplog.text and "broken certificate table" in caplog.text
    client_error = expect_error(lambda: move(s, c))
    assert client_error.reason == "TLSV1_ALERT_INTERNAL_ERROR"
    assert unraisable == []


# --- client certificates (mTLS) ---------------------------------------------------------------


def mtls_server(pki: PKI, mode: str = "required") -> OpenSSLEngine:
    return server(pki, client_cert=mode, client_ca=pki.ca_file)


@VERSIONS
def test_client_certificate_accepted(pki: PKI, maximum: ssl.TLSVersion, version: str) -> None:
    s = mtls_server(pki)
    c = client(pki, maximum=maximum, certfile=pki.client.certfile, keyfile=pki.client.keyfile)
    events_s, _ = connect(s, c)
    info = next(e.info for e in events_s if isinstance(e, HandshakeComplete))
    assert info.version == version
    assert info.peer_certificate == der(pki.client)
    c.send(b"hello")
    assert move(c, s) == [ApplicationData(b"hello")]


def test_missing_client_certificate_fails_the_tls12_handshake(pki: PKI) -> None:
    s, c = mtls_server(pki), client(pki, maximum=TLS12)
    c.start()
    move(c, s)
    move(s, c)
    server_error = expect_error(lambda: move(c, s))
    assert server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert server_error.during_handshake
    client_error = expect_error(lambda: move(s, c))
    assert client_error.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert client_error.during_handshake and not c.handshake_complete


def test_missing_client_certificate_under_tls13_shows_on_the_first_read(pki: PKI) -> None:
    s, c = mtls_server(pki), client(pki)
    c.start()
    move(c, s)
    assert [type(e) for e in move(s, c)] == [HandshakeComplete]  # the client thinks all is well
    c.send(b"request")
    server_error = expect_error(lambda: move(c, s))
    assert server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    client_error = expect_error(lambda: move(s, c))
    assert client_error.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert not client_error.during_handshake
    assert c.closed


@VERSIONS
def test_client_certificate_from_an_unknown_ca_is_rejected(
    pki: PKI, maximum: ssl.TLSVersion, version: str
) -> None:
    s = mtls_server(pki)
    rogue = pki.rogue_client
    c = client(pki, maximum=maximum, certfile=rogue.certfile, keyfile=rogue.keyfile)
    c.start()
    move(c, s)
    move(s, c)
    server_error = expect_error(lambda: move(c, s))
    assert server_error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert server_error.verify_message == "unable to get local issuer certificate"
    client_error = expect_error(lambda: move(s, c))
    assert client_error.reason == "TLSV1_ALERT_UNKNOWN_CA"
    assert client_error.during_handshake == (version == "TLSv1.2")


def test_optional_client_certificate(pki: PKI) -> None:
    s, c = mtls_server(pki, "optional"), client(pki)
    connect(s, c)
    assert s.info is not None and s.info.peer_certificate is None
    s = mtls_server(pki, "optional")
    c = client(pki, certfile=pki.client.certfile, keyfile=pki.client.keyfile)
    connect(s, c)
    assert s.info is not None and s.info.peer_certificate == der(pki.client)


# --- renegotiation ----------------------------------------------------------------------------


class EngineOverSocket:
    """The least a driver does: feed what arrives, send what the engine produced, every time."""

    def __init__(self, engine: OpenSSLEngine, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        self.engine = engine
        self.sock = sock
        self.plaintext = bytearray()
        self.end: TLSEvent | None = None  # CloseNotify or RaggedEOF
        self.flights: list[bytes] = []  # each flush, for inspection

    def flush(self) -> None:
        out = self.engine.data_to_send()
        if out:
            self.flights.append(out)
            self.sock.sendall(out)

    def step(self) -> None:
        data = self.sock.recv(65536)
        try:
            events = self.engine.receive_data(data)
        finally:
            self.flush()
        for event in events:
            if isinstance(event, ApplicationData):
                self.plaintext += event.data
            elif isinstance(event, (CloseNotify, RaggedEOF)):
                self.end = event
        if not data and self.end is None:
            self.end = RaggedEOF()

    def handshake(self) -> None:
        self.engine.start()
        self.flush()
        while not self.engine.handshake_complete:
            self.step()

    def read(self, size: int) -> bytes:
        while len(self.plaintext) < size and self.end is None:
            self.step()
        data = bytes(self.plaintext[:size])
        del self.plaintext[:size]
        return data

    def wait_end(self) -> TLSEvent:
        while self.end is None:
            self.step()
        return self.end


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command-line tool is not installed")
def test_tls12_renegotiation_attempt_is_refused_without_hanging(pki: PKI) -> None:
    assert OPENSSL is not None
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        command = [OPENSSL, "s_client", "-tls1_2", "-connect", f"127.0.0.1:{port}"]
        command += ["-servername", "localhost", "-CAfile", str(pki.ca_file)]
        s_client = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            conn, _ = listener.accept()
            with conn:
                driver = EngineOverSocket(server(pki), conn)
                driver.handshake()
                assert driver.engine.info is not None
                assert driver.engine.info.version == "TLSv1.2"
                before = len(driver.flights)
                assert s_client.stdin is not None
                s_client.stdin.write(b"R\n")  # s_client's command: renegotiate
                s_client.stdin.flush()
                started = time.monotonic()
                try:
                    driver.wait_end()  # TimeoutError (a hang) or anything else fails the test
                    outcome: object = driver.end
                except TLSError as exc:
                    outcome = exc
                assert time.monotonic() - started < TIMEOUT
        finally:
            if s_client.poll() is None:
                s_client.kill()
            _, stderr = s_client.communicate(timeout=TIMEOUT)
    assert b"RENEGOTIATING" in stderr
    # Our answer to the new ClientHello was a (warning) no_renegotiation alert.
    answer = b"".join(driver.flights[before:])
    assert [kind for kind, _ in records(answer)][:1] == [0x15]
    # s_client gives up with a fatal alert; anything but a TLSError would be a crash.
    assert isinstance(outcome, TLSError | RaggedEOF | CloseNotify)
    if isinstance(outcome, TLSError):
        assert outcome.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


# --- the safe defaults ------------------------------------------------------------------------


def contexts(pki: PKI) -> list[ssl.SSLContext]:
    return [
        server_context(pki.server.certfile, pki.server.keyfile),
        client_context(cafile=pki.ca_file),
    ]


def test_contexts_have_safe_options(pki: PKI) -> None:
    for ctx in contexts(pki):
        assert ctx.minimum_version == TLS12
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert not ctx.options & getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


def test_only_forward_secret_aead_suites_for_tls12(pki: PKI) -> None:
    for ctx in contexts(pki):
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for cipher in tls12:
            assert cipher["aead"], cipher["name"]
            assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]  # no RSA key exchange
            for weak in ("CBC", "3DES", "DES-CBC", "RC4", "SHA1", "NULL", "MD5"):
                assert weak not in cipher["name"] and weak not in cipher["description"], cipher


def test_a_tls11_client_is_refused(pki: PKI) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself warns
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    c = OpenSSLEngine(old, server_side=False)
    try:
        c.start()
    except TLSError as exc:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {exc}")
    hello = c.data_to_send()
    assert hello[9:11] == b"\x03\x02"  # ClientHello.client_version: TLS 1.1, and nothing newer
    s = server(pki)
    assert expect_error(lambda: s.receive_data(hello)).reason == "UNSUPPORTED_PROTOCOL"
    assert expect_error(lambda: move(s, c)).reason == "TLSV1_ALERT_PROTOCOL_VERSION"


# --- interoperability with the standard library's ssl sockets ---------------------------------


def in_thread(function: Callable[[], T]) -> concurrent.futures.Future[T]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function)
    pool.shutdown(wait=False)
    return future


def recv_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 65536))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    with a, b:
        yield a, b


def test_server_engine_with_a_stdlib_client(
    pki: PKI, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = socket_pair
    up, down = random.Random(3).randbytes(MiB), random.Random(4).randbytes(MiB)

    def stdlib_client() -> tuple[bytes, bytes, str | None, str | None]:
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx.set_alpn_protocols(["http/1.1"])
        tls = ctx.wrap_socket(theirs, server_hostname="localhost")
        tls.sendall(up)
        received = recv_exactly(tls, MiB)
        after = tls.recv(1)  # b"": the server's close_notify
        version, alpn = tls.version(), tls.selected_alpn_protocol()
        tls.unwrap()  # our close_notify in return
        return received, after, version, alpn

    peer = in_thread(stdlib_client)
    driver = EngineOverSocket(server(pki), ours)
    driver.handshake()
    assert driver.read(MiB) == up
    driver.engine.send(down)
    driver.flush()
    driver.engine.close()
    driver.flush()
    received, after, version, alpn = peer.result(timeout=2 * TIMEOUT)
    assert received == down and after == b""
    assert version == "TLSv1.3" and alpn == "http/1.1"
    assert isinstance(driver.wait_end(), CloseNotify)


def test_client_engine_with_a_stdlib_server(
    pki: PKI, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = socket_pair
    up, down = random.Random(5).randbytes(MiB), random.Random(6).randbytes(MiB)

    def stdlib_server() -> tuple[bytes, bytes]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki.server.certfile, pki.server.keyfile)
        tls = ctx.wrap_socket(theirs, server_side=True)
        received = recv_exactly(tls, MiB)
        tls.sendall(down)
        after = tls.recv(1)  # b"": the client's close_notify
        tls.unwrap()
        return received, after

    peer = in_thread(stdlib_server)
    driver = EngineOverSocket(client(pki), ours)
    driver.handshake()
    driver.engine.send(up)
    driver.flush()
    assert driver.read(MiB) == down
    driver.engine.close()
    driver.flush()
    assert isinstance(driver.wait_end(), CloseNotify)
    received, after = peer.result(timeout=2 * TIMEOUT)
    assert received == up and after == b""
