"""The OpenSSL engine: the standard ``ssl`` module's ``SSLObject`` over two ``MemoryBIO``s.

``MemoryEngine`` holds the rules every engine shares; what is OpenSSL's own is here. Output is
collected after every call because OpenSSL writes handshake messages and alerts even when it
raises (asyncio and uvloop lose a failed handshake's alert; Twisted flushes it); reads loop
until no plaintext is left, checking the buffers first so the common case costs no exception
(https://github.com/python/cpython/issues/123954); ``OP_IGNORE_UNEXPECTED_EOF`` stays off, so
a ragged EOF stays distinguishable from close_notify. OpenSSL's reasons are translated into
the neutral vocabulary: the alert by its RFC name (read from the alert record itself when it
went out in plaintext), the cipher by its IANA name, the verification failure by kind.
"""

from __future__ import annotations

import ssl

from .alerts import Alert
from .engine import (
    CloseNotify,
    RaggedEOF,
    TLSError,
    TLSEvent,
    TLSInfo,
    VerifyFailure,
    verify_alert,
)
from .memory import MemoryEngine

__all__ = ["IANA_TO_OPENSSL", "SNI_ATTRIBUTE", "OpenSSLEngine", "alert_received_in"]

#: Plaintext taken per ``SSLObject.read`` call: one TLS record holds at most 16 KiB, and a
#: request larger than glibc's mmap threshold (128 KiB) would cost an mmap/munmap pair per
#: read; the read loop takes several records by calling again.
READ_SIZE = 16 * 1024

#: Attribute that the SNI callback (``openssl_context``) sets on the ``SSLObject`` so the
#: engine can report the name the client asked for (OpenSSL does not expose it afterwards).
SNI_ATTRIBUTE = "spcore_server_name"

_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV13_ALERT_", "TLSV1_ALERT_", "TLSV1_")
#: Alerts OpenSSL sends for its own reasons, when the record went out encrypted.
_SENT_FOR_REASON = {
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": Alert.BAD_RECORD_MAC,
    "UNEXPECTED_MESSAGE": Alert.UNEXPECTED_MESSAGE,
    "UNEXPECTED_RECORD": Alert.UNEXPECTED_MESSAGE,
    "APPLICATION_DATA_AFTER_CLOSE_NOTIFY": Alert.UNEXPECTED_MESSAGE,
    "RECORD_LENGTH_MISMATCH": Alert.DECODE_ERROR,
    "LENGTH_MISMATCH": Alert.DECODE_ERROR,
    "BAD_PACKET_LENGTH": Alert.DECODE_ERROR,
    "PACKET_LENGTH_TOO_LONG": Alert.RECORD_OVERFLOW,
    "ENCRYPTED_LENGTH_TOO_LONG": Alert.RECORD_OVERFLOW,
    "DATA_LENGTH_TOO_LONG": Alert.RECORD_OVERFLOW,
    "UNSUPPORTED_PROTOCOL": Alert.PROTOCOL_VERSION,
    "WRONG_VERSION_NUMBER": Alert.PROTOCOL_VERSION,
    "NO_SHARED_CIPHER": Alert.HANDSHAKE_FAILURE,
    "CALLBACK_FAILED": Alert.INTERNAL_ERROR,
}
#: X509_V_ERR_* codes (openssl/x509_vfy.h) by kind.
_VERIFY_CODES = {
    VerifyFailure.UNTRUSTED: {2, 18, 19, 20, 21, 27},
    VerifyFailure.EXPIRED: {10},
    VerifyFailure.NOT_YET_VALID: {9},
    VerifyFailure.REVOKED: {23},
    VerifyFailure.NAME_MISMATCH: {62, 63, 64},
}
_EOF_REASON = "UNEXPECTED_EOF_WHILE_READING"

#: IANA names of the TLS 1.2 suites the profiles may name, and OpenSSL's names for them.
IANA_TO_OPENSSL = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "DHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384": "ECDHE-ECDSA-AES256-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384": "ECDHE-RSA-AES256-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
OPENSSL_TO_IANA = {openssl: iana for iana, openssl in IANA_TO_OPENSSL.items()}


def _iana_cipher(name: str) -> str:
    return OPENSSL_TO_IANA.get(name, name)  # TLS 1.3 names are IANA's already


def alert_received_in(reason: str) -> Alert | None:
    """The alert an OpenSSL reason says was received (``TLSV1_ALERT_UNKNOWN_CA``...)."""
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            name = reason[len(prefix) :].replace("USER_CANCELLED", "USER_CANCELED")
            return Alert.__members__.get(name)
    return None


def _last_record(output: bytes) -> tuple[int, bytes]:
    """The content type and body of the last record in ``output`` ((0, b"") if none)."""
    offset, last = 0, (0, b"")
    while offset + 5 <= len(output):
        length = int.from_bytes(output[offset + 3 : offset + 5], "big")
        last = (output[offset], output[offset + 5 : offset + 5 + length])
        offset += 5 + length
    return last


def _verify_failure(exc: ssl.SSLError, reason: str | None) -> VerifyFailure | None:
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return VerifyFailure.MISSING
    if reason != "CERTIFICATE_VERIFY_FAILED":
        return None
    code = getattr(exc, "verify_code", None)
    for kind, codes in _VERIFY_CODES.items():
        if code in codes:
            return kind
    return VerifyFailure.INVALID


