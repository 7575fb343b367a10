"""The TLS engine interface: ciphertext in, ciphertext out, events in between.

An engine never touches a socket. The owner feeds it the bytes that arrived
(``receive_data``), collects the bytes it must send (``data_to_send``) after *every* call, and
reads what happened from the returned events. Any TLS implementation that keeps this shape
(OpenSSL through ``ssl.MemoryBIO``, GnuTLS through ctypes) can sit under the same connection
stack, and a program on trio, gevent or Twisted can drive one from its own loop.

An *engine factory* is the other half: it turns the neutral configuration
(``spcore.tls.config``) into the library's native state once per listener, and that state
makes one ``TLSEngine`` per connection. Everything an engine reports uses IANA and RFC names
(``TLSv1.3``, ``TLS_AES_128_GCM_SHA256``, ``unknown_ca``), whichever library is underneath.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import LocalProtocolError, RemoteProtocolError
from .alerts import Alert
from .config import ClientTLS, ServerTLS, TLSConfigError

__all__ = [
    "ApplicationData",
    "ClientState",
    "CloseNotify",
    "EngineFactory",
    "EngineUnsupported",
    "Feature",
    "HandshakeComplete",
    "RaggedEOF",
    "ServerState",
    "TLSClosedError",
    "TLSEngine",
    "TLSError",
    "TLSEvent",
    "TLSInfo",
    "VerifyFailure",
    "verify_alert",
]


@dataclass(frozen=True)
class TLSInfo:
    """What the handshake settled; logged, shown to applications, asserted by tests.

    ``version`` is ``"TLSv1.2"`` or ``"TLSv1.3"``; ``cipher`` the suite's IANA name
    (``TLS_AES_128_GCM_SHA256``, ``TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256``); ``server_name``
    the SNI name (sent by a client, received by a server); ``peer_certificate`` the peer's
    DER certificate; ``ocsp_response`` the DER OCSP response a server stapled (client side,
    with engines that ask for one).
    """

    version: str
    cipher: str
    alpn_protocol: str | None
    server_name: str | None
    peer_certificate: bytes | None = field(repr=False)  # DER, when the peer presented one
    resumed: bool = False
    ocsp_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HandshakeComplete:
    """The handshake finished; application data may flow both ways."""

    info: TLSInfo


@dataclass(frozen=True)
class ApplicationData:
    """Decrypted bytes from the peer (never empty)."""

    data: bytes


@dataclass(frozen=True)
class CloseNotify:
    """The peer sent close_notify: a clean end of its side of the stream."""


@dataclass(frozen=True)
class RaggedEOF:
    """The transport ended without close_notify.

    Harmless when the application protocol framed its messages completely (HTTP with
    Content-Length or chunked), a possible truncation otherwise; the owner decides. Either way
    the session is over: the engine counts as ``closed`` and ``send`` refuses.
    """


TLSEvent = HandshakeComplete | ApplicationData | CloseNotify | RaggedEOF


class VerifyFailure(enum.Enum):
    """Why a peer's certificate was refused, in terms no library owns."""

    MISSING = "missing"  # the peer presented none although one was required
    UNTRUSTED = "untrusted"  # no trusted issuer (unknown CA, self-signed)
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    NAME_MISMATCH = "name_mismatch"  # valid, but for another name
    REVOKED = "revoked"
    INVALID = "invalid"  # anything else: bad signature, wrong usage, weak algorithm...


def verify_alert(failure: VerifyFailure, *, tls13: bool) -> Alert:
    """The alert that refuses a certificate for ``failure`` (RFC 8446 6.2's meanings; for a
    missing one RFC 8446 4.4.2.4 under TLS 1.3, RFC 5246 7.4.6 under TLS 1.2). Every engine
    sends these, so peers learn the same reason whichever engine refused them."""
    if failure is VerifyFailure.MISSING:
        return Alert.CERTIFICATE_REQUIRED if tls13 else Alert.HANDSHAKE_FAILURE
    return _VERIFY_ALERTS[failure]


_VERIFY_ALERTS = {
    VerifyFailure.UNTRUSTED: Alert.UNKNOWN_CA,
    VerifyFailure.EXPIRED: Alert.CERTIFICATE_EXPIRED,
    VerifyFailure.NOT_YET_VALID: Alert.BAD_CERTIFICATE,
    VerifyFailure.REVOKED: Alert.CERTIFICATE_REVOKED,
    VerifyFailure.NAME_MISMATCH: Alert.BAD_CERTIFICATE,
    VerifyFailure.INVALID: Alert.BAD_CERTIFICATE,
}


