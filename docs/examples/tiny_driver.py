"""A tiny but complete spcore driver: docs/driver-contract.md in one readable file.

One thread, one ``selectors`` loop, one ``send`` per buffer (no gathered writes), the timer
heap and job pool from ``spcore.drivers.base``. It passes the conformance suite:

    PYTHONPATH=docs/examples pytest --pyargs spcore.conformance.scenarios \
        --spcore-driver-factory tiny_driver:TinyDriver
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time

from spcore import Connection, Server
from spcore.drivers.base import (
    READ_SIZE,
    Bound,
    Driver,
    JobPool,
    TimerHeap,
    prepare_accepted,
    wait_timeout,
)

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class TinyDriver(Driver):
    name = "tiny"

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, "a selectors loop, one send per buffer"

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.selector = selectors.DefaultSelector()
        self.timers = TimerHeap()
        self.socks: dict[Connection, socket.socket] = {}
        self.masks: dict[Connection, int] = {}  # what each socket is registered for
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.jobs = JobPool(server.limits.worker_threads, self.wake)
        self.listening = False

    def wake(self) -> None:  # any thread: interrupt select()
        with contextlib.suppress(OSError):  # a wake-up already pending, or closing
            self.wake_w.send(b"!")

    def run(self) -> None:
        server = self.server
        server.info["driver"] = self.name
        if not self.bound:
            self.bind()
        server.start(time.monotonic(), time.time())
        self.selector.register(self.wake_r, READ, None)
        try:
            while not server.finished:
                self.listen(server.accepting)
                deadlines = (self.timers.next_deadline(), server.deadline)
                timeout = wait_timeout(time.monotonic(), *deadlines)
                for key, events in self.selector.select(timeout):
                    now = time.monotonic()
                    if key.data is None:  # the wake-up socket: just empty it
                        with contextlib.suppress(BlockingIOError):
                            while self.wake_r.recv(4096):
                                pass
                    elif isinstance(key.data, Bound):
                        self.accept(key.data, now)
                    else:
                        self.ready(key.data, events, now)
                now = time.monotonic()
                if self.stop_requested and not server.shutting_down:
                    self.listen(False)
                    self.close_listeners()
                    server.begin_shutdown(now)
                for conn, job in self.jobs.finished():
                    conn.job_done(job, now)  # every job comes back, even for a gone connection
                    self.sync(conn, now)
                for conn in self.timers.expired(now):
                    conn.on_deadline(now)
                    self.sync(conn, now)
                if server.deadline is not None and now >= server.deadline:
                    server.on_deadline(now)
                for conn in server.take_woken():
                    self.sync(conn, now)
        finally:
            for conn in list(self.socks):
                self.close(conn, ConnectionAbortedError("driver stopped"), time.monotonic())
            self.close_listeners()
            self.jobs.shutdown()
            self.selector.close()
            self.wake_r.close()
            self.wake_w.close()

    def listen(self, accepting: bool) -> None:
        """Poll the listening sockets only while the server accepts."""
        if accepting == self.listening or (accepting and self.server.shutting_down):
            return
        self.listening = accepting
        for bound in self.bound:
            if accepting:
                self.selector.register(bound.sock, READ, bound)
            else:
                self.selector.unregister(bound.sock)

    def accept(self, bound: Bound, now: float) -> None:
        while self.server.accepting:
            try:
                sock, peer = bound.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # the core says whether to go on or pause (EMFILE)
                self.server.accept_failed(exc, now)
                continue
            prepare_accepted(sock)
            conn = self.server.accept(bound.listener, peer, sock.getsockname(), now)
            self.socks[conn], self.masks[conn] = sock, 0
            self.sync(conn, now)

    def ready(self, conn: Connection, events: int, now: float) -> None:
        sock = self.socks.get(conn)
        if sock is None:
            return  # closed earlier in this round
        if events & READ:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError as exc:
                self.close(conn, exc, now)
                return
            if data is not None:
                conn.receive_data(data, now)  # b"" = the peer shut its side
        self.sync(conn, now)  # and for WRITE: the socket takes more output

    def sync(self, conn: Connection, now: float) -> None:
        """Do what the connection wants, in the contract's order."""
        sock = self.socks.get(conn)
        if sock is None:
            return  # already closed
        while not conn.should_close:
            out = conn.outgoing()
            try:
                if out:
                    sent = sock.send(out[0])
                    conn.sent(sent, now)
                    continue
                if conn.write_eof:
                    sock.shutdown(socket.SHUT_WR)
                    conn.write_eof_done(now)
                    continue
            except BlockingIOError:
                pass  # the kernel's buffer is full: wait for WRITE
            except OSError as exc:
                self.close(conn, exc, now)
                return
            break
        if conn.should_close:
            self.close(conn, None, now)
            return
        mask = (READ if conn.reading else 0) | (WRITE if conn.outgoing() else 0)
        if mask != self.masks[conn]:
            if not mask:
                self.selector.unregister(sock)
            elif not self.masks[conn]:
                self.selector.register(sock, mask, conn)
            else:
                self.selector.modify(sock, mask, conn)
            self.masks[conn] = mask
        for job in conn.take_jobs():
            self.jobs.submit(conn, job)
        self.timers.arm(conn)

    def close(self, conn: Connection, error: BaseException | None, now: float) -> None:
        """The one exit path: socket, registration, timer, then the core."""
        sock = self.socks.pop(conn)
        if self.masks.pop(conn):
            self.selector.unregister(sock)
        sock.close()
        self.timers.forget(conn)
        conn.connection_lost(error, now)
