"""The ``selectors`` driver: readiness-based, non-blocking sockets, one thread.

Uses the best selector the platform has (epoll, kqueue, devpoll, poll, select), reads in
large chunks, writes each ``Send`` gathered with ``sendmsg`` where the platform has it. A
``Send`` the kernel cannot take at once (EAGAIN) is held and tried again when the socket is
writable, so the loop never spins on a full socket. Wake-ups (a call handed to the loop, a
finished job) arrive through a socket pair (the self-pipe).

Outbound connections: a non-blocking ``connect``, then the socket polled for writability,
when ``SO_ERROR`` tells how the connect ended (the POSIX way, as asyncio's ``sock_connect``
does). A Unix domain socket connects or fails at once; its EAGAIN (the listener's backlog
is full) is a failure, since no writability will ever announce that it went through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time

from spcore.actions import Send
from spcore.connection import Connection
from spcore.server import Server

from .base import READ_SIZE, Bound, Driver, WakeSocket, prepare_accepted, signals_wake

__all__ = ["SelectorsDriver"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_IOV_MAX = 512
_ACCEPT_BATCH = 64
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


class _Link:
    """The driver's side of one connection."""

    __slots__ = ("conn", "connecting", "mask", "reading", "sending", "sock")

    def __init__(self, conn: Connection, sock: socket.socket, *, connecting: bool = False) -> None:
        self.conn = conn
        self.sock = sock
        self.mask = 0  # what the socket is registered for
        self.reading = False
        self.sending: Send | None = None  # held: the kernel took none of it yet
        self.connecting = connecting  # an outbound connect in progress: polled for writing


class SelectorsDriver(Driver[_Link]):
    name = "selectors"
    connects = True

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, f"readiness loop on {selectors.DefaultSelector.__name__}"

    def __init__(self, server: Server) -> None:
        self._waker = WakeSocket()
        super().__init__(server)
        self._selector = selectors.DefaultSelector()
        self._accepting = False

    def wake(self) -> None:
        self._waker.wake()

    def run(self) -> None:
        server = self.server
        server.info["driver"] = self.name
        if not self.bound:
            self.bind()
        now = time.monotonic()
        server.start(now, time.time())
        self._selector.register(self._waker.reader, _READ, None)
        try:
            with signals_wake(self._waker.signal_fd):
                self._loop(now)
        finally:
            self.end(time.monotonic())
            self.close_listeners()
            self._selector.close()
            self._waker.close()

    def _loop(self, now: float) -> None:
        while self.follow(now):
            events = self._selector.select(self.wait_timeout())
            now = time.monotonic()
            for key, mask in events:
                data = key.data
                if type(data) is _Link:
                    self._ready(data, mask, now)
                elif data is None:
                    self._waker.drain()
                else:
                    self._accept(data, now)
            self.finish_jobs(now)
            self.expire(now)

    # -- accepting ------------------------------------------------------------------------------

    def accepting(self, on: bool) -> None:
        if on == self._accepting:
            return
        self._accepting = on
        for bound in self.bound:
            if bound.sock.fileno() >= 0:
                if on:
                    self._selector.register(bound.sock, _READ, bound)
                else:
                    self._selector.unregister(bound.sock)

    def _accept(self, bound: Bound, now: float) -> None:
        server = self.server
        for _ in range(_ACCEPT_BATCH):
            if not self._accepting:
                return
            try:
                sock, peer = bound.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # the core decides: accept on, or pause (EMFILE...)
                server.accept_failed(exc, now)
                self.follow(now)
                continue
            try:
                prepare_accepted(sock)
                local = sock.getsockname()
            except OSError:  # it broke already (reset): one connection lost
                sock.close()
                server.refused()
                continue
            conn = server.accept(bound.listener, peer, local, now)
            self.links[conn] = _Link(conn, sock)
            self.drive(conn, now)
            self.follow(now)  # at the limit the server stops accepting: before the next one

    # -- connecting -----------------------------------------------------------------------------

    def start_connect(
        self, conn: Connection, sock: socket.socket, address: tuple[str, int] | str, now: float
    ) -> None:
        link = self.links[conn] = _Link(conn, sock, connecting=True)
        code = sock.connect_ex(address)
        if code == 0:
            self._connected(link, now)
        elif code == errno.EINPROGRESS and not isinstance(address, str):
            self.drive(conn, now)  # its timer; writability will say how it ended
        else:
            self.close(link, OSError(code, os.strerror(code)), now)

    def _connected(self, link: _Link, now: float) -> None:
        link.connecting = False
        try:
            local = link.sock.getsockname()
        except OSError as exc:  # reset already
            self.close(link, exc, now)
            return
        link.conn.connected(local, now)
        self.drive(link.conn, now)

    # -- one connection -------------------------------------------------------------------------

    def _ready(self, link: _Link, mask: int, now: float) -> None:
        conn = link.conn
        if conn not in self.links:
            return  # closed earlier in this round
        if link.connecting:
            code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.close(link, OSError(code, os.strerror(code)), now)
            else:
                self._connected(link, now)
            return
        try:
            if mask & _WRITE and link.sending is not None:
                self.send(link, link.sending, now)
            if mask & _READ:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    conn.receive_data(link.sock.recv(READ_SIZE), now)  # b"": the peer's EOF
        except OSError as exc:
            self.close(link, exc, now)
            return
        self.drive(conn, now)

    def send(self, link: _Link, send: Send, now: float) -> None:
        buffers = send.buffers
        try:
            if _HAS_SENDMSG:  # (a whole tuple's slice is the tuple itself: no copy)
                sent = link.sock.sendmsg(buffers[:_IOV_MAX])
            else:
                sent = link.sock.send(buffers[0])
        except (BlockingIOError, InterruptedError):
            link.sending = send  # the kernel's buffer is full: wait until it is writable
            return
        link.sending = None
        link.conn.sent(sent, now)  # a rest comes back as the next Send

    def read(self, link: _Link, on: bool) -> None:
        link.reading = on

    def shut_write(self, link: _Link) -> None:
        link.sock.shutdown(socket.SHUT_WR)

    def settle(self, link: _Link) -> None:
        if link.connecting:
            mask = _WRITE
        else:
            mask = (_READ if link.reading else 0) | (_WRITE if link.sending is not None else 0)
        if mask != link.mask:
            if link.mask == 0:
                self._selector.register(link.sock, mask, link)
            elif mask == 0:
                self._selector.unregister(link.sock)
            else:
                self._selector.modify(link.sock, mask, link)
            link.mask = mask

    def close(self, link: _Link, error: BaseException | None, now: float) -> None:
        if link.conn not in self.links:
            return
        if link.mask:
            self._selector.unregister(link.sock)
            link.mask = 0
        link.sock.close()
        self.forget(link.conn, error, now)
