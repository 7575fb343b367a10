"""A tiny but complete spcore driver: docs/driver-contract.md in one readable file.

One thread, one ``selectors`` loop, one ``send`` per buffer (no gathered writes); the driver
ritual (actions, timers, jobs, calls handed to the loop) from ``spcore.drivers.base.Driver``.
It passes the conformance suite:

    PYTHONPATH=docs/examples pytest --pyargs spcore.conformance.scenarios \\
        --spcore-driver-factory tiny_driver:TinyDriver

and serves the built-in app over plain HTTP until Ctrl-C when run as a script:

    python docs/examples/tiny_driver.py [PORT]
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys
import time

from spcore import Connection, Listener, Server
from spcore.actions import Send
from spcore.app import builtin_app
from spcore.drivers.base import Bound, Driver, WakeSocket, prepare_accepted, signals_wake
from spcore.http.protocol import HTTPProtocol

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Link:
    """One connection's socket, and what its actions left to do."""

    def __init__(self, conn: Connection, sock: socket.socket) -> None:
        self.conn, self.sock = conn, sock
        self.mask = 0  # what the socket is registered for
        self.reading = False  # the latest Read action
        self.sending: Send | None = None  # a Send the kernel's full buffer did not take yet


class TinyDriver(Driver[Link]):
    """The ritual (the actions, the timers, the jobs, the calls) is the base class's
    ``follow`` and ``drive``; this is the loop and the platform's calls."""

    name = "tiny"

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, "a selectors loop, one send per buffer"

    def __init__(self, server: Server) -> None:
        self.waker = WakeSocket()  # the socket pair that wakes select()
        super().__init__(server)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.waker.reader, READ, None)
        self.listening = False

    def wake(self) -> None:  # any thread: interrupt select()
        self.waker.wake()

    def run(self) -> None:
        self.server.info["driver"] = self.name
        if not self.bound:
            self.bind()
        self.server.start(time.monotonic(), time.time())
        try:
            with signals_wake(self.waker.signal_fd):  # a signal on the main thread wakes it too
                self.loop()
        finally:
            self.end(time.monotonic())
            self.close_listeners()
            self.selector.close()
            self.waker.close()

    def loop(self) -> None:
        while self.follow(time.monotonic()):  # the calls handed over, the server's actions
            for key, events in self.selector.select(self.wait_timeout()):
                now = time.monotonic()
                if key.data is None:
                    self.waker.drain()  # a wake-up: its work is done in follow()
                elif isinstance(key.data, Bound):
                    self.accept(key.data, now)
                else:
                    self.ready(key.data, events, now)
            now = time.monotonic()
            self.finish_jobs(now)
            self.expire(now)

    def accepting(self, on: bool) -> None:
        """Poll the listening sockets only while the server accepts."""
        if on != self.listening:
            self.listening = on
            for bound in self.bound:
                if on:
                    self.selector.register(bound.sock, READ, bound)
                else:
                    self.selector.unregister(bound.sock)

    def accept(self, bound: Bound, now: float) -> None:
        if not self.listening:
            return  # the server stopped accepting earlier in this round
        try:
            sock, peer = bound.sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # the core says whether to go on or pause (EMFILE)
            self.server.accept_failed(exc, now)
            return
        try:
            prepare_accepted(sock)  # non-blocking, no Nagle delay
            local = sock.getsockname()
        except OSError:  # reset already: one connection lost
            sock.close()
            self.server.refused()
            return
        conn = self.server.accept(bound.listener, peer, local, now)
        self.links[conn] = Link(conn, sock)
        self.drive(conn, now)
        self.follow(now)  # at max_connections the server stops accepting: at once

    def ready(self, link: Link, events: int, now: float) -> None:
        if link.conn not in self.links:
            return  # closed earlier in this round
        try:
            if events & WRITE and link.sending is not None:
                self.send(link, link.sending, now)
            if events & READ:
                link.conn.receive_data(link.sock.recv(65536), now)  # b"": the peer shut its side
        except BlockingIOError:
            pass
        except OSError as exc:
            self.close(link, exc, now)
            return
        self.drive(link.conn, now)

    # -- what drive() calls for the connection's actions -------------------------------------

    def send(self, link: Link, send: Send, now: float) -> None:
        try:
            sent = link.sock.send(send.buffers[0])  # what it does not take comes back next
        except BlockingIOError:
            link.sending = send  # the kernel's buffer is full: try again when writable
            return
        link.sending = None
        link.conn.sent(sent, now)

    def read(self, link: Link, on: bool) -> None:
        link.reading = on

    def shut_write(self, link: Link) -> None:
        link.sock.shutdown(socket.SHUT_WR)

    def settle(self, link: Link) -> None:
        """Register the socket for what the actions left: input wanted, a Send held."""
        mask = (READ if link.reading else 0) | (WRITE if link.sending else 0)
        if mask != link.mask:
            if not mask:
                self.selector.unregister(link.sock)
            elif not link.mask:
                self.selector.register(link.sock, mask, link)
            else:
                self.selector.modify(link.sock, mask, link)
            link.mask = mask

    def close(self, link: Link, error: BaseException | None, now: float) -> None:
        """The one exit path: registration, socket, then the core (``forget``)."""
        if link.mask:
            self.selector.unregister(link.sock)
            link.mask = 0
        link.sock.close()
        self.forget(link.conn, error, now)


def main(argv: list[str]) -> None:
    server = Server([Listener(lambda: HTTPProtocol(app), port=int(argv[0]) if argv else 8080)])
    app = builtin_app(server)
    driver = TinyDriver(server)
    port = driver.bind()[0].address[1]
    signal.signal(signal.SIGINT, lambda *_: driver.stop())
    print(f"serving http://127.0.0.1:{port}/ with the tiny driver (Ctrl-C stops)", flush=True)
    driver.run()


if __name__ == "__main__":
    main(sys.argv[1:])
