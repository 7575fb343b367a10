"""Certificates and names: verification failures named and alerted, ALPN, SNI choosing the
certificate (and refusing unknown names when strict), client certificates and their failures
(under TLS 1.3 a rejected client certificate shows at the client's first read, after its
handshake completed).

The alerts are RFC 8446 6.2's for each reason (``spcore.tls.engine.verify_alert``), so a
peer learns the same thing whichever engine refused it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from spcore.conformance.enginekit import (
    VERSIONS,
    Endpoints,
    connect,
    der,
    expect_error,
    feed,
    move,
    names,
)
from spcore.conformance.harness import PKI
from spcore.tls import (
    Alert,
    ApplicationData,
    HandshakeComplete,
    TLSEngine,
    TLSError,
    VerifyFailure,
)
from spcore.tls.engine import verify_alert


def _received_by_the_server(error: TLSError, sent: Alert, wire: bytes, version: str) -> bool:
    """Did the server read the client's alert? A client that has not switched its write keys
    yet (OpenSSL's) sends it unencrypted under TLS 1.3, where a server expecting handshake
    keys (GnuTLS) cannot read it: then the server's handshake just fails."""
    if error.alert is sent and not error.alert_sent:
        return True
    return version == "TLSv1.3" and wire[:1] == b"\x15"  # a plaintext alert record


@VERSIONS
@pytest.mark.parametrize(
    ("case", "failure"),
    [
        ("unknown_ca", VerifyFailure.UNTRUSTED),
        ("self_signed", VerifyFailure.UNTRUSTED),
        ("expired", VerifyFailure.EXPIRED),
        ("wrong_host", VerifyFailure.NAME_MISMATCH),
    ],
)
def test_certificate_verification_failure_is_named_and_alerted(
    ends: Endpoints,
    pki: PKI,
    bytewise: bool,
    maximum: str,
    version: str,
    case: str,
    failure: VerifyFailure,
) -> None:
    cert = {"self_signed": pki.self_signed, "expired": pki.expired}.get(case, pki.server)
    s = ends.server(cert)
    trust = pki.rogue_ca_file if case == "unknown_ca" else pki.ca_file
    c = ends.client(
        "wrong.test" if case == "wrong_host" else "localhost", max_version=maximum, trust=trust
    )
    c.start()
    move(c, s, bytewise)
    error = expect_error(lambda: move(s, c, bytewise))
    assert error.verify_failure is failure
    assert error.verify_message and error.verify_message in str(error)
    assert error.alert is verify_alert(failure, tls13=version == "TLSv1.3") and error.alert_sent
    assert error.during_handshake and c.closed and not c.handshake_complete
    wire = c.data_to_send()
    server_error = expect_error(lambda: feed(wire, s, bytewise))
    assert server_error.during_handshake and s.closed
    assert _received_by_the_server(server_error, error.alert, wire, version), server_error
    if not server_error.alert_sent:
        assert s.data_to_send() == b""  # no answer to a fatal alert


# --- ALPN --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "served", "expected"),
    [
        (["http/1.1"], ["http/1.1"], "http/1.1"),
        (["h2", "http/1.1"], ["http/1.1"], "http/1.1"),
        (["http/1.1", "h2"], ["h2", "http/1.1"], "h2"),  # the server's preference
        (["h2"], ["http/1.1"], None),  # no overlap: no protocol, not an error
        ([], ["http/1.1"], None),
    ],
)
def test_alpn(ends: Endpoints, offered: list[str], served: list[str], expected: str | None) -> None:
    s = ends.server(alpn=served)
    c = ends.client(alpn=offered)
    connect(s, c)
    assert s.info is not None and c.info is not None
    assert s.info.alpn_protocol == c.info.alpn_protocol == expected


# --- SNI ---------------------------------------------------------------------------------------


def _sni_server(ends: Endpoints, pki: PKI, **options: Any) -> TLSEngine:
    by_name = {"other.test": PKI.certificate(pki.other), "*.wild.test": PKI.certificate(pki.wild)}
    return ends.server(sni=by_name, **options)


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
def test_sni_selects_the_certificate(
    ends: Endpoints, pki: PKI, hostname: str, presented: list[str]
) -> None:
    s = _sni_server(ends, pki)
    c = ends.client(hostname, verify=False)  # see what is presented, even if wrong
    connect(s, c)
    assert c.info is not None and names(c.info.peer_certificate) == presented
    assert s.info is not None and s.info.server_name is not None
    assert s.info.server_name.lower() == hostname.lower()


