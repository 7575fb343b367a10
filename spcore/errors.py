"""The exceptions spcore raises.

Modelled on h11: every protocol error says whose fault it was (the remote peer's or the local
code's) and carries the HTTP status a server would answer it with, so the layer that catches
it can react without guessing.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error spcore raises about bytes or their use.

    ``error_status_hint`` is the HTTP status that best answers the error (400 unless a
    more precise one applies).
    """

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise RemoteProtocolError or LocalProtocolError instead")
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


class LocalProtocolError(ProtocolError):
    """Our own side (application or driver) used the API in a way the protocol forbids."""


class ClientDisconnected(ConnectionError):
    """The client is gone: raised to a hosted application that reads from or writes to it
    afterwards (ASGI's ``send()``, WSGI's ``wsgi.input`` and ``write()``). An ``OSError``, as
    the ASGI specification (2.4) asks of a server's ``send()``."""
