"""``ssl.SSLContext`` builders with the defaults a production server wants.

TLS 1.2 minimum (1.3 preferred by OpenSSL), Mozilla's "intermediate" TLS 1.2 cipher list, no
compression, no renegotiation, unexpected EOFs left visible. Per-name certificates are chosen
through the SNI callback, which never lets an exception escape into OpenSSL (that would only
reach ``sys.unraisablehook`` and fail the handshake with an unhelpful reason).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from typing import Literal, Union

from .openssl import SNI_ATTRIBUTE

__all__ = ["INTERMEDIATE_CIPHERS", "ClientCertMode", "client_context", "server_context"]

log = logging.getLogger("spcore.tls")

#: Mozilla's "intermediate" profile for TLS 1.2 (TLS 1.3 suites are all acceptable and stay
#: at OpenSSL's defaults).
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

ClientCertMode = Literal["none", "optional", "required"]
PathLike = Union[str, "os.PathLike[str]"]
CertKey = tuple[PathLike, PathLike]

_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def _harden(ctx: ssl.SSLContext, minimum_version: ssl.TLSVersion) -> None:
    ctx.minimum_version = minimum_version
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ignore_eof = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    ctx.options &= ~ignore_eof  # keep ragged EOFs distinguishable from close_notify
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)


def _server_leaf(
    cert: CertKey,
    alpn_protocols: Iterable[str],
    client_ca: PathLike | None,
    client_cert: ClientCertMode,
    minimum_version: ssl.TLSVersion,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, minimum_version)
    ctx.load_cert_chain(os.fspath(cert[0]), os.fspath(cert[1]))
    protocols = list(alpn_protocols)
    if protocols:
        ctx.set_alpn_protocols(protocols)
    if client_cert != "none":
        if client_ca is None:
            raise ValueError("client certificates need client_ca (the CA file to verify them)")
        ctx.load_verify_locations(cafile=os.fspath(client_ca))
    ctx.verify_mode = _VERIFY_MODES[client_cert]
    return ctx


class _SNISelector:
    """The SNI callback: record the requested name, switch to its certificate's context."""

    def __init__(self, by_name: Mapping[str, ssl.SSLContext], strict: bool) -> None:
        self._exact = {name.lower(): ctx for name, ctx in by_name.items() if "*" not in name}
        self._wildcard = {
            name.lower()[2:]: ctx for name, ctx in by_name.items() if name.startswith("*.")
        }
        self._strict = strict

    def _lookup(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        _, _, parent = name.partition(".")
        return self._wildcard.get(parent) if parent else None

    def __call__(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        try:
            setattr(sslobj, SNI_ATTRIBUTE, name)
            if name is None:
                return None
            chosen = self._lookup(name)
            if chosen is not None:
                sslobj.context = chosen
            elif self._strict:
                log.info("TLS: refusing unknown server name %r", name)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None
        except Exception:
            log.exception("TLS: SNI callback failed for %r", name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR


def server_context(
    certfile: PathLike,
    keyfile: PathLike,
    *,
    alpn_protocols: Iterable[str] = ("http/1.1",),
    sni_certificates: Mapping[str, CertKey] | None = None,
    strict_sni: bool = False,
    client_ca: PathLike | None = None,
    client_cert: ClientCertMode = "none",
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> ssl.SSLContext:
    """A server context with safe defaults.

    ``sni_certificates`` maps server names (``"*.example.com"`` wildcards allowed) to
    ``(certfile, keyfile)``; the client's SNI picks one, and ``certfile`` is the default.
    With ``strict_sni`` an unknown name is refused with the ``unrecognized_name`` alert.
    ``client_cert`` asks for client certificates verified against ``client_ca`` (mTLS).
    """
    protocols = tuple(alpn_protocols)

    def leaf(cert: CertKey) -> ssl.SSLContext:
        return _server_leaf(cert, protocols, client_ca, client_cert, minimum_version)

    ctx = leaf((certfile, keyfile))
    # Record the SNI name even without per-name certificates, so connections can report it.
    by_name = {name: leaf(pair) for name, pair in (sni_certificates or {}).items()}
    ctx.sni_callback = _SNISelector(by_name, strict_sni)
    return ctx


def client_context(
    *,
    cafile: PathLike | None = None,
    cadata: bytes | None = None,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    alpn_protocols: Iterable[str] = ("http/1.1",),
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context with the same hardening; trusts ``cafile``/``cadata`` or the system."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, minimum_version)
    ctx.maximum_version = maximum_version
    ctx.check_hostname = check_hostname
    if not check_hostname:
        ctx.verify_mode = ssl.CERT_NONE
    if cafile is not None or cadata is not None:
        ctx.load_verify_locations(
            cafile=None if cafile is None else os.fspath(cafile),
            cadata=None if cadata is None else cadata.decode("ascii"),
        )
    elif check_hostname:
        ctx.load_default_certs()
    if certfile is not None:
        ctx.load_cert_chain(os.fspath(certfile), None if keyfile is None else os.fspath(keyfile))
    protocols = list(alpn_protocols)
    if protocols:
        ctx.set_alpn_protocols(protocols)
    return ctx
