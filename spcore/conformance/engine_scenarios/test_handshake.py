"""The handshake: every flight flushed (the alert of a failed one too, which asyncio and uvloop
lose), what it settled in neutral names, versions and suites refused with the right alert,
plaintext never taken for TLS, data queued until it is done (trio drives the handshake
before any read or write, after https://bugs.python.org/issue30141)."""

from __future__ import annotations

import contextlib
import ssl
import warnings

import pytest

from spcore.conformance.enginekit import (
    VERSIONS,
    Endpoints,
    connect,
    data_of,
    der,
    expect_error,
    feed,
    move,
    pump,
)
from spcore.conformance.harness import PKI
from spcore.tls import (
    PROFILES,
    Alert,
    ApplicationData,
    EngineFactory,
    HandshakeComplete,
    ServerContext,
)
from spcore.tls.config import TLSVersion


@VERSIONS
def test_each_flight_is_flushed_while_the_handshake_wants_more(
    ends: Endpoints, bytewise: bool, maximum: str, version: str
) -> None:
    s, c = ends.server(), ends.client(max_version=maximum)
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
def test_handshake_info_in_neutral_names(
    ends: Endpoints, pki: PKI, bytewise: bool, maximum: str, version: str
) -> None:
    s, c = ends.server(), ends.client(max_version=maximum)
    events_s, events_c = connect(s, c, bytewise)
    info_s = next(e.info for e in events_s if isinstance(e, HandshakeComplete))
    info_c = next(e.info for e in events_c if isinstance(e, HandshakeComplete))
    assert info_s == s.info and info_c == c.info
    assert info_s.version == info_c.version == version
    assert info_s.cipher == info_c.cipher  # the IANA name, whichever engine says it
    profile = PROFILES["intermediate"]
    suites = profile.tls13_suites if version == "TLSv1.3" else profile.tls12_suites
    assert info_s.cipher in suites
    assert version == "TLSv1.3" or "_ECDSA_" in info_s.cipher  # the certificate is ECDSA
    assert info_s.alpn_protocol == info_c.alpn_protocol == "http/1.1"
    assert info_s.server_name == info_c.server_name == "localhost"
    assert info_c.peer_certificate == der(pki.server)
    assert info_s.peer_certificate is None  # no client certificate asked for
    assert not info_s.resumed and not info_c.resumed


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_client_hello_over_several_records_is_answered_at_once(
    engine: EngineFactory, pki: PKI, version: TLSVersion
) -> None:
    """A ClientHello larger than a record (here by its ALPN list) comes in two records, both
    in one delivery: the server answers without waiting for more."""
    protocols = [f"{i:03d}" + "p" * 196 for i in range(90)]
    context = pki.client_context(version, alpn=[*protocols, "http/1.1"])
    server = ServerContext(pki.server_tls(), engine).new_engine()
    client, incoming, outgoing = _stdlib_handshake(context)
    hello = outgoing.read()
    assert hello[3:5] == b"\x40\x00" and len(hello) > 16384 + 5  # a full first record
    server.receive_data(hello)
    flight = server.data_to_send()
    assert flight[:1] == b"\x16" and flight[5:6] == b"\x02"  # the ServerHello
    incoming.write(flight)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    assert server.receive_data(outgoing.read())
    assert server.info is not None and server.info.alpn_protocol == "http/1.1"


def test_no_server_name_when_the_client_sends_no_sni(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client("127.0.0.1")  # no SNI for IP addresses (RFC 6066 3)
    connect(s, c)
    assert s.info is not None and s.info.server_name is None


def test_version_mismatch_fails_both_sides_with_the_servers_alert(ends: Endpoints) -> None:
    """OpenSSL answers protocol_version; GnuTLS handshake_failure (it looks for a TLS 1.3
    suite the TLS 1.2 client cannot have, and finds none)."""
    s = ends.server(min_version="1.3")
    c = ends.client(max_version="1.2")
    c.start()
    server_error = expect_error(lambda: move(c, s))
    assert server_error.alert in (Alert.PROTOCOL_VERSION, Alert.HANDSHAKE_FAILURE)
    assert server_error.alert_sent
    client_error = expect_error(lambda: move(s, c))
    assert client_error.alert is server_error.alert and not client_error.alert_sent
    assert client_error.during_handshake and server_error.during_handshake


def test_plaintext_is_never_taken_for_application_data(ends: Endpoints) -> None:
    s = ends.server()
    error = expect_error(lambda: s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert error.during_handshake
    assert s.receive_data(b"more") == [] and s.closed


def test_data_before_the_handshake_is_queued_then_delivered_in_order(
    ends: Endpoints, bytewise: bool
) -> None:
    s, c = ends.server(), ends.client()
    c.send(b"one ")
    c.send(b"two")
    s.send(b"alpha ")
    s.send(b"beta")
    assert c.pending_output == 7 and s.pending_output == 10  # plaintext waits outside TLS
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


# --- against the standard library's client, in memory ----------------------------------------


def _stdlib_handshake(
    context: ssl.SSLContext,
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A standard library client over memory BIOs, its ClientHello waiting in ``outgoing``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return client, incoming, outgoing


def test_a_tls11_client_is_refused_with_protocol_version(engine: EngineFactory, pki: PKI) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself warns
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    server = ServerContext(pki.server_tls(), engine).new_engine()
    try:
        client, incoming, outgoing = _stdlib_handshake(old)
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {exc}")
    hello = outgoing.read()
    assert hello[9:11] == b"\x03\x02"  # ClientHello.client_version: TLS 1.1, and nothing newer
    error = expect_error(lambda: server.receive_data(hello))
    assert error.alert is Alert.PROTOCOL_VERSION and error.alert_sent
    incoming.write(server.data_to_send())
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        client.do_handshake()


_OUTSIDE_THE_PROFILE = [
    "ECDHE-ECDSA-AES128-SHA256",  # CBC
    "ECDHE-ECDSA-AES256-SHA",  # CBC, SHA-1
    "AES128-GCM-SHA256",  # RSA key exchange: no forward secrecy
    "DHE-RSA-AES128-GCM-SHA256",
]


@pytest.mark.parametrize("suite", _OUTSIDE_THE_PROFILE)
def test_tls12_suites_outside_the_profile_are_refused(
    engine: EngineFactory, pki: PKI, suite: str
) -> None:
    context = pki.client_context("1.2")
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    server = ServerContext(pki.server_tls(), engine).new_engine()
    _, _, outgoing = _stdlib_handshake(context)
    error = expect_error(lambda: server.receive_data(outgoing.read()))
    assert error.during_handshake and error.alert_sent
    assert error.alert in (Alert.HANDSHAKE_FAILURE, Alert.INSUFFICIENT_SECURITY)


@pytest.mark.parametrize(
    "suite", [s for s in PROFILES["intermediate"].tls12_suites if "ECDSA" in s]
)
def test_each_tls12_suite_of_the_profile_is_taken(
    engine: EngineFactory, pki: PKI, suite: str
) -> None:
    from spcore.tls.openssl import IANA_TO_OPENSSL  # the stdlib client names suites its way

    context = pki.client_context("1.2")
    context.set_ciphers(IANA_TO_OPENSSL[suite])
    server = ServerContext(pki.server_tls(), engine).new_engine()
    client, incoming, outgoing = _stdlib_handshake(context)
    for _ in range(4):
        server.receive_data(outgoing.read())
        incoming.write(server.data_to_send())
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
    assert server.info is not None and server.info.cipher == suite
