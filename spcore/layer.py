"""The interface between a connection and the protocol above it (HTTP, stream framings).

A protocol layer only ever sees plaintext: the connection below it has already dealt with the
PROXY header, the TLS handshake and encryption. It talks back through the connection's
``write``/``close``/``abort``/``submit_job`` and tells the connection what it waits for
through ``reading`` and ``deadline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["ProtocolLayer"]


class ProtocolLayer:
    """Base class: override what the protocol needs; the defaults do nothing."""

    #: When ``timer_expired`` should be called, in the driver's clock (None: never). It does
    #: not run while ``conn.writable`` is False: the connection then holds reading back for
    #: its own output, so a read timeout would blame the client for the server's pause.
    deadline: float | None = None

    @property
    def reading(self) -> bool:
        """False while the protocol cannot take more input (a job is running, a response is
        being produced): the driver stops reading and the kernel's window pushes back."""
        return True

    def connection_made(self, conn: Connection, now: float) -> None:
        """The connection is ready for plaintext (after the TLS handshake, if any)."""

    def data_received(self, data: bytes, now: float) -> None:
        """Plaintext arrived (never empty)."""

    def eof_received(self, clean: bool, now: float) -> None:
        """The peer ended its side; ``clean`` is False for a TLS EOF without close_notify."""

    def resume_writing(self, now: float) -> None:
        """Output fell below the low-water mark after ``conn.writable`` was False (restart a
        read timeout here: none ran meanwhile)."""

    def timer_expired(self, now: float) -> None:
        """``deadline`` has passed."""

    def shutdown(self, now: float) -> None:
        """The server is shutting down gracefully: finish what is in flight, then close."""

    def connection_lost(self, error: BaseException | None) -> None:
        """The connection is gone (whatever the cause); release everything."""
