"""Loopback helpers for the driver tests: a line echo server, a driver run on a thread, clients
that connect, read and reset, and bounded waits. Every wait has a timeout, so that a broken
driver fails instead of hanging."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest

from spcore.http.messages import Request, Response
from spcore.listeners import http_listener
from spcore.server import Listener
from spcore.stream import DeferredSession, Session, StreamHandler

WAIT = 5.0  # the default bound for anything that should be quick


# -- servers ---------------------------------------------------------------------------------------


class Echo(StreamHandler):
    """The line server the driver tests talk to: echoes lines; ``bye`` closes; ``flood N``
    sends N lines of 60 000 bytes."""

    idle_timeout = None

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        if message == b"bye":
            session.close()
        elif message.startswith(b"flood "):
            for i in range(int(message.split()[1])):
                session.send(b"%05d" % i + b"x" * 59_995)
        else:
            session.send(message)


def flood_lines(count: int) -> bytes:
    """What ``Echo`` sends for ``flood count``."""
    return b"".join(b"%05d" % i + b"x" * 59_995 + b"\r\n" for i in range(count))


class SlowEcho(Echo):
    """Echoes after a pause, on a worker thread."""

    blocking = True

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        time.sleep(0.3)
        super().message(session, message)


def big_download(count: int) -> tuple[Listener, bytes]:
    """An HTTP listener that answers with ``count`` chunks of 64 KiB, handed to the core one
    by one; and the body they make."""
    chunks = [b"%06d" % i + b"x" * 65_530 for i in range(count)]
    body = b"".join(chunks)

    def app(request: Request) -> Response:
        return Response(200, headers=[("content-length", str(len(body)))], body=iter(chunks))

    return http_listener(app), body


# -- running a driver ------------------------------------------------------------------------------


class Runnable(Protocol):
    """A driver, as far as running it on a thread goes."""

    def run(self) -> None: ...

    def stop(self) -> None: ...


def start_in_thread(driver: Runnable, name: str) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``driver.run()`` on a daemon thread; what it raises lands in the list."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            driver.run()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, failures


@contextlib.contextmanager
def run_in_thread(
    driver: Runnable, name: str, join: float = WAIT + 5
) -> Iterator[threading.Thread]:
    """Run the driver on a thread; on the way out stop it and require ``run()`` to return,
    within ``join`` seconds, without raising."""
    thread, failures = start_in_thread(driver, name)
    try:
        yield thread
    finally:
        driver.stop()
        thread.join(join)
    assert not thread.is_alive(), "run() did not return after stop()"
    assert not failures, failures


def stop_during_a_job(driver: Runnable, address: tuple[str, int]) -> socket.socket:
    """Stop a ``SlowEcho`` server while it works on a line: the line still comes back, then
    the server closes the connection and no longer listens. Returns the client to close."""
    client = connect(address)
    client.sendall(b"last\n")
    time.sleep(0.1)  # the job is running
    driver.stop()
    assert read_line(client) == b"last\r\n"
    assert client.recv(10) == b""  # then the server closes
    with pytest.raises(OSError):
        connect(address)  # the listening socket is closed
    return client


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- clients ---------------------------------------------------------------------------------------


def connect(
    address: tuple[str, int], tls: ssl.SSLContext | None = None, timeout: float = WAIT
) -> socket.socket:
    """A client socket with a timeout; with ``tls``, wrapped for ``localhost``."""
    sock = socket.create_connection(address, timeout=timeout)
    if tls is not None:
        return tls.wrap_socket(sock, server_hostname="localhost")
    return sock


def read_line(sock: socket.socket) -> bytes:
    """Up to and including the first newline, or what came before EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def rst_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER zero), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect_echoed(address: tuple[str, int], line: bytes) -> socket.socket:
    """A client of an ``Echo`` server that has had ``line`` echoed: connected and served."""
    client = connect(address)
    client.sendall(line + b"\n")
    assert read_line(client) == line + b"\r\n"
    return client


def receive_flood(address: tuple[str, int], count: int) -> bytes:
    """Ask an ``Echo`` server for ``flood count`` on a new connection; read as many bytes as
    the flood holds (or more, if the server sends more)."""
    size = len(flood_lines(count))
    client = connect(address)
    client.sendall(b"flood %d\n" % count)
    received = b""
    while len(received) < size:
        chunk = client.recv(1 << 20)
        assert chunk, f"EOF after {len(received)} bytes of the flood"
        received += chunk
    client.close()
    return received


def download(address: tuple[str, int], body: bytes) -> bytes:
    """GET ``body`` from a ``big_download`` server, reading only once its output has backed
    up; returns all that came (head and body)."""
    client = connect(address)
    client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    time.sleep(0.3)  # let the server fill the socket buffers and queue behind a pending send
    data = read_all(client)
    client.close()
    head, _, received = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert received == body
    return data
