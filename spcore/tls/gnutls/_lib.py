"""libgnutls through ctypes: every function the engine calls, with its exact C types.

Each prototype below is copied from ``<gnutls/gnutls.h>`` (GnuTLS 3.7): ``argtypes`` and
``restype`` are set on every function, because ctypes' default (``int`` in, ``int`` out)
truncates pointers on 64-bit systems. Sessions, credentials and priority caches are opaque
pointers (``c_void_p``); ``gnutls_datum_t`` is ``{unsigned char *data; unsigned int size}``.

The functions are attributes of one ``Library`` object so that tests can wrap them (to count
that every ``gnutls_init`` meets exactly one ``gnutls_deinit``, say).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_size_t,
    c_ssize_t,
    c_uint,
    c_void_p,
)
from typing import Any

__all__ = [
    "MINIMUM_VERSION",
    "Datum",
    "GnuTLSUnavailable",
    "IOVec",
    "Library",
    "load",
]

#: gnutls_ciphersuite_get(), which gives IANA suite names, appeared in 3.7.3.
MINIMUM_VERSION = "3.7.3"
_SONAMES = ("libgnutls.so.30", "libgnutls.30.dylib", "libgnutls-30.dll")

# gnutls_init() flags
SERVER = 1
CLIENT = 1 << 1
NONBLOCK = 1 << 3
NO_SIGNAL = 1 << 6
FORCE_CLIENT_CERT = 1 << 9  # send our certificate even if the server's CA list differs
# gnutls_credentials_type_t, gnutls_x509_crt_fmt_t, gnutls_certificate_type_t
CRD_CERTIFICATE = 1
X509_FMT_DER = 0
X509_FMT_PEM = 1
CRT_X509 = 1
# gnutls_certificate_request_t
CERT_IGNORE = 0
CERT_REQUEST = 1
CERT_REQUIRE = 2
# gnutls_close_request_t, gnutls_alert_level_t, gnutls_server_name_type_t, ALPN flags
SHUT_WR = 1
AL_WARNING = 1
AL_FATAL = 2
NAME_DNS = 1
ALPN_SERVER_PRECEDENCE = 1 << 1
KU_PEER = 1
# gnutls_protocol_t
PROTOCOL_NAMES = {1: "SSLv3", 2: "TLSv1", 3: "TLSv1.1", 4: "TLSv1.2", 5: "TLSv1.3"}
PROTOCOL_TLS1_3 = 5
# gnutls_session_flags_t
SFLAGS_SESSION_TICKET = 1 << 7
# gnutls_certificate_status_t bits
CERT_INVALID = 1 << 1
CERT_REVOKED = 1 << 5
CERT_SIGNER_NOT_FOUND = 1 << 6
CERT_SIGNER_NOT_CA = 1 << 7
CERT_NOT_ACTIVATED = 1 << 9
CERT_EXPIRED = 1 << 10
CERT_UNEXPECTED_OWNER = 1 << 14
# Error codes (gnutls.h)
E_SUCCESS = 0
E_INTERNAL = -59  # GNUTLS_E_INTERNAL_ERROR
E_UNEXPECTED_PACKET_LENGTH = -9
E_UNEXPECTED_PACKET = -15
E_FATAL_ALERT_RECEIVED = -12
E_WARNING_ALERT_RECEIVED = -16
E_AGAIN = -28
E_REHANDSHAKE = -37
E_NO_CERTIFICATE_FOUND = -49
E_INTERRUPTED = -52
E_CERTIFICATE_ERROR = -43
E_REQUESTED_DATA_NOT_AVAILABLE = -56
E_PREMATURE_TERMINATION = -110
E_CERTIFICATE_REQUIRED = -112
E_CERTIFICATE_VERIFICATION_ERROR = -348

EAGAIN = 11  # errno.EAGAIN on Linux, which is what gnutls_transport_set_errno() wants
EIO = 5


class Datum(Structure):
    """``gnutls_datum_t``."""

    _fields_ = [("data", c_void_p), ("size", c_uint)]


class IOVec(Structure):
    """``giovec_t`` (``struct iovec``)."""

    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]


# Callback types (gnutls.h): ssize_t (*gnutls_pull_func)(gnutls_transport_ptr_t, void *,
# size_t); ssize_t (*gnutls_vec_push_func)(gnutls_transport_ptr_t, const giovec_t *, int);
# int (*gnutls_pull_timeout_func)(gnutls_transport_ptr_t, unsigned int ms).
PULL_FUNC = CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_size_t)
VEC_PUSH_FUNC = CFUNCTYPE(c_ssize_t, c_void_p, POINTER(IOVec), c_int)
PULL_TIMEOUT_FUNC = CFUNCTYPE(c_int, c_void_p, c_uint)
# typedef int gnutls_certificate_verify_function(gnutls_session_t)
VERIFY_FUNC = CFUNCTYPE(c_int, c_void_p)

_session = c_void_p
_cred = c_void_p
_datum_p = POINTER(Datum)

#: name: (restype, argtypes)
_PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "gnutls_check_version": (c_char_p, (c_char_p,)),
    "gnutls_strerror": (c_char_p, (c_int,)),
    "gnutls_strerror_name": (c_char_p, (c_int,)),
    "gnutls_error_is_fatal": (c_int, (c_int,)),
    "gnutls_error_to_alert": (c_int, (c_int, POINTER(c_int))),
    # sessions
    "gnutls_init": (c_int, (POINTER(_session), c_uint)),
    "gnutls_deinit": (None, (_session,)),
    "gnutls_priority_set": (c_int, (_session, c_void_p)),
    "gnutls_credentials_set": (c_int, (_session, c_int, c_void_p)),
    "gnutls_handshake_set_timeout": (None, (_session, c_uint)),
    "gnutls_transport_set_ptr": (None, (_session, c_void_p)),
    "gnutls_transport_set_pull_function": (None, (_session, PULL_FUNC)),
    "gnutls_transport_set_vec_push_function": (None, (_session, VEC_PUSH_FUNC)),
    "gnutls_transport_set_pull_timeout_function": (None, (_session, PULL_TIMEOUT_FUNC)),
    "gnutls_transport_set_errno": (None, (_session, c_int)),
    "gnutls_transport_get_ptr": (c_void_p, (_session,)),
    "gnutls_handshake": (c_int, (_session,)),
    "gnutls_record_send": (c_ssize_t, (_session, c_void_p, c_size_t)),
    "gnutls_record_recv": (c_ssize_t, (_session, c_void_p, c_size_t)),
    "gnutls_record_cork": (None, (_session,)),
    "gnutls_record_uncork": (c_int, (_session, c_uint)),
    "gnutls_bye": (c_int, (_session, c_int)),
    "gnutls_alert_get": (c_int, (_session,)),
    "gnutls_alert_send": (c_int, (_session, c_int, c_int)),
    "gnutls_alert_send_appropriate": (c_int, (_session, c_int)),
    "gnutls_ciphersuite_get": (c_char_p, (_session,)),
    "gnutls_protocol_get_version": (c_int, (_session,)),
    "gnutls_alpn_set_protocols": (c_int, (_session, _datum_p, c_uint, c_uint)),
    "gnutls_alpn_get_selected_protocol": (c_int, (_session, _datum_p)),
    "gnutls_server_name_set": (c_int, (_session, c_int, c_void_p, c_size_t)),
    "gnutls_server_name_get": (
        c_int,
        (_session, c_void_p, POINTER(c_size_t), POINTER(c_uint), c_uint),
    ),
    "gnutls_certificate_server_set_request": (None, (_session, c_int)),
    "gnutls_session_set_verify_cert": (None, (_session, c_char_p, c_uint)),
    "gnutls_session_get_verify_cert_status": (c_uint, (_session,)),
    "gnutls_certificate_get_peers": (_datum_p, (_session, POINTER(c_uint))),
    "gnutls_certificate_verification_status_print": (c_int, (c_uint, c_int, _datum_p, c_uint)),
    "gnutls_certificate_verify_peers3": (c_int, (_session, c_char_p, POINTER(c_uint))),
    "gnutls_session_ticket_enable_server": (c_int, (_session, _datum_p)),
    "gnutls_session_get_data2": (c_int, (_session, _datum_p)),
    "gnutls_session_set_data": (c_int, (_session, c_void_p, c_size_t)),
    "gnutls_session_is_resumed": (c_int, (_session,)),
    "gnutls_session_get_flags": (c_uint, (_session,)),
    "gnutls_session_key_update": (c_int, (_session, c_uint)),
    "gnutls_ocsp_status_request_get": (c_int, (_session, _datum_p)),
    # credentials and priorities
    "gnutls_certificate_allocate_credentials": (c_int, (POINTER(_cred),)),
    "gnutls_certificate_free_credentials": (None, (_cred,)),
    "gnutls_certificate_set_x509_key_mem2": (
        c_int,
        (_cred, _datum_p, _datum_p, c_int, c_char_p, c_uint),
    ),
    "gnutls_certificate_set_x509_trust_mem": (c_int, (_cred, _datum_p, c_int)),
    "gnutls_certificate_set_x509_system_trust": (c_int, (_cred,)),
    "gnutls_certificate_set_ocsp_status_request_mem": (c_int, (_cred, _datum_p, c_uint, c_int)),
    "gnutls_certificate_set_verify_function": (None, (_cred, VERIFY_FUNC)),
    "gnutls_priority_init2": (c_int, (POINTER(c_void_p), c_char_p, POINTER(c_char_p), c_uint)),
    "gnutls_priority_deinit": (None, (c_void_p,)),
}


class GnuTLSUnavailable(Exception):
    """libgnutls cannot be used here; the message says why."""


class Library:
    """The loaded libgnutls: one attribute per function in ``_PROTOTYPES``."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        self.cdll = cdll
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                function = getattr(cdll, name)
            except AttributeError:
                raise GnuTLSUnavailable(f"libgnutls has no {name}()") from None
            function.restype = restype
            function.argtypes = list(argtypes)
            setattr(self, name, function)
        # gnutls_free is a variable holding a function pointer (gnutls.h: extern
        # gnutls_free_function gnutls_free), not a function.
        free_type = CFUNCTYPE(None, c_void_p)
        free_address = c_void_p.in_dll(cdll, "gnutls_free").value
        if not free_address:
            raise GnuTLSUnavailable("libgnutls has no gnutls_free")
        self.gnutls_free = free_type(free_address)
        version = self.gnutls_check_version(None)
        self.version = version.decode() if version else "unknown"

    def __getattr__(self, name: str) -> Any:  # for type checkers: the attributes set above
        raise AttributeError(name)

    def error_name(self, code: int) -> str:
        name = self.gnutls_strerror_name(code)
        return name.decode() if name else f"GnuTLS error {code}"

    def error_text(self, code: int) -> str:
        text = self.gnutls_strerror(code)
        return text.decode() if text else self.error_name(code)


_loaded: Library | None = None
_failure: str | None = None
_lock = threading.Lock()


def load() -> Library:
    """The library, loaded once; ``GnuTLSUnavailable`` says why it cannot be."""
    global _loaded, _failure
    with _lock:
        if _loaded is not None:
            return _loaded
        if _failure is not None:
            raise GnuTLSUnavailable(_failure)
        try:
            _loaded = _open()
        except GnuTLSUnavailable as exc:
            _failure = str(exc)
            raise
        return _loaded


def _open() -> Library:
    names = list(_SONAMES)
    found = ctypes.util.find_library("gnutls")
    if found:
        names.append(found)
    errors = []
    for soname in names:
        try:
            cdll = ctypes.CDLL(soname)
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise GnuTLSUnavailable("libgnutls30 is not installed (" + "; ".join(errors[:1]) + ")")
    check = cdll.gnutls_check_version
    check.restype, check.argtypes = c_char_p, [c_char_p]
    if not check(MINIMUM_VERSION.encode()):
        have = check(None)
        raise GnuTLSUnavailable(
            f"GnuTLS {have.decode() if have else '?'} is too old (spcore needs {MINIMUM_VERSION})"
        )
    return Library(cdll)