class OpenSSLEngine(MemoryEngine):
    """A ``TLSEngine`` for one connection, server or client side.

    ``context`` is an ``ssl.SSLContext``; ``spcore.tls.openssl_context`` builds them from the
    neutral configuration. ``server_hostname`` (client side) sets SNI and the name to verify.
    """

    engine_name = "openssl"
    _eof_reason = _EOF_REASON

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        super().__init__(server_side=server_side)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._held = b""  # output read back to find the alert of a failure
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session to resume with (client side), once the handshake completed.

        Under TLS 1.3 it becomes resumable only once the server's session tickets, which
        follow the handshake, have been fed in.
        """
        return self._ssl.session

    @property
    def resumption(self) -> ssl.SSLSession | None:
        session = self._ssl.session
        return session if session is not None and session.has_ticket else None

    @property
    def _output_size(self) -> int:
        return self._outgoing.pending + len(self._held)

    def data_to_send(self) -> bytes:
        if self._held:
            held, self._held = self._held, b""
            return held + self._outgoing.read()
        return self._outgoing.read()

    # -- the library calls -------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._incoming.write(data)

    def _feed_eof(self) -> None:
        self._incoming.write_eof()

    def _handshake_step(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise self._error_from(exc, during_handshake=True) from None
        return True

    def _make_info(self) -> TLSInfo:
        sslobj = self._ssl
        cipher = sslobj.cipher()
        peer = sslobj.getpeercert(binary_form=True)
        return TLSInfo(
            version=sslobj.version() or "",
            cipher=_iana_cipher(cipher[0]) if cipher else "",
            alpn_protocol=sslobj.selected_alpn_protocol(),
            server_name=(
                getattr(sslobj, SNI_ATTRIBUTE, None)
                if self._server_side
                else sslobj.server_hostname
            ),
            peer_certificate=peer or None,
            resumed=sslobj.session_reused,
        )

    def _shutdown(self) -> None:
        try:
            # unwrap() sends close_notify, then tries to read the peer's. WantRead: ours is
            # in the output, and a one-way close is all we need.
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            # Typically APPLICATION_DATA_AFTER_CLOSE_NOTIFY: unread records sat where the
            # peer's close_notify was looked for. Ours is already in the output, but OpenSSL 3
            # treats this as fatal, so the session is over (the unread data is lost; we are
            # closing anyway). close() never raises.
            self._fail()

    def _write(self, data: bytes) -> None:
        try:
            written = self._ssl.write(data)
            if written < len(data):
                # A memory BIO never refuses, but SSL_MODE_ENABLE_PARTIAL_WRITE allows short
                # writes, so loop rather than assume.
                view = memoryview(data)[written:]
                while view:
                    view = view[self._ssl.write(view) :]
        except ssl.SSLError as exc:
            raise self._failed(self._error_from(exc, during_handshake=False)) from None

    def _read(self, events: list[TLSEvent]) -> None:
        chunks: list[bytes] = []
        incoming, sslobj = self._incoming, self._ssl
        try:
            while not self._peer_done and (incoming.pending or sslobj.pending() or self._eof_fed):
                try:
                    chunk = sslobj.read(READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    chunk = b""
                except ssl.SSLEOFError:
                    # OpenSSL treats a missing close_notify as fatal (it queues a decode_error
                    # alert and refuses further writes), so the session is over.
                    self._ragged()
                    self._flush(chunks, events)
                    events.append(RaggedEOF())
                    break
                if not chunk:
                    self._clean_close()
                    self._flush(chunks, events)
                    events.append(CloseNotify())
                    break
                chunks.append(chunk)
        except ssl.SSLError as exc:
            raise self._failed(self._error_from(exc, during_handshake=False)) from None
        self._flush(chunks, events)

    # -- errors ------------------------------------------------------------------------------

    def _error_from(self, exc: ssl.SSLError, *, during_handshake: bool) -> TLSError:
        reason = getattr(exc, "reason", None)
        verify_message = getattr(exc, "verify_message", None)
        if isinstance(exc, ssl.SSLEOFError) or reason == _EOF_REASON:
            text = "connection closed by peer " + (
                "during the TLS handshake" if during_handshake else "without close_notify"
            )
            return TLSError(text, reason=reason or _EOF_REASON, during_handshake=during_handshake)
        text = f"TLS {'handshake' if during_handshake else 'session'} failed: {reason or exc}"
        if verify_message:
            text += f" ({verify_message})"
        alert = alert_received_in(reason or "")
        sent = alert is None
        failure = _verify_failure(exc, reason)
        if sent:
            self._held += self._outgoing.read()
            alert = self._sent_alert(reason, failure)
        return TLSError(
            text,
            alert=alert,
            alert_sent=sent and alert is not None,
            reason=reason,
            during_handshake=during_handshake,
            verify_failure=failure,
            verify_message=verify_message,
        )

    def _sent_alert(self, reason: str | None, failure: VerifyFailure | None) -> Alert | None:
        """The alert OpenSSL just wrote: read from the record when it is plaintext, else known
        from the reason (a TLS 1.3 record of type application_data is an encrypted alert)."""
        kind, body = _last_record(self._held)
        if kind == 21 and len(body) == 2:
            return Alert.lookup(body[1])
        if failure is not None:
            return verify_alert(failure, tls13=kind == 23)
        return _SENT_FOR_REASON.get(reason or "")
