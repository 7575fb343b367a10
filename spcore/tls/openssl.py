"""The OpenSSL engine: the standard ``ssl`` module's ``SSLObject`` over two ``MemoryBIO``s.

The behaviours below were each learnt the hard way by another project (CPython's
``asyncio/sslproto.py``, trio's ``SSLStream``, Twisted's ``TLSMemoryBIOProtocol``, uvloop):
output is collected after every call because OpenSSL writes handshake messages and alerts
even when it raises (asyncio and uvloop lose a failed handshake's alert; Twisted flushes it);
``do_handshake()`` is called before the first read or write (trio, after
https://bugs.python.org/issue30141); data written before the handshake is queued, never
handed to OpenSSL early; reads loop until no plaintext is left, checking the buffers first so
the common case costs no exception (https://github.com/python/cpython/issues/123954); close
during the handshake aborts, as no close_notify can be sent yet
(https://bugs.python.org/issue29743); a ragged EOF is told apart from close_notify
(``OP_IGNORE_UNEXPECTED_EOF`` stays off; trio's ``https_compatible``); no byte from before
the handshake or after close_notify is taken for application data (the class of bug of
CVE-2023-40217).
"""

from __future__ import annotations

import enum
import ssl

from .engine import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    RaggedEOF,
    TLSClosedError,
    TLSError,
    TLSEvent,
    TLSInfo,
)

__all__ = ["SNI_ATTRIBUTE", "OpenSSLEngine"]

#: Plaintext taken per ``SSLObject.read`` call: one TLS record holds at most 16 KiB, and a
#: request larger than glibc's mmap threshold (128 KiB) would cost an mmap/munmap pair per
#: read; the read loop takes several records by calling again.
READ_SIZE = 16 * 1024

#: Attribute that ``spcore.tls.context``'s SNI callback sets on the ``SSLObject`` so the engine
#: can report the name the client asked for (OpenSSL does not expose it afterwards).
SNI_ATTRIBUTE = "spcore_server_name"


class _State(enum.Enum):
    HANDSHAKING = enum.auto()
    OPEN = enum.auto()
    CLOSED = enum.auto()  # we sent close_notify or aborted
    FAILED = enum.auto()


def _error_from(exc: ssl.SSLError, *, during_handshake: bool) -> TLSError:
    reason = getattr(exc, "reason", None)
    verify_message = getattr(exc, "verify_message", None)
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        reason = reason or "UNEXPECTED_EOF_WHILE_READING"
        text = "connection closed by peer " + (
            "during the TLS handshake" if during_handshake else "without close_notify"
        )
    else:
        text = f"TLS {'handshake' if during_handshake else 'session'} failed: {reason or exc}"
    if verify_message:
        text += f" ({verify_message})"
    return TLSError(
        text, reason=reason, during_handshake=during_handshake, verify_message=verify_message
    )


class OpenSSLEngine:
    """A ``TLSEngine`` for one connection, server or client side.

    ``context`` is any ``ssl.SSLContext``; ``spcore.tls.context`` builds ones with safe
    defaults. ``server_hostname`` (client side) sets SNI and the name to verify.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        self._server_side = server_side
        self._state = _State.HANDSHAKING
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._eof_fed = False
        self._peer_done = False  # close_notify or EOF already reported
        self._info: TLSInfo | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._info is not None

    @property
    def info(self) -> TLSInfo | None:
        return self._info

    @property
    def closed(self) -> bool:
        return self._state in (_State.CLOSED, _State.FAILED)

    @property
    def pending_output(self) -> int:
        return self._outgoing.pending + self._early_bytes

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session to resume with (client side), once the handshake completed.

        Under TLS 1.3 it becomes resumable only once the server's session tickets, which
        follow the handshake, have been fed in.
        """
        return self._ssl.session

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed an earlier session instead of a full exchange."""
        return self._ssl.session_reused

    # -- driving ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._state is _State.HANDSHAKING:
            self._handshake([])

    def receive_data(self, data: bytes) -> list[TLSEvent]:
        if self._state is _State.FAILED or (self._state is _State.CLOSED and self._info is None):
            return []  # failed, or aborted during the handshake: nothing more to learn
        if data:
            if self._eof_fed:
                raise TLSClosedError("cannot receive data: the transport already reached EOF")
            if self._peer_done:
                return []  # after close_notify nothing is read: do not let it pile up either
            self._incoming.write(data)
        elif not self._eof_fed:
            self._eof_fed = True
            self._incoming.write_eof()
        events: list[TLSEvent] = []
        if self._state is _State.HANDSHAKING:
            self._handshake(events)
        if self._info is not None:
            self._read(events)
        return events

    def send(self, data: bytes) -> None:
        if not data:
            return
        if self._state is _State.HANDSHAKING:
            self._early.append(bytes(data))
            self._early_bytes += len(data)
        elif self._state is _State.OPEN:
            self._write(data)
        else:
            raise TLSClosedError("cannot send: the TLS session is closed")

    def data_to_send(self) -> bytes:
        return self._outgoing.read()

    def close(self) -> None:
        if self._state is _State.HANDSHAKING:
            # No close_notify before the handshake finished: abort (bpo-29743).
            self._early.clear()
            self._early_bytes = 0
            self._state = _State.CLOSED
            return
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
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
            self._state = _State.FAILED

    # -- internals -------------------------------------------------------------------------

    def _handshake(self, events: list[TLSEvent]) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            if self._eof_fed:
                self._state = _State.FAILED
                raise TLSError(
                    "connection closed by peer during the TLS handshake",
                    reason="UNEXPECTED_EOF_WHILE_READING",
                    during_handshake=True,
                ) from None
            return
        except ssl.SSLError as exc:
            self._state = _State.FAILED
            raise _error_from(exc, during_handshake=True) from None
        self._state = _State.OPEN
        cipher = self._ssl.cipher()
        peer = self._ssl.getpeercert(binary_form=True)
        self._info = TLSInfo(
            version=self._ssl.version() or "",
            cipher=cipher[0] if cipher else "",
            alpn_protocol=self._ssl.selected_alpn_protocol(),
            server_name=(
                getattr(self._ssl, SNI_ATTRIBUTE, None)
                if self._server_side
                else self._ssl.server_hostname
            ),
            peer_certificate=peer or None,
        )
        events.append(HandshakeComplete(self._info))
        early, self._early, self._early_bytes = self._early, [], 0
        for chunk in early:
            self._write(chunk)

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
            self._state = _State.FAILED
            raise _error_from(exc, during_handshake=False) from None

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
                    self._peer_done = True
                    self._state = _State.FAILED
                    self._flush(chunks, events)
                    events.append(RaggedEOF())
                    break
                if not chunk:
                    self._peer_done = True
                    self._flush(chunks, events)
                    events.append(CloseNotify())
                    break
                chunks.append(chunk)
        except ssl.SSLError as exc:
            self._state = _State.FAILED
            raise _error_from(exc, during_handshake=False) from None
        self._flush(chunks, events)

    @staticmethod
    def _flush(chunks: list[bytes], events: list[TLSEvent]) -> None:
        if chunks:
            events.append(ApplicationData(chunks[0] if len(chunks) == 1 else b"".join(chunks)))
            chunks.clear()
