"""The native objects a GnuTLS state is built from: credentials, a priority cache, ALPN lists.

Each native object is owned by exactly one Python object whose ``weakref.finalize`` frees it
exactly once, when the last session and the listener have let go of it, so a state swapped
out by a reload lives on for the connections still using it. (The states themselves live
beside the engine they make, in ``session.py``, which reads them.)

The profile becomes a GnuTLS priority string: versions, the ciphers and key exchanges of its
suites, its groups, and the server's order first (as Python's ``ssl`` does for the OpenSSL
engine).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from ctypes import byref, c_char_p, c_void_p

from ..config import Certificate as CertificateConfig
from ..config import (
    CipherProfile,
    ClientTLS,
    ServerTLS,
    Source,
    TLSConfigError,
    describe,
    read_source,
)
from . import _lib
from ._lib import Datum, Library

__all__ = ["Credentials", "Priority", "Protocols", "datum", "priority_string"]

_TLS13_CIPHERS = {
    "TLS_AES_128_GCM_SHA256": "AES-128-GCM",
    "TLS_AES_256_GCM_SHA384": "AES-256-GCM",
    "TLS_CHACHA20_POLY1305_SHA256": "CHACHA20-POLY1305",
}
_GROUPS = {"x25519": "X25519", "secp256r1": "SECP256R1", "secp384r1": "SECP384R1"}


def _tls12_parts(suite: str) -> tuple[str, str]:
    """``TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`` -> (``ECDHE-ECDSA``, ``AES-128-GCM``)."""
    kx, _, rest = suite.removeprefix("TLS_").partition("_WITH_")
    cipher = rest.rsplit("_", 1)[0] if rest.endswith(("_SHA256", "_SHA384")) else rest
    if "CHACHA20" in cipher:
        cipher = "CHACHA20_POLY1305"
    return kx.replace("_", "-"), cipher.replace("_", "-")


def priority_string(profile: CipherProfile, versions: Sequence[str], *, server: bool) -> str:
    """The GnuTLS priority string for ``profile`` restricted to ``versions``."""
    parts = ["NORMAL", "-VERS-ALL"]
    parts += [f"+VERS-TLS{v}" for v in reversed(versions)]
    ciphers = [_TLS13_CIPHERS[s] for s in profile.tls13_suites] if "1.3" in versions else []
    kxs: list[str] = []
    tls12 = [_tls12_parts(s) for s in profile.tls12_suites] if "1.2" in versions else []
    for kx, cipher in tls12:
        kxs += [kx] if kx not in kxs else []
        ciphers += [cipher] if cipher not in ciphers else []
    expressible = {(k, c) for k in kxs for c in ciphers if c in {p[1] for p in tls12}}
    if expressible != set(tls12):
        # GnuTLS combines every key exchange with every cipher: the profile must be a product.
        raise TLSConfigError(f"the {profile.name} profile cannot be written as a GnuTLS priority")
    parts += ["-CIPHER-ALL", *(f"+{c}" for c in dict.fromkeys(ciphers)), "-MAC-ALL", "+AEAD"]
    parts += ["-KX-ALL", *(f"+{k}" for k in kxs)]
    parts += ["-GROUP-ALL", *(f"+GROUP-{_GROUPS[g]}" for g in profile.groups)]
    if server:
        parts.append("%SERVER_PRECEDENCE")
    return ":".join(parts)


def datum(data: bytes) -> tuple[Datum, ctypes.Array[ctypes.c_char]]:
    """A datum over a private copy of ``data`` (returned too: it must stay alive)."""
    buffer = ctypes.create_string_buffer(data, len(data))
    return Datum(ctypes.cast(buffer, c_void_p), len(data)), buffer


def _check(lib: Library, code: int, what: str) -> int:
    if code < 0:
        raise TLSConfigError(f"{what}: {lib.error_text(code)}")
    return code


class Priority:
    """A ``gnutls_priority_t``, freed once."""

    @classmethod
    def of(cls, lib: Library, config: ServerTLS | ClientTLS, *, server: bool) -> Priority:
        """The configuration's: its ``priority`` option, else its profile and versions."""
        options = config.options_for("gnutls", ("priority",))
        text = options.get("priority") or priority_string(
            config.cipher_profile, config.versions, server=server
        )
        return cls(lib, text)

    def __init__(self, lib: Library, text: str) -> None:
        handle, error_at = c_void_p(), c_char_p()
        code = lib.gnutls_priority_init2(byref(handle), text.encode(), byref(error_at), 0)
        if code < 0:
            where = error_at.value.decode(errors="replace") if error_at.value else text
            raise TLSConfigError(
                f"GnuTLS refuses the priority string at {where!r}: {lib.error_text(code)}"
            )
        assert handle.value is not None
        self.handle: int = handle.value
        self.text = text
        self._free = weakref.finalize(self, _free_priority, lib, self.handle)


def _free_priority(lib: Library, handle: int) -> None:
    lib.gnutls_priority_deinit(handle)


class Credentials:
    """A ``gnutls_certificate_credentials_t``: a certificate (+ OCSP response) and/or trust."""

    def __init__(self, lib: Library) -> None:
        handle = c_void_p()
        _check(lib, lib.gnutls_certificate_allocate_credentials(byref(handle)), "GnuTLS")
        assert handle.value is not None
        self.handle: int = handle.value
        self._lib = lib
        self._free = weakref.finalize(self, _free_credentials, lib, self.handle)

    def set_certificate(self, certificate: CertificateConfig) -> None:
        chain_pem, key_pem = certificate.read()
        chain, _keep1 = datum(chain_pem)
        key, _keep2 = datum(key_pem)
        code = self._lib.gnutls_certificate_set_x509_key_mem2(
            self.handle, byref(chain), byref(key), _lib.X509_FMT_PEM, None, 0
        )
        _check(self._lib, code, f"cannot load {certificate.describe()} with its key")
        ocsp = certificate.read_ocsp()
        if ocsp is not None:
            assert certificate.ocsp_response is not None
            response, _keep3 = datum(ocsp)
            code = self._lib.gnutls_certificate_set_ocsp_status_request_mem(
                self.handle, byref(response), 0, _lib.X509_FMT_DER
            )
            _check(
                self._lib,
                code,
                f"cannot staple {describe(certificate.ocsp_response, 'OCSP response')}",
            )

    def set_trust(self, source: Source | None, what: str) -> None:
        if source is None:
            code = self._lib.gnutls_certificate_set_x509_system_trust(self.handle)
            _check(self._lib, code, "cannot load the system's trusted CAs")
            return
        pem, _keep = datum(read_source(source, what))
        code = self._lib.gnutls_certificate_set_x509_trust_mem(
            self.handle, byref(pem), _lib.X509_FMT_PEM
        )
        if _check(self._lib, code, f"cannot load {describe(source, what)}") == 0:
            raise TLSConfigError(f"{describe(source, what)} holds no certificate")


def _free_credentials(lib: Library, handle: int) -> None:
    lib.gnutls_certificate_free_credentials(handle)


class Protocols:
    """ALPN protocol names as the ``gnutls_datum_t`` array GnuTLS takes (kept alive here)."""

    def __init__(self, names: Sequence[str]) -> None:
        self._buffers = [ctypes.create_string_buffer(n.encode("ascii")) for n in names]
        self.count = len(names)
        self.array = (Datum * max(1, self.count))()
        for i, (name, buffer) in enumerate(zip(names, self._buffers, strict=True)):
            self.array[i] = Datum(ctypes.cast(buffer, c_void_p), len(name))
