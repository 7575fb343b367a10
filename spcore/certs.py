"""Development and test certificates.

The embedded default server needs a certificate before anyone has configured one, and the TLS
tests and the conformance suite need a small PKI (a CA, server and client certificates, an
expired one). Both come from one certificate builder so the self-signed and the CA-issued
certificates carry the same, verifier-friendly extensions.

This is the one core module that touches the disk (the development certificate is cached so
that a browser exception or a trusted copy keeps working across runs). Like the rest of
``spcore`` it never reads the clock: every function that needs the time takes ``now``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pathlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertPair",
    "CertificateAuthority",
    "CertificateError",
    "check_cert_key",
    "default_cache_dir",
    "dev_certificate",
]

DEV_COMMON_NAME = "spcore development certificate"
DEV_NAMES = ("localhost", "127.0.0.1", "::1")
DEV_CERT_FILE = "dev-cert.pem"
DEV_KEY_FILE = "dev-key.pem"

_ONE_DAY = datetime.timedelta(days=1)
_LEAF_LIFETIME = datetime.timedelta(days=365)
_CA_LIFETIME = datetime.timedelta(days=3650)
#: A cached development certificate closer than this to its expiry is replaced, so a server
#: started today does not stop working in the middle of next week.
_RENEW_BEFORE = datetime.timedelta(days=30)

_Role = Literal["ca", "server", "client"]
_Key = ec.EllipticCurvePrivateKey
_LeafKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate file and the PEM file of its unencrypted private key."""

    certfile: pathlib.Path
    keyfile: pathlib.Path


class CertificateError(Exception):
    """A certificate or key file is unusable; the message names the file and the problem."""