class TLSError(RemoteProtocolError):
    """The TLS session failed: bad handshake, bad record, rejected certificate.

    ``alert`` is the TLS alert involved, by its RFC 8446 name and number, and ``alert_sent``
    says whether we sent it (we refused the peer) or received it (the peer refused us); None
    when no alert was exchanged (the peer just closed). ``verify_failure`` says why a
    certificate was refused and ``verify_message`` how the library put it. ``reason`` is the
    library's own code (``CERTIFICATE_VERIFY_FAILED``, ``GNUTLS_E_...``), for logs only: it
    differs between engines. Any alert the engine produced is already waiting in
    ``data_to_send()``: send it before closing.
    """

    def __init__(
        self,
        msg: str,
        *,
        alert: Alert | None = None,
        alert_sent: bool = False,
        reason: str | None = None,
        during_handshake: bool = False,
        verify_failure: VerifyFailure | None = None,
        verify_message: str | None = None,
    ) -> None:
        if alert is not None:
            msg += f" [{'sent' if alert_sent else 'received'} alert {alert}]"
        super().__init__(msg)
        self.alert = alert
        self.alert_sent = alert_sent
        self.reason = reason
        self.during_handshake = during_handshake
        self.verify_failure = verify_failure
        self.verify_message = verify_message


class TLSClosedError(LocalProtocolError):
    """Data was given to an engine after it sent close_notify or failed, or after EOF."""


class EngineUnsupported(TLSConfigError):
    """The configuration asks for something this engine cannot do (OCSP stapling through
    Python's ``ssl``, say); the message names the engine and what to use instead."""


class Feature(str, enum.Enum):
    """Optional abilities an engine factory may declare in ``features``."""

    #: Staple ``Certificate.ocsp_response`` (server); report a stapled one (client).
    OCSP_STAPLING = "ocsp_stapling"
    #: Take session-ticket keys from ``ServerTLS.ticket_key``, so processes share tickets.
    TICKET_KEYS = "ticket_keys"
    #: ``TLSEngine.key_update()``: send a TLS 1.3 KeyUpdate.
    KEY_UPDATE = "key_update"


class TLSEngine(Protocol):
    """One TLS session over memory buffers.

    Calls never block and never raise for want of data. After each call, everything
    ``data_to_send()`` returns must reach the peer, in order.
    """

    @property
    def handshake_complete(self) -> bool:
        """True once the handshake finished (and ``info`` is set)."""
        ...

    @property
    def info(self) -> TLSInfo | None:
        """The negotiated parameters, None before the handshake completes."""
        ...

    @property
    def closed(self) -> bool:
        """True once we sent close_notify, aborted or failed: ``send`` refuses from then on."""
        ...

    @property
    def pending_output(self) -> int:
        """Ciphertext bytes waiting to be sent plus plaintext queued for after the handshake."""
        ...

    @property
    def resumption(self) -> object | None:
        """Client side: what a later connection from the same ``ClientState`` may resume
        with, once the handshake (and, under TLS 1.3, the server's tickets) came in."""
        ...

    def start(self) -> None:
        """Begin the handshake (a client's ClientHello becomes available to send)."""
        ...

    def receive_data(self, data: bytes) -> list[TLSEvent]:
        """Feed ciphertext (``b""`` means the transport reached EOF); return what happened.

        Raises ``TLSError`` when the session fails; the alert, if any, is left in the output.
        Input after the peer's close_notify, or once the engine failed or aborted, is
        discarded unread; data after EOF raises ``TLSClosedError``.
        """
        ...

    def send(self, data: bytes) -> None:
        """Encrypt application data, queueing it until the handshake completes.

        Zero-length data is ignored. Raises ``TLSClosedError`` after ``close()``.
        """
        ...

    def data_to_send(self) -> bytes:
        """Take all ciphertext produced so far."""
        ...

    def close(self) -> None:
        """Send close_notify after any queued data, or abort if the handshake is unfinished.

        Idempotent. Closing does not wait for the peer's close_notify (a one-way close, what
        servers do); the owner may keep feeding data to see it.
        """
        ...

    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate (asking the peer to update too with ``request_peer``).

        Raises ``EngineUnsupported`` where the engine lacks ``Feature.KEY_UPDATE``.
        """
        ...


class ServerState(Protocol):
    """An engine's native state for one listener, built once from a ``ServerTLS``."""

    def new_engine(self) -> TLSEngine:
        """A server-side engine for one new connection."""
        ...


class ClientState(Protocol):
    """An engine's native state for one kind of outgoing connection, built from ``ClientTLS``."""

    def new_engine(self, server_name: str | None = None, resume: object | None = None) -> TLSEngine:
        """A client-side engine; ``server_name`` overrides the configured one, ``resume`` is a
        ``TLSEngine.resumption`` of an earlier connection from this same state."""
        ...


class EngineFactory(Protocol):
    """A TLS library binding: what ``Listener(tls_engine=...)`` and the kit take.

    ``server`` and ``client`` read every file the configuration names and build the native
    state, raising ``TLSConfigError`` (``EngineUnsupported`` for what the engine cannot do)
    with a message naming the file or setting at fault. The state is immutable once built:
    reloading builds a new one.
    """

    name: str
    features: frozenset[Feature]

    def library_version(self) -> str:
        """The TLS library and its version, as ``spcore engines`` shows it."""
        ...

    def server(self, config: ServerTLS) -> ServerState: ...

    def client(self, config: ClientTLS) -> ClientState: ...
