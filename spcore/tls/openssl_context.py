"""The OpenSSL engine's per-listener state: ``ssl.SSLContext``s built from the neutral config.

One context per certificate (the default one, then one per SNI name), each with the profile's
versions and TLS 1.2 suites, no compression, no renegotiation, and unexpected EOFs left
visible. The SNI callback picks the context for the name the client sent through the neutral
name table, and never lets an exception escape into OpenSSL (that would only reach
``sys.unraisablehook`` and fail the handshake with an unhelpful reason).

Python's ``ssl`` cannot load a key from memory, staple OCSP responses or take session-ticket
keys: PEM bytes go through an anonymous file, and the last two are refused with
``EngineUnsupported``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator

from .config import (
    Certificate,
    ClientTLS,
    ServerTLS,
    Source,
    TLSConfigError,
    TLSVersion,
    describe,
    read_source,
)
from .engine import EngineUnsupported, Feature
from .names import NameTable
from .openssl import IANA_TO_OPENSSL, SNI_ATTRIBUTE, OpenSSLEngine

__all__ = ["OPENSSL", "OpenSSLClientState", "OpenSSLFactory", "OpenSSLServerState"]

log = logging.getLogger("spcore.tls")

_TLS_VERSIONS: dict[TLSVersion, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_OPTIONS = ("ciphers",)


def _openssl_error(exc: ssl.SSLError | OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc.strerror or exc)


@contextlib.contextmanager
def _as_file(data: bytes) -> Iterator[str]:
    """A file name whose content is ``data``, for APIs that only read files.

    An anonymous memory file where the system has them (no key ever touches a disk), else a
    private temporary file removed at once.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("spcore-pem", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="spcore-") as directory:
        path = os.path.join(directory, "pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            handle.write(data)
        yield path


def _load_chain(ctx: ssl.SSLContext, certificate: Certificate) -> None:
    chain, key = certificate.read()  # a missing file is named here
    try:
        with _as_file(chain) as chain_file, _as_file(key) as key_file:
            ctx.load_cert_chain(chain_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"cannot load {certificate.describe()} with its key: {_openssl_error(exc)}"
        ) from None


def _load_trust(ctx: ssl.SSLContext, source: Source, what: str) -> None:
    data = read_source(source, what)
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) else exc
        raise TLSConfigError(f"cannot load {describe(source, what)}: {reason}") from None


def _context(
    config: ServerTLS | ClientTLS, purpose: int, engine_options: dict[str, str]
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    versions = config.versions
    ctx.minimum_version = _TLS_VERSIONS[versions[0]]
    ctx.maximum_version = _TLS_VERSIONS[versions[-1]]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ignore_eof = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    ctx.options &= ~ignore_eof  # keep ragged EOFs distinguishable from close_notify
    ciphers = engine_options.get("ciphers") or ":".join(
        IANA_TO_OPENSSL[name] for name in config.cipher_profile.tls12_suites
    )
    try:
        # TLS 1.3 suites stay at OpenSSL's defaults: the profiles' three, which Python's ssl
        # cannot change (and a TLS 1.3-only profile still needs some TLS 1.2 string here).
        ctx.set_ciphers(ciphers or "ECDHE+AESGCM")
    except ssl.SSLError:
        raise TLSConfigError(f"OpenSSL accepts none of the ciphers {ciphers!r}") from None
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    return ctx


class _SNISelector:
    """The SNI callback: record the requested name, switch to its certificate's context."""

    def __init__(self, table: NameTable[ssl.SSLContext], strict: bool) -> None:
        self.table = table
        self._strict = strict

    def __call__(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        try:
            setattr(sslobj, SNI_ATTRIBUTE, name)
            if name is None:
                return None
            chosen = self.table.lookup(name)
            if chosen is not None:
                sslobj.context = chosen
            elif self._strict:
                log.info("TLS: refusing unknown server name %r", name)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None
        except Exception:
            log.exception("TLS: SNI callback failed for %r", name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR


def _refuse_unsupported(config: ServerTLS) -> None:
    for certificate in config.certificates():
        if certificate.ocsp_response is not None:
            raise EngineUnsupported(
                "the openssl engine cannot staple OCSP responses (Python's ssl module has no "
                "API for it); use the gnutls engine"
            )
    if config.ticket_key is not None:
        raise EngineUnsupported(
            "the openssl engine cannot take session-ticket keys (Python's ssl module has no "
            "API for them); use the gnutls engine"
        )


class OpenSSLServerState:
    """The contexts of one listener: the default certificate's, and one per SNI name."""

    def __init__(self, config: ServerTLS) -> None:
        _refuse_unsupported(config)
        options = dict(config.options_for("openssl", _OPTIONS))

        def leaf(certificate: Certificate) -> ssl.SSLContext:
            ctx = _context(config, ssl.PROTOCOL_TLS_SERVER, options)
            _load_chain(ctx, certificate)
            if config.client_ca is not None:
                _load_trust(ctx, config.client_ca, "client CA")
            ctx.verify_mode = _VERIFY_MODES[config.client_cert]
            return ctx

        self.context = leaf(config.certificate)
        table: NameTable[ssl.SSLContext] = NameTable(
            {name: leaf(certificate) for name, certificate in config.sni.items()}
        )
        # Record the SNI name even without per-name certificates, so connections report it.
        self.context.sni_callback = _SNISelector(table, config.strict_sni)

    def new_engine(self) -> OpenSSLEngine:
        return OpenSSLEngine(self.context, server_side=True)


class OpenSSLClientState:
    """The client context: trust anchors, verification, a client certificate."""

    def __init__(self, config: ClientTLS) -> None:
        options = dict(config.options_for("openssl", _OPTIONS))
        ctx = _context(config, ssl.PROTOCOL_TLS_CLIENT, options)
        ctx.check_hostname = config.verify
        if not config.verify:
            ctx.verify_mode = ssl.CERT_NONE
        if config.trust is not None:
            _load_trust(ctx, config.trust, "CA")
        elif config.verify:
            ctx.load_default_certs()
        if config.certificate is not None:
            if config.certificate.ocsp_response is not None:
                raise TLSConfigError("a client certificate has no OCSP response to staple")
            _load_chain(ctx, config.certificate)
        self.context = ctx
        self._server_name = config.server_name

    def new_engine(
        self, server_name: str | None = None, resume: object | None = None
    ) -> OpenSSLEngine:
        if resume is not None and not isinstance(resume, ssl.SSLSession):
            raise TypeError("resume must be the resumption of an openssl engine")
        return OpenSSLEngine(
            self.context,
            server_side=False,
            server_hostname=server_name or self._server_name,
            session=resume,
        )


class OpenSSLFactory:
    """The OpenSSL engine: the standard ``ssl`` module over memory BIOs."""

    name = "openssl"
    features: frozenset[Feature] = frozenset()

    def library_version(self) -> str:
        return ssl.OPENSSL_VERSION

    def server(self, config: ServerTLS) -> OpenSSLServerState:
        return OpenSSLServerState(config)

    def client(self, config: ClientTLS) -> OpenSSLClientState:
        return OpenSSLClientState(config)


OPENSSL = OpenSSLFactory()
