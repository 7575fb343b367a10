"""Peers that outbound connections reach: a listening socket whose connections threads serve
(plain, or TLS through Python's ``ssl``), for the outbound scenarios and the tunnel's tests.

A handler gets each accepted (and, with TLS, wrapped) socket and the ``Peer``, and is done
with the socket when it returns; ``Peer.close()`` ends the listener and joins its threads.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .harness import PKI

__all__ = ["TIMEOUT", "Handler", "Peer", "echo", "hold", "peer", "server_tls"]

#: How long a peer's socket operations may block.
TIMEOUT = 10.0

Handler = Callable[[socket.socket, "Peer"], None]


class Peer:
    """A listening socket in a thread; each connection is handed to ``handler`` on a thread
    of its own, after the TLS handshake when given a server context. The server names clients
    asked for (SNI) are recorded in ``names``; sockets a handler keeps open go in ``held``."""

    def __init__(
        self, family: int, address: Any, handler: Handler, tls: ssl.SSLContext | None = None
    ) -> None:
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family != getattr(socket, "AF_UNIX", None):  # a port a test binds again
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(address)
        self.listener.listen(64)
        self.address = self.listener.getsockname()
        self.handler = handler
        self.tls = tls
        self.names: list[str | None] = []
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        if tls is not None:
            tls.sni_callback = lambda sock, name, context: self.names.append(name)
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._start(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError), sock:
            sock.settimeout(TIMEOUT)
            stream = sock if self.tls is None else self.tls.wrap_socket(sock, server_side=True)
            self.handler(stream, self)

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.held:
            sock.close()
        for thread in self._threads:
            thread.join(TIMEOUT)


@contextlib.contextmanager
def peer(
    handler: Handler, tls: ssl.SSLContext | None = None, *, unix: str | None = None
) -> Iterator[Peer]:
    """A ``Peer`` on 127.0.0.1 (a free port), or on the Unix socket ``unix``."""
    if unix is not None:
        running = Peer(socket.AF_UNIX, unix, handler, tls)
    else:
        running = Peer(socket.AF_INET, ("127.0.0.1", 0), handler, tls)
    try:
        yield running
    finally:
        running.close()


def echo(sock: socket.socket, peer: Peer) -> None:
    """Send back whatever arrives, until the end of the stream."""
    while data := sock.recv(65536):
        sock.sendall(data)


def hold(sock: socket.socket, peer: Peer) -> None:
    """Take the connection and never read from it (its receive buffer made small)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.held.append(sock.dup())


def server_tls(pki: PKI) -> ssl.SSLContext:
    """A stdlib server context for the PKI's server certificate (localhost, 127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server.certfile), str(pki.server.keyfile))
    return context
