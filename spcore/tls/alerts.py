"""TLS alert descriptions by their RFC names, the one vocabulary every engine reports in.

Each library names alerts its own way (OpenSSL's ``TLSV1_ALERT_UNKNOWN_CA``, GnuTLS's
``GNUTLS_A_UNKNOWN_CA``); ``TLSError.alert`` always carries one of these instead, so that logs,
applications and the engine certification kit compare engines in one language.
"""

from __future__ import annotations

import enum

__all__ = ["Alert"]


class Alert(enum.IntEnum):
    """AlertDescription values of RFC 8446 section 6, plus the TLS 1.2 ones still in use.

    ``str(alert)`` is the RFC's own spelling with its number: ``unknown_ca (48)``.
    """

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21  # RFC 5246; never sent by TLS 1.2+ implementations
    RECORD_OVERFLOW = 22
    DECOMPRESSION_FAILURE = 30  # RFC 5246
    HANDSHAKE_FAILURE = 40
    NO_CERTIFICATE = 41  # SSL 3.0
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    EXPORT_RESTRICTION = 60  # RFC 4346
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86  # RFC 7507
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100  # RFC 5246
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110
    CERTIFICATE_UNOBTAINABLE = 111  # RFC 6066
    UNRECOGNIZED_NAME = 112
    BAD_CERTIFICATE_STATUS_RESPONSE = 113
    BAD_CERTIFICATE_HASH_VALUE = 114  # RFC 6066
    UNKNOWN_PSK_IDENTITY = 115
    CERTIFICATE_REQUIRED = 116
    NO_APPLICATION_PROTOCOL = 120

    @property
    def rfc_name(self) -> str:
        """The name as the RFC writes it: ``unknown_ca``."""
        return self.name.lower()

    def __str__(self) -> str:
        return f"{self.rfc_name} ({self.value})"

    @classmethod
    def lookup(cls, value: int) -> Alert | None:
        """The alert with this number, or None for a number no RFC assigns."""
        try:
            return cls(value)
        except ValueError:
            return None
