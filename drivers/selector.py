"""The ``selectors`` driver: readiness-based, non-blocking sockets, one thread.

Uses the best selector the platform has (epoll, kqueue, devpoll, poll, select), reads in
large chunks, writes the core's buffers gathered with ``sendmsg`` where the platform has it,
and keeps one timer heap. Jobs run on a bounded pool that wakes the loop through a socket
pair when one finishes.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import Any

from spcore.connection import Connection

from .base import (
    READ_SIZE,
    Bound,
    Driver,
    JobPool,
    TimerHeap,
    prepare_accepted,
    wait_timeout,
)

__all__ = ["SelectorsDriver"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_IOV_MAX = 512
_ACCEPT_BATCH = 64
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


class _Link:
    """The driver's side of one connection."""

    __slots__ = ("conn", "mask", "sock")

    def __init__(self, conn: Connection, sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock
        self.mask = 0


class SelectorsDriver(Driver):
    name = "selectors"

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, f"readiness loop on {selectors.DefaultSelector.__name__}"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self._selector = selectors.DefaultSelector()
        self._timers = TimerHeap()
        self._links: dict[Connection, _Link] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._jobs = JobPool(server.limits.worker_threads, self.wake)
        self._accepting = False

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is already pending
            self._wake_w.send(b"\0")

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        server = self.server
        server.info["driver"] = self.name
        if not self.bound:
            self.bind()
        server.start(time.monotonic(), time.time())
        self._selector.register(self._wake_r, _READ, None)
        try:
            while not server.finished:
                self._set_accepting(server.accepting)
                timeout = self._timeout(time.monotonic())
                events = self._selector.select(timeout)
                now = time.monotonic()
                for key, mask in events:
                    data = key.data
                    if type(data) is _Link:
                        self._ready(data, mask, now)
                    elif data is None:
                        self._drain_wake(now)
                    else:
                        self._accept(data, now)
                for conn in self._timers.expired(now):
                    link = self._links.get(conn)
                    if link is not None:
                        conn.on_deadline(now)
                        self._sync(link, now)
                deadline = server.deadline
                if deadline is not None and now >= deadline:
                    server.on_deadline(now)
                self._sync_woken(now)
        finally:
            self._close_all()

    def _timeout(self, now: float) -> float | None:
        return wait_timeout(now, self._timers.next_deadline(), self.server.deadline)

    def _drain_wake(self, now: float) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        for conn, job in self._jobs.finished():
            conn.job_done(job, now)
            link = self._links.get(conn)
            if link is not None:
                self._sync(link, now)
        if self.stop_requested and not self.server.shutting_down:
            self._set_accepting(False)
            self.close_listeners()
            self.server.begin_shutdown(now)

    def _set_accepting(self, accepting: bool) -> None:
        if accepting == self._accepting or (self.server.shutting_down and accepting):
            return
        self._accepting = accepting
        for bound in self.bound:
            if bound.sock.fileno() < 0:
                continue
            if accepting:
                self._selector.register(bound.sock, _READ, bound)
            else:
                self._selector.unregister(bound.sock)

    def _accept(self, bound: Bound, now: float) -> None:
        server = self.server
        for _ in range(_ACCEPT_BATCH):
            if not server.accepting:
                return
            try:
                sock, peer = bound.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # the core decides: accept on, or pause (EMFILE...)
                server.accept_failed(exc, now)
                continue
            prepare_accepted(sock)
            conn = server.accept(bound.listener, peer, sock.getsockname(), now)
            link = _Link(conn, sock)
            self._links[conn] = link
            self._sync(link, now)

    def _ready(self, link: _Link, mask: int, now: float) -> None:
        conn = link.conn
        if mask & _READ:
            try:
                data = link.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self._close(link, exc, now)
                return
            if data is not None:
                conn.receive_data(data, now)
        self._sync(link, now)

    def _sync_woken(self, now: float) -> None:
        for conn in self.server.take_woken():
            link = self._links.get(conn)
            if link is not None:
                self._sync(link, now)

    def _sync(self, link: _Link, now: float) -> None:
        """Apply the connection's wishes: close, write, shut down, read, time, jobs."""
        conn, sock = link.conn, link.sock
        while True:
            if conn.should_close:
                self._close(link, None, now)
                return
            out = conn.outgoing()
            if out:
                try:
                    if _HAS_SENDMSG:
                        sent = sock.sendmsg(out if len(out) <= _IOV_MAX else list(out)[:_IOV_MAX])
                    else:
                        sent = sock.send(out[0])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._close(link, exc, now)
                    return
                if sent:
                    conn.sent(sent, now)
                    continue
            elif conn.write_eof:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    self._close(link, exc, now)
                    return
                conn.write_eof_done(now)
                continue
            break
        mask = (_READ if conn.reading else 0) | (_WRITE if conn.outgoing() else 0)
        if mask != link.mask:
            if link.mask == 0:
                self._selector.register(sock, mask, link)
            elif mask == 0:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, mask, link)
            link.mask = mask
        for job in conn.take_jobs():
            self._jobs.submit(conn, job)
        self._timers.arm(conn)

    def _close(self, link: _Link, error: BaseException | None, now: float) -> None:
        conn = link.conn
        if self._links.pop(conn, None) is None:
            return
        if link.mask:
            self._selector.unregister(link.sock)
            link.mask = 0
        link.sock.close()
        self._timers.forget(conn)
        conn.connection_lost(error, now)

    def _close_all(self) -> None:
        now = time.monotonic()
        for link in list(self._links.values()):
            self._close(link, ConnectionAbortedError("driver stopped"), now)
        self.close_listeners()
        self._jobs.shutdown()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
