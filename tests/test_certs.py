"""Development certificate cache, certificate checks and the test PKI, verified by stdlib ssl."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import ssl
import stat
import sys
import threading
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spcore.certs import (
    CertificateAuthority,
    CertificateError,
    CertPair,
    check_cert_key,
    default_cache_dir,
    dev_certificate,
)

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
E = TypeVar("E", bound=x509.ExtensionType)
POSIX_MODES = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def load(pair: CertPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.certfile.read_bytes())


def ext(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


def fingerprint(path: pathlib.Path) -> tuple[bytes, int, int]:
    info = path.stat()
    return path.read_bytes(), info.st_ino, info.st_mtime_ns


@pytest.fixture
def real_now() -> datetime.datetime:
    """OpenSSL checks validity against the real clock, so handshake tests issue for it."""
    return datetime.datetime.now(datetime.timezone.utc)


# --- the development certificate --------------------------------------------------------------


def test_dev_certificate_is_created_in_the_cache_dir(tmp_path: pathlib.Path) -> None:
    pair = dev_certificate(NOW, tmp_path)
    assert pair == CertPair(tmp_path / "dev-cert.pem", tmp_path / "dev-key.pem")
    check_cert_key(pair.certfile, pair.keyfile)


def test_dev_certificate_contents(tmp_path: pathlib.Path) -> None:
    cert = load(dev_certificate(NOW, tmp_path))
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "spcore development certificate"
    assert cert.issuer == cert.subject
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert ext(cert, x509.BasicConstraints) == x509.BasicConstraints(ca=False, path_length=None)
    usage = ext(cert, x509.KeyUsage)
    assert usage.digital_signature and not usage.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = cert.public_key()
    assert ext(cert, x509.SubjectKeyIdentifier) == x509.SubjectKeyIdentifier.from_public_key(key)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert cert.not_valid_before_utc == NOW - DAY
    assert cert.not_valid_after_utc == NOW - DAY + 365 * DAY


@POSIX_MODES
def test_dev_certificate_key_is_private(tmp_path: pathlib.Path) -> None:
    pair = dev_certificate(NOW, tmp_path / "cache")
    assert stat.S_IMODE(pair.keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_dev_certificate_leaves_no_temporary_files(tmp_path: pathlib.Path) -> None:
    dev_certificate(NOW, tmp_path)
    # .lock serialises writers across processes; it stays, empty.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "dev-cert.pem", "dev-key.pem"]
    assert (tmp_path / ".lock").stat().st_size == 0


@pytest.mark.parametrize("later", [DAY, 334 * DAY])
def test_dev_certificate_is_reused_while_valid_for_30_more_days(
    tmp_path: pathlib.Path, later: datetime.timedelta
) -> None:
    pair = dev_certificate(NOW, tmp_path)
    before = fingerprint(pair.certfile), fingerprint(pair.keyfile)
    assert dev_certificate(NOW + later, tmp_path) == pair
    assert (fingerprint(pair.certfile), fingerprint(pair.keyfile)) == before


def test_dev_certificate_is_regenerated_when_about_to_expire(tmp_path: pathlib.Path) -> None:
    first = load(dev_certificate(NOW, tmp_path))
    renewed = load(dev_certificate(NOW + 340 * DAY, tmp_path))
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_before_utc == NOW + 339 * DAY


def test_dev_certificate_is_regenerated_when_not_yet_valid(tmp_path: pathlib.Path) -> None:
    first = load(dev_certificate(NOW, tmp_path))
    earlier = load(dev_certificate(NOW - 10 * DAY, tmp_path))
    assert earlier.serial_number != first.serial_number


def test_dev_certificate_is_regenerated_when_the_key_does_not_match(
    tmp_path: pathlib.Path,
) -> None:
    pair = dev_certificate(NOW, tmp_path)
    serial = load(pair).serial_number
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pair.keyfile.write_bytes(other)
    assert dev_certificate(NOW, tmp_path) == pair
    assert load(pair).serial_number != serial
    check_cert_key(pair.certfile, pair.keyfile)


@pytest.mark.parametrize("victim", ["dev-cert.pem", "dev-key.pem"])
def test_dev_certificate_is_regenerated_over_garbage(tmp_path: pathlib.Path, victim: str) -> None:
    pair = dev_certificate(NOW, tmp_path)
    (tmp_path / victim).write_bytes(b"\x00garbage\n" * 10)
    dev_certificate(NOW, tmp_path)
    check_cert_key(pair.certfile, pair.keyfile)


def test_dev_certificate_concurrent_callers_end_with_a_matching_pair(
    tmp_path: pathlib.Path,
) -> None:
    results: list[CertPair] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(dev_certificate(NOW, tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(results) == 6
    check_cert_key(results[0].certfile, results[0].keyfile)


def test_dev_certificate_needs_an_aware_time(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        dev_certificate(datetime.datetime(2030, 1, 1), tmp_path)


def test_dev_certificate_reports_an_unwritable_cache_dir(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CertificateError, match="Cannot write"):
        dev_certificate(NOW, blocker / "cache")


def test_default_cache_dir_precedence(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPCORE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "spcore"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "spcore"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "spcore"
    monkeypatch.setenv("SPCORE_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    assert dev_certificate(NOW).certfile == tmp_path / "explicit" / "dev-cert.pem"


# --- check_cert_key ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(datetime.datetime.now(datetime.timezone.utc))


@pytest.fixture
def server(
    ca: CertificateAuthority, tmp_path: pathlib.Path, real_now: datetime.datetime
) -> CertPair:
    return ca.issue(tmp_path, "server", ["localhost", "127.0.0.1"], real_now)


def check_error(certfile: pathlib.Path, keyfile: pathlib.Path) -> str:
    with pytest.raises(CertificateError) as info:
        check_cert_key(certfile, keyfile)
    message = str(info.value)
    assert message.endswith(".") and message[0].isupper()
    return message


def test_check_cert_key_accepts_a_matching_pair(server: CertPair) -> None:
    check_cert_key(str(server.certfile), str(server.keyfile))


def test_check_cert_key_missing_files(server: CertPair, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.pem"
    message = check_error(missing, server.keyfile)
    assert str(missing) in message and "certificate file" in message and "does not exist" in message
    message = check_error(server.certfile, missing)
    assert str(missing) in message and "key file" in message and "does not exist" in message


def test_check_cert_key_unreadable_file(server: CertPair, tmp_path: pathlib.Path) -> None:
    message = check_error(tmp_path, server.keyfile)  # a directory cannot be read as a file
    assert str(tmp_path) in message and "cannot be read" in message


@pytest.mark.parametrize("content", [b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_check_cert_key_not_a_pem_certificate(
    server: CertPair, tmp_path: pathlib.Path, content: bytes
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    message = check_error(bad, server.keyfile)
    assert str(bad) in message and "does not contain a PEM certificate" in message


def test_check_cert_key_swapped_files(server: CertPair) -> None:
    message = check_error(server.keyfile, server.certfile)
    assert str(server.keyfile) in message and "PEM certificate" in message
    message = check_error(server.certfile, server.certfile)
    assert "does not contain a PEM private key" in message


def test_check_cert_key_encrypted_key(server: CertPair, tmp_path: pathlib.Path) -> None:
    key = serialization.load_pem_private_key(server.keyfile.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    message = check_error(server.certfile, encrypted)
    assert str(encrypted) in message and "encrypted" in message


def test_check_cert_key_mismatch(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path, real_now: datetime.datetime
) -> None:
    other = ca.issue(tmp_path, "other", ["localhost"], real_now)
    message = check_error(server.certfile, other.keyfile)
    assert str(other.keyfile) in message and str(server.certfile) in message
    assert "does not match" in message


# --- the test CA ------------------------------------------------------------------------------


def test_ca_certificate(ca: CertificateAuthority, tmp_path: pathlib.Path) -> None:
    path = ca.write_ca(tmp_path)
    assert path.read_bytes() == ca.cert_pem
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=spcore test CA"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    assert ext(cert, x509.KeyUsage).key_cert_sign


def test_issued_server_certificate(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path
) -> None:
    assert server == CertPair(tmp_path / "server-cert.pem", tmp_path / "server-key.pem")
    cert = load(server)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = ext(cert, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ext(ca_cert, x509.SubjectKeyIdentifier).digest
    if sys.platform != "win32":
        assert stat.S_IMODE(server.keyfile.stat().st_mode) == 0o600


def test_issued_client_certificate(
    ca: CertificateAuthority, tmp_path: pathlib.Path, real_now: datetime.datetime
) -> None:
    cert = load(
        ca.issue(tmp_path, "alice", ["alice.example", "bob.example"], real_now, client=True)
    )
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice.example"


def test_issue_needs_a_name(ca: CertificateAuthority, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        ca.issue(tmp_path, "nameless", [], NOW)


# --- verification by stdlib ssl, in memory ----------------------------------------------------


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake between two SSLObjects over memory BIOs; return (client, server)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3 reports a rejected client certificate only on the client's first read.
            server.write(b"ping")
            c_in.write(s_out.read())
            assert client.read(4) == b"ping"
            return client, server
    raise AssertionError("handshake did not finish")


def server_context(pair: CertPair, client_ca: CertificateAuthority | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.certfile, pair.keyfile)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.cert_pem.decode())
    return ctx


def client_context(cafile: pathlib.Path, pair: CertPair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=os.fspath(cafile))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    if pair is not None:
        ctx.load_cert_chain(pair.certfile, pair.keyfile)
    return ctx


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_ca_issued_server_certificate_verifies(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path, hostname: str
) -> None:
    client, _ = handshake(server_context(server), client_context(ca.write_ca(tmp_path)), hostname)
    peer = client.getpeercert()
    assert peer and ("commonName", "localhost") in peer["subject"][0]


def test_wrong_hostname_is_refused(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(server_context(server), client_context(ca.write_ca(tmp_path)), "example.org")


def test_expired_certificate_is_refused(
    ca: CertificateAuthority, tmp_path: pathlib.Path, real_now: datetime.datetime
) -> None:
    expired = ca.issue(
        tmp_path,
        "expired",
        ["localhost"],
        real_now,
        not_before=real_now - 30 * DAY,
        not_after=real_now - DAY,
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        handshake(server_context(expired), client_context(ca.write_ca(tmp_path)), "localhost")


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_dev_certificate_verifies_when_trusted(
    tmp_path: pathlib.Path, real_now: datetime.datetime, hostname: str
) -> None:
    pair = dev_certificate(real_now, tmp_path)
    handshake(server_context(pair), client_context(pair.certfile), hostname)


def test_client_certificate_is_accepted(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path, real_now: datetime.datetime
) -> None:
    alice = ca.issue(tmp_path, "alice", ["alice.example"], real_now, client=True)
    ctx = client_context(ca.write_ca(tmp_path), alice)
    _, peer_side = handshake(server_context(server, client_ca=ca), ctx, "localhost")
    peer = peer_side.getpeercert()
    assert peer and ("commonName", "alice.example") in peer["subject"][0]


def test_server_certificate_is_refused_as_client_certificate(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path
) -> None:
    ctx = client_context(ca.write_ca(tmp_path), server)  # serverAuth only: wrong purpose
    with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
        handshake(server_context(server, client_ca=ca), ctx, "localhost")


def test_client_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, server: CertPair, tmp_path: pathlib.Path, real_now: datetime.datetime
) -> None:
    stranger = CertificateAuthority.create(real_now, "stranger CA")
    mallory = stranger.issue(tmp_path, "mallory", ["mallory.example"], real_now, client=True)
    ctx = client_context(ca.write_ca(tmp_path), mallory)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(server_context(server, client_ca=ca), ctx, "localhost")
