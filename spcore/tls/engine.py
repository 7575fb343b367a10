"""The TLS engine interface: ciphertext in, ciphertext out, events in between.

An engine never touches a socket. The owner feeds it the bytes that arrived
(``receive_data``), collects the bytes it must send (``data_to_send``) after *every* call, and
reads what happened from the returned events. Any TLS implementation that keeps this shape
(OpenSSL through ``ssl.MemoryBIO`` here, GnuTLS through ctypes later) can sit under the same
connection stack, and a program on trio, gevent or Twisted can drive one from its own loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ApplicationData",
    "CloseNotify",
    "HandshakeComplete",
    "RaggedEOF",
    "TLSClosedError",
    "TLSEngine",
    "TLSError",
    "TLSEvent",
    "TLSInfo",
]


@dataclass(frozen=True)
class TLSInfo:
    """What the handshake settled; logged, shown to applications, asserted by tests."""

    version: str
    cipher: str
    alpn_protocol: str | None
    server_name: str | None
    peer_certificate: bytes | None = field(repr=False)  # DER, when the peer presented one


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


class TLSError(RemoteProtocolError):
    """The TLS session failed: bad handshake, bad record, rejected certificate.

    ``reason`` is the library's short reason code (``"CERTIFICATE_VERIFY_FAILED"``,
    ``"TLSV13_ALERT_CERTIFICATE_REQUIRED"``, ``"WRONG_VERSION_NUMBER"``...), and
    ``verify_message`` the certificate verification message when that was the cause. Any alert
    the engine produced is already waiting in ``data_to_send()``: send it before closing.
    """

    def __init__(
        self,
        msg: str,
        *,
        reason: str | None = None,
        during_handshake: bool = False,
        verify_message: str | None = None,
    ) -> None:
        super().__init__(msg)
        self.reason = reason
        self.during_handshake = during_handshake
        self.verify_message = verify_message


class TLSClosedError(LocalProtocolError):
    """Data was given to an engine after it sent close_notify or failed, or after EOF."""


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
