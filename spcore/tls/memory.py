"""The state machine every memory-buffer engine shares, whatever library does the crypto.

The rules below were each learnt the hard way by another project (CPython's
``asyncio/sslproto.py``, trio's ``SSLStream``, Twisted's ``TLSMemoryBIOProtocol``, uvloop):
the handshake is driven before the first read or write (trio, after
https://bugs.python.org/issue30141); data written before the handshake is queued, never
handed to the library early; an EOF during the handshake is a failure, not a close; closing
during the handshake aborts, as no close_notify can be sent yet
(https://bugs.python.org/issue29743); a ragged EOF is told apart from close_notify (trio's
``https_compatible``); nothing the peer sends before the handshake, after its close_notify or
after a failure is taken for application data (the class of bug of CVE-2023-40217); a failed
or finished session refuses to send. An engine supplies the library calls (``_feed``,
``_handshake_step``, ``_read``, ``_write``, ``_shutdown``...) and inherits the rules, so two
engines cannot drift apart on them."""

from __future__ import annotations

import enum

from .engine import (
    ApplicationData,
    EngineUnsupported,
    HandshakeComplete,
    TLSClosedError,
    TLSError,
    TLSEvent,
    TLSInfo,
)

__all__ = ["MemoryEngine"]


class _State(enum.Enum):
    HANDSHAKING = enum.auto()
    OPEN = enum.auto()
    CLOSED = enum.auto()  # we sent close_notify or aborted
    FAILED = enum.auto()


class MemoryEngine:
    """Base of a ``TLSEngine``: subclasses implement the library calls marked below."""

    #: The library's code for "the transport ended during the handshake", for logs.
    _eof_reason = "EOF"
    #: Used in messages: "the openssl engine cannot ...".
    engine_name = "memory"

    def __init__(self, *, server_side: bool) -> None:
        self._server_side = server_side
        self._state = _State.HANDSHAKING
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._eof_fed = False
        self._peer_done = False  # close_notify or EOF already reported
        self._info: TLSInfo | None = None

    # -- what subclasses implement ------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Hand ciphertext to the library."""
        raise NotImplementedError

    def _feed_eof(self) -> None:
        """Tell the library the transport ended."""
        raise NotImplementedError

    def _handshake_step(self) -> bool:
        """Advance the handshake: True once complete, False while it wants more input.

        Raises ``TLSError`` on failure (with the alert, which is left in the output).
        """
        raise NotImplementedError

    def _make_info(self) -> TLSInfo:
        raise NotImplementedError

    def _read(self, events: list[TLSEvent]) -> None:
        """Decrypt whatever is complete; append ``ApplicationData`` (one event for all of it),
        then ``CloseNotify`` (through ``_clean_close``) or ``RaggedEOF`` (``_ragged``)."""
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        """Encrypt all of ``data``; raise ``TLSError`` if the session fails."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        """Produce close_notify (after anything already written). Never raises; on failure
        call ``_fail()``."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free the library's session once nothing more can happen on it (idempotent)."""

    @property
    def _output_size(self) -> int:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------

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
        return self._output_size + self._early_bytes

    @property
    def closed_by_failure(self) -> bool:
        """True once the session failed (an error, a ragged EOF), not closed cleanly."""
        return self._state is _State.FAILED

    @property
    def resumption(self) -> object | None:
        return None

    # -- driving -------------------------------------------------------------------------------

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
            self._feed(data)
        elif not self._eof_fed:
            self._eof_fed = True
            self._feed_eof()
        events: list[TLSEvent] = []
        if self._state is _State.HANDSHAKING:
            self._handshake(events)
        if self._info is not None and not self._peer_done:
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

    def close(self) -> None:
        if self._state is _State.HANDSHAKING:
            # No close_notify before the handshake finished: abort (bpo-29743).
            self._early.clear()
            self._early_bytes = 0
            self._state = _State.CLOSED
            self._release()
            return
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
        self._shutdown()
        if self._peer_done:
            self._release()

    def key_update(self, request_peer: bool = False) -> None:
        raise EngineUnsupported(f"the {self.engine_name} engine cannot send a KeyUpdate")

    # -- helpers for subclasses ------------------------------------------------------------------

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._release()

    def _failed(self, error: TLSError) -> TLSError:
        """Mark the session failed; return ``error`` for the caller to raise."""
        self._fail()
        return error

    def _eof_error(self) -> TLSError:
        return self._failed(
            TLSError(
                "connection closed by peer during the TLS handshake",
                reason=self._eof_reason,
                during_handshake=True,
            )
        )

    def _clean_close(self) -> None:
        """The peer's close_notify was read: nothing more comes from it."""
        self._peer_done = True
        if self._state is _State.CLOSED:
            self._release()

    def _ragged(self) -> None:
        """The transport ended without close_notify: the session is over both ways."""
        self._peer_done = True
        self._fail()

    @staticmethod
    def _flush(chunks: list[bytes], events: list[TLSEvent]) -> None:
        if chunks:
            events.append(ApplicationData(chunks[0] if len(chunks) == 1 else b"".join(chunks)))
            chunks.clear()

    # -- internals -------------------------------------------------------------------------------

    def _handshake(self, events: list[TLSEvent]) -> None:
        try:
            done = self._handshake_step()
        except TLSError:
            self._fail()
            raise
        if not done:
            if self._eof_fed:
                raise self._eof_error() from None
            return
        self._state = _State.OPEN
        self._info = self._make_info()
        events.append(HandshakeComplete(self._info))
        early, self._early, self._early_bytes = self._early, [], 0
        for chunk in early:
            self._write(chunk)