def test_sni_certificate_verifies_for_its_name(ends: Endpoints, pki: PKI) -> None:
    s, c = _sni_server(ends, pki), ends.client("other.test")
    connect(s, c)
    assert c.info is not None and c.info.server_name == "other.test"


def test_strict_sni_refuses_an_unknown_name(
    ends: Endpoints, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    s, c = _sni_server(ends, pki, strict_sni=True), ends.client("unknown.test")
    c.start()
    with caplog.at_level(logging.INFO):
        server_error = expect_error(lambda: move(c, s))
    assert server_error.during_handshake
    assert server_error.alert is Alert.UNRECOGNIZED_NAME and server_error.alert_sent
    assert "unknown.test" in str(server_error) + caplog.text  # the log says which name
    client_error = expect_error(lambda: move(s, c))
    assert client_error.alert is Alert.UNRECOGNIZED_NAME and not client_error.alert_sent


def test_strict_sni_accepts_known_names_and_no_name(ends: Endpoints, pki: PKI) -> None:
    for hostname in ("other.test", "127.0.0.1"):
        s, c = _sni_server(ends, pki, strict_sni=True), ends.client(hostname)
        connect(s, c)


# --- client certificates (mTLS) ------------------------------------------------------------------


def _mtls_server(ends: Endpoints, pki: PKI, mode: str = "required") -> TLSEngine:
    return ends.server(client_cert=mode, client_ca=pki.ca_file)


@VERSIONS
def test_client_certificate_accepted(ends: Endpoints, pki: PKI, maximum: str, version: str) -> None:
    s = _mtls_server(ends, pki)
    c = ends.client(max_version=maximum, cert=pki.client)
    events_s, _ = connect(s, c)
    info = next(e.info for e in events_s if isinstance(e, HandshakeComplete))
    assert info.version == version
    assert info.peer_certificate == der(pki.client)
    c.send(b"hello")
    assert move(c, s) == [ApplicationData(b"hello")]


def test_missing_client_certificate_fails_the_tls12_handshake(ends: Endpoints, pki: PKI) -> None:
    s, c = _mtls_server(ends, pki), ends.client(max_version="1.2")
    c.start()
    move(c, s)
    move(s, c)
    server_error = expect_error(lambda: move(c, s))
    assert server_error.verify_failure is VerifyFailure.MISSING
    assert (
        server_error.alert is Alert.HANDSHAKE_FAILURE and server_error.alert_sent
    )  # RFC 5246 7.4.6
    assert server_error.during_handshake
    client_error = expect_error(lambda: move(s, c))
    assert client_error.alert is Alert.HANDSHAKE_FAILURE and not client_error.alert_sent
    assert client_error.during_handshake and not c.handshake_complete


def test_missing_client_certificate_under_tls13_shows_on_the_first_read(
    ends: Endpoints, pki: PKI
) -> None:
    s, c = _mtls_server(ends, pki), ends.client()
    c.start()
    move(c, s)
    assert [type(e) for e in move(s, c)] == [HandshakeComplete]
    c.send(b"request")
    server_error = expect_error(lambda: move(c, s))
    assert server_error.verify_failure is VerifyFailure.MISSING
    assert server_error.alert is Alert.CERTIFICATE_REQUIRED and server_error.alert_sent  # 4.4.2.4
    client_error = expect_error(lambda: move(s, c))
    assert client_error.alert is Alert.CERTIFICATE_REQUIRED and not client_error.alert_sent
    assert not client_error.during_handshake  # the client thought all was well
    assert c.closed


@VERSIONS
def test_client_certificate_from_an_unknown_ca_is_refused(
    ends: Endpoints, pki: PKI, maximum: str, version: str
) -> None:
    s = _mtls_server(ends, pki)
    c = ends.client(max_version=maximum, cert=pki.rogue_client)
    c.start()
    move(c, s)
    move(s, c)
    server_error = expect_error(lambda: move(c, s))
    assert server_error.verify_failure is VerifyFailure.UNTRUSTED
    assert server_error.verify_message
    assert server_error.alert is Alert.UNKNOWN_CA and server_error.alert_sent
    client_error = expect_error(lambda: move(s, c))
    assert client_error.alert is Alert.UNKNOWN_CA and not client_error.alert_sent
    assert client_error.during_handshake == (version == "TLSv1.2")


def test_optional_client_certificate(ends: Endpoints, pki: PKI) -> None:
    s, c = _mtls_server(ends, pki, "optional"), ends.client()
    connect(s, c)
    assert s.info is not None and s.info.peer_certificate is None
    s = _mtls_server(ends, pki, "optional")
    c = ends.client(cert=pki.client)
    connect(s, c)
    assert s.info is not None and s.info.peer_certificate == der(pki.client)