def default_cache_dir() -> pathlib.Path:
    """Where the development certificate is cached.

    ``$SPCORE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/spcore``, else ``~/.cache/spcore``
    (empty variables count as unset, as the XDG specification asks).
    """
    explicit = os.environ.get("SPCORE_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "spcore"


def dev_certificate(
    now: datetime.datetime, cache_dir: os.PathLike[str] | str | None = None
) -> CertPair:
    """Return the cached self-signed development certificate, creating it when needed.

    The cached pair is reused while both files are readable, the key matches the certificate
    and the certificate stays valid for at least 30 more days at ``now``; otherwise a new
    ECDSA P-256 certificate for localhost, 127.0.0.1 and ::1 replaces it.
    """
    now = _utc(now)
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pair = CertPair(directory / DEV_CERT_FILE, directory / DEV_KEY_FILE)
    if _fresh(pair, now):
        return pair
    with _cache_lock(directory):  # one writer at a time, across processes
        if not _fresh(pair, now):  # another process may have renewed it while we waited
            key = _new_key()
            cert = _build_certificate(
                key,
                DEV_COMMON_NAME,
                role="server",
                names=DEV_NAMES,
                not_before=now - _ONE_DAY,
                not_after=now - _ONE_DAY + _LEAF_LIFETIME,
            )
            _write_pair(pair, cert, key)
    return pair


@contextlib.contextmanager
def _cache_lock(directory: pathlib.Path) -> Iterator[None]:
    """An exclusive lock on ``directory/.lock`` (flock on POSIX, msvcrt.locking on Windows)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CertificateError(f"Cannot write {directory}: {exc.strerror or exc}.") from exc
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_cert_key(certfile: os.PathLike[str] | str, keyfile: os.PathLike[str] | str) -> None:
    """Raise `CertificateError` unless the files hold a PEM certificate and its private key."""
    _load_pair(pathlib.Path(certfile), pathlib.Path(keyfile))


class CertificateAuthority:
    """A throwaway CA for tests and the conformance suite."""

    def __init__(self, certificate: x509.Certificate, key: _Key) -> None:
        self._cert = certificate
        self._key = key

    @classmethod
    def create(cls, now: datetime.datetime, name: str = "spcore test CA") -> CertificateAuthority:
        """Make a new CA, valid from a day before ``now`` for ten years."""
        now = _utc(now)
        key = _new_key()
        cert = _build_certificate(
            key, name, role="ca", not_before=now - _ONE_DAY, not_after=now + _CA_LIFETIME
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, directory: os.PathLike[str] | str) -> pathlib.Path:
        """Write the CA certificate as ``directory/ca.pem`` (what a client would trust)."""
        path = pathlib.Path(directory) / "ca.pem"
        _write_file(path, self.cert_pem, 0o644)
        return path

    def issue(
        self,
        directory: os.PathLike[str] | str,
        stem: str,
        names: Sequence[str],
        now: datetime.datetime,
        *,
        client: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        rsa_bits: int | None = None,
    ) -> CertPair:
        """Issue a leaf certificate as ``directory/{stem}-cert.pem`` and ``{stem}-key.pem``.

        ``names`` are DNS names or IP literals (the first is also the common name). A server
        certificate is valid for serverAuth, a ``client=True`` one for clientAuth. The default
        validity runs from a day before ``now`` for a year; pass ``not_after`` in the past to
        get an expired certificate. The key is ECDSA P-256, or RSA of ``rsa_bits``.
        """
        if not names:
            raise ValueError("a certificate needs at least one name")
        now = _utc(now)
        start = _utc(not_before) if not_before is not None else now - _ONE_DAY
        end = _utc(not_after) if not_after is not None else start + _LEAF_LIFETIME
        key: _LeafKey = (
            _new_key() if rsa_bits is None else rsa.generate_private_key(65537, rsa_bits)
        )
        cert = _build_certificate(
            key,
            names[0],
            role="client" if client else "server",
            names=names,
            not_before=start,
            not_after=end,
            issuer=(self._cert, self._key),
        )
        directory = pathlib.Path(directory)
        pair = CertPair(directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem")
        _write_pair(pair, cert, key)
        return pair

    def ocsp_response(
        self,
        certfile: os.PathLike[str] | str,
        now: datetime.datetime,
        *,
        revoked: bool = False,
        lifetime: datetime.timedelta = datetime.timedelta(days=7),
    ) -> bytes:
        """A DER OCSP response (RFC 6960) for a certificate this CA issued, as an OCSP
        responder would sign it at ``now``: status good (or revoked), valid for ``lifetime``.
        What a server staples; tests make their own instead of asking a responder."""
        now = _utc(now)
        cert = x509.load_pem_x509_certificate(pathlib.Path(certfile).read_bytes())
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self._cert,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=now - _ONE_DAY / 24,
            next_update=now + lifetime,
            revocation_time=now - _ONE_DAY if revoked else None,
            revocation_reason=None,
        )
        # By name: GnuTLS finds a signer that is not in the response by its DN only.
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, self._cert)
        response = builder.sign(self._key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)


# --- building ---------------------------------------------------------------------------------


def _new_key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _build_certificate(
    key: _LeafKey,
    common_name: str,
    *,
    role: _Role,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    names: Sequence[str] = (),
    issuer: tuple[x509.Certificate, _Key] | None = None,
) -> x509.Certificate:
    """Build and sign one certificate; self-signed when ``issuer`` is None.

    The extensions are the ones strict verifiers (OpenSSL's X509_STRICT, browsers) expect:
    critical BasicConstraints and KeyUsage, a SubjectKeyIdentifier, an AuthorityKeyIdentifier
    on issued certificates, and an ExtendedKeyUsage on leaves.
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = key.public_key()
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    is_ca = role == "ca"
    constraints = x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(constraints, critical=True)
        .add_extension(_key_usage(cert_sign=is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if not is_ca:
        usage = (
            ExtendedKeyUsageOID.CLIENT_AUTH if role == "client" else ExtendedKeyUsageOID.SERVER_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        san = x509.SubjectAlternativeName([_general_name(name) for name in names])
        builder = builder.add_extension(san, critical=False)
    if issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key())
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("certificate times must be timezone-aware (UTC)")
    return moment.astimezone(datetime.timezone.utc)


# --- files ------------------------------------------------------------------------------------


def _write_pair(pair: CertPair, cert: x509.Certificate, key: _LeafKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(pair.keyfile, key_pem, 0o600)
    _write_file(pair.certfile, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_file(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Write through a private temporary file and rename it, so readers never see half a file.

    ``mkstemp`` creates the file readable by its owner only, so a key is never exposed, not
    even while it is being written.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise CertificateError(f"Cannot write {path}: {exc.strerror or exc}.") from exc


def _fresh(pair: CertPair, now: datetime.datetime) -> bool:
    """Whether the pair loads, matches, is valid at ``now`` and stays so for the renewal margin."""
    try:
        cert = _load_pair(pair.certfile, pair.keyfile)
    except CertificateError:
        return False
    return cert.not_valid_before_utc <= now and now + _RENEW_BEFORE <= cert.not_valid_after_utc


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"The {what} file {path} does not exist.") from None
    except OSError as exc:
        raise CertificateError(
            f"The {what} file {path} cannot be read: {exc.strerror or exc}."
        ) from exc


def _load_pair(certfile: pathlib.Path, keyfile: pathlib.Path) -> x509.Certificate:
    cert_data = _read(certfile, "certificate")
    key_data = _read(keyfile, "key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
        cert_public = cert.public_key().public_bytes(*spki)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            f"The certificate file {certfile} does not contain a PEM certificate."
        ) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise CertificateError(
            f"The key file {keyfile} holds an encrypted private key; an unencrypted one is needed."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            f"The key file {keyfile} does not contain a PEM private key."
        ) from None
    if key.public_key().public_bytes(*spki) != cert_public:
        raise CertificateError(
            f"The private key in {keyfile} does not match the certificate in {certfile}."
        )
    return cert
