"""The asyncio driver over real loopback sockets: HTTP and TLS, flow control both ways,
half-close and resets, timers, jobs, admission and graceful shutdown, on each event loop."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import logging
import random
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from netkit import connect as connect_to
from netkit import rst_close, run_in_thread, start_in_thread, wait_for

from spcore.config import Limits
from spcore.drivers import aio, choose
from spcore.drivers.aio import AsyncioDriver, LoopName
from spcore.drivers.base import prepare_accepted
from spcore.framing import RawFraming
from spcore.http.messages import App, Pipe, Request, Response, blocking
from spcore.http.protocol import HTTPProtocol
from spcore.layer import ProtocolLayer
from spcore.server import Listener, Server
from spcore.stream import DeferredSession, Session, Sessions, StreamHandler, StreamProtocol
from spcore.tls import ServerTLS

TIMEOUT = 10.0  # the bound on every wait; tests normally take a fraction of it
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.fixture(params=["default", "uvloop"])
def loop(request: pytest.FixtureRequest) -> LoopName:
    if request.param == "uvloop" and not HAS_UVLOOP:
        pytest.skip("uvloop is not installed (pip install spcore[uvloop])")
    name: LoopName = request.param
    return name


@dataclass
class Running:
    server: Server
    driver: AsyncioDriver
    port: int
    thread: threading.Thread


@contextlib.contextmanager
def serving(
    protocol: Callable[[], ProtocolLayer],
    loop: LoopName,
    *,
    limits: Limits | None = None,
    tls: ServerTLS | None = None,
    send_buffer: int | None = None,
) -> Iterator[Running]:
    """Run the driver on a thread; stop it and join the thread on the way out.

    ``send_buffer`` sets SO_SNDBUF on the listening socket, which accepted sockets inherit
    (on Linux): a small kernel buffer makes the transport hold output.
    """
    listener = Listener(protocol, host="127.0.0.1", port=0, tls=tls)
    server = Server([listener], limits)
    driver = AsyncioDriver(server, loop=loop)
    bound = driver.bind()[0]
    if send_buffer is not None:
        bound.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    port = bound.address[1]
    with run_in_thread(driver, "aio-driver", join=TIMEOUT) as thread:
        yield Running(server, driver, port, thread)


def http_app(app: App) -> Callable[[], ProtocolLayer]:
    return lambda: HTTPProtocol(app)


def hello(request: Request) -> Response:
    return Response(200, body=f"hello {request.scheme} {request.path}")


def connect(port: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    """A client of the server on ``port``, bounded by this file's longer timeout."""
    return connect_to(("127.0.0.1", port), tls, TIMEOUT)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length: (head, body)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside the head: {data!r}"
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = int(header(head, b"content-length"))
    data = bytearray(body)
    while len(data) < length:
        chunk = sock.recv(min(1 << 20, length - len(data)))
        assert chunk, "connection closed inside the body"
        data += chunk
    return head, bytes(data)


def header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} header in {head!r}")


def exchange(
    sock: socket.socket,
    data: bytes,
    complete: Callable[[bytearray], bool] | None = None,
    *,
    half_close: bool = False,
    pause: float = 0.0,
) -> bytes:
    """Send ``data`` while reading (the server answers as it reads) until ``complete`` says
    so, or until EOF when it is None. ``half_close`` shuts our side once all is sent;
    ``pause`` makes a slow reader (small reads, a sleep after each)."""
    sock.setblocking(False)
    out = memoryview(data)
    received = bytearray()
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while complete is None or not complete(received):
            assert time.monotonic() < deadline, f"stuck at {len(received)} bytes received"
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
            for _, ready in sel.select(1.0):
                if ready & selectors.EVENT_WRITE and out:
                    with contextlib.suppress(BlockingIOError, ssl.SSLWantWriteError):
                        out = out[sock.send(out[:65536]) :]
                    if half_close and not out:
                        sock.shutdown(socket.SHUT_WR)
                if ready & selectors.EVENT_READ:
                    with contextlib.suppress(BlockingIOError, ssl.SSLWantReadError):
                        while True:  # drain the TLS layer too: select cannot see it
                            chunk = sock.recv(16384 if pause else 1 << 20)
                            if not chunk:
                                assert complete is None, "connection closed early"
                                sock.setblocking(True)
                                return bytes(received)
                            received += chunk
                            time.sleep(pause)
    sock.setblocking(True)
    assert not out, "the response ended before the request was sent"
    return bytes(received)


def response_complete(data: bytearray) -> bool:
    """Whether ``data`` holds a whole response with a Content-Length."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    return len(data) - end - 4 >= int(header(bytes(data[:end]), b"content-length"))


# -- the basics -------------------------------------------------------------------------------


def test_registered_and_probed() -> None:
    assert choose("asyncio") is AsyncioDriver
    ok, why = AsyncioDriver.probe()
    assert ok
    assert why.startswith("asyncio ")
    if sys.platform == "win32":
        assert "Proactor" in why


def test_unknown_loop_is_refused() -> None:
    server = Server([Listener(lambda: HTTPProtocol(hello))])
    with pytest.raises(ValueError, match="unknown asyncio loop"):
        AsyncioDriver(server, loop="trio")  # type: ignore[arg-type]


def test_uvloop_asked_for_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes the import fail
    server = Server([Listener(lambda: HTTPProtocol(hello))])
    with pytest.raises(RuntimeError, match="uvloop"):
        AsyncioDriver(server, loop="uvloop")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_uvloop_is_used_when_asked_for() -> None:
    with serving(http_app(hello), "uvloop") as running:
        client = http.client.HTTPConnection("127.0.0.1", running.port, timeout=TIMEOUT)
        client.request("GET", "/")
        assert client.getresponse().read() == b"hello http /"
        client.close()
        assert running.server.info == {"driver": "asyncio", "loop": "Loop"}


def test_plain_request_and_keep_alive(loop: LoopName) -> None:
    with serving(http_app(hello), loop) as running:
        client = http.client.HTTPConnection("127.0.0.1", running.port, timeout=TIMEOUT)
        for path in ("/a", "/b", "/c"):
            client.request("GET", path)
            response = client.getresponse()
            assert response.status == 200
            assert response.read() == f"hello http {path}".encode()
        client.close()
        assert running.server.stats.connections_total == 1  # one connection, kept alive


def test_tls_request_and_keep_alive(
    loop: LoopName, server_tls: ServerTLS, stdlib_client: ssl.SSLContext
) -> None:
    with serving(http_app(hello), loop, tls=server_tls) as running:
        client = http.client.HTTPSConnection(
            "localhost", running.port, timeout=TIMEOUT, context=stdlib_client
        )
        for path in ("/a", "/b"):
            client.request("GET", path)
            response = client.getresponse()
            assert response.status == 200
            assert response.read() == f"hello https {path}".encode()
        client.close()
        assert running.server.stats.connections_total == 1
        assert running.server.stats.handshakes == 1


def echo(request: Request) -> Response:
    pipe = Pipe()
    request.read_body(pipe)
    length = request.header("content-length") or "0"
    return Response(200, headers=[("content-length", length)], body=pipe)


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_ten_megabyte_echo_is_intact(
    loop: LoopName, use_tls: bool, server_tls: ServerTLS, stdlib_client: ssl.SSLContext
) -> None:
    body = random.Random(7).randbytes(10 * 1024 * 1024)
    with serving(http_app(echo), loop, tls=server_tls if use_tls else None) as running:
        sock = connect(running.port, stdlib_client if use_tls else None)
        head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        received = exchange(sock, head.encode() + body, response_complete)
        sock.close()
    response_head, _, echoed = received.partition(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.1 200 ")
    assert echoed == body


# -- flow control -----------------------------------------------------------------------------

CHUNK = 64 * 1024
TOTAL = 32 * 1024 * 1024


def test_a_client_that_stops_reading_stops_the_producer(loop: LoopName) -> None:
    produced: list[int] = []

    def app(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(TOTAL // CHUNK):
                produced.append(CHUNK)
                yield b"z" * CHUNK

        return Response(200, headers=[("content-length", str(TOTAL))], body=body())

    with serving(http_app(app), loop) as running:
        sock = small_window(running.port)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: len(running.server.connections) == 1, "the connection", TIMEOUT)
        conn = next(iter(running.server.connections.values()))
        wait_for(lambda: not conn.writable, "the core to hold output back", TIMEOUT)
        settled = -1
        while settled != len(produced):  # until the producer has stopped
            settled = len(produced)
            time.sleep(0.3)
        # Kernel buffers (up to ~4 MiB of autotuned send buffer) + the transport's 64 KiB
        # + the core's 256 KiB high-water mark: far below the whole body.
        assert sum(produced) < 8 * 1024 * 1024
        assert not conn.writable  # the rest waits in the core, not in the transport
        _, received = read_response(sock)
        sock.close()
    assert len(received) == TOTAL
    assert sum(produced) == TOTAL


def small_window(port: int) -> socket.socket:
    """A client whose receive buffer is small, so that the server's output backs up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def test_half_close_still_gets_the_whole_response(loop: LoopName) -> None:
    big = random.Random(3).randbytes(2 * 1024 * 1024)

    def app(request: Request) -> Response:
        return Response(200, body=big)

    with serving(http_app(app), loop, send_buffer=32 * 1024) as running:
        sock = small_window(running.port)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        # A slow reader: the server closes (the peer ended, the response is out) while the
        # transport still holds the response's tail, which must be flushed, not dropped.
        data = exchange(sock, request, half_close=True, pause=0.0005)
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == big


class RawEcho(StreamHandler):
    idle_timeout = None

    def framing(self) -> RawFraming:
        return RawFraming()

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        session.send(message)


def test_the_server_writes_on_after_the_peer_ends_its_side(loop: LoopName) -> None:
    data = random.Random(5).randbytes(2 * 1024 * 1024)
    with serving(lambda: StreamProtocol(RawEcho()), loop, send_buffer=32 * 1024) as running:
        sock = small_window(running.port)
        echoed = exchange(sock, data, half_close=True, pause=0.0005)
        sock.close()
    assert echoed == data


@pytest.mark.parametrize("size", [240 * 1024, 4 * 1024 * 1024], ids=["240K", "4M"])
def test_a_peer_that_stops_reading_is_dropped(loop: LoopName, size: int) -> None:
    # 240K fits in the kernel buffers and the transport: the core closes, waits its close
    # timeout for the peer, then the transport must be aborted, not left flushing forever.
    # 4M does not: the core's send timeout aborts.
    limits = Limits(send_timeout=0.3, close_timeout=0.3)

    def app(request: Request) -> Response:
        return Response(200, body=b"s" * size)

    with serving(http_app(app), loop, limits=limits, send_buffer=32 * 1024) as running:
        sock = small_window(running.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        stats = running.server.stats
        wait_for(lambda: stats.requests == 1, "the request", TIMEOUT)
        wait_for(lambda: stats.connections_open == 0, "the peer to be dropped", TIMEOUT)
        sock.close()


def test_a_peer_reset_ends_the_connection_and_its_response(loop: LoopName) -> None:
    closed = threading.Event()

    def app(request: Request) -> Response:
        if request.path == "/ok":
            return Response(200, body=b"ok")

        def endless() -> Iterator[bytes]:
            try:
                while True:
                    yield b"r" * CHUNK
            finally:
                closed.set()

        return Response(200, body=endless())

    with serving(http_app(app), loop) as running:
        sock = connect(running.port)
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        rst_close(sock)
        assert closed.wait(TIMEOUT), "the response body was not closed"
        wait_for(lambda: not running.server.connections, "the connection to be released", TIMEOUT)
        sock = connect(running.port)  # and the server goes on serving
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[1] == b"ok"
        sock.close()


class Chat(StreamHandler):
    idle_timeout = None

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        session.broadcast(message)


def test_a_broadcast_reaches_the_other_connections(loop: LoopName) -> None:
    sessions = Sessions()
    with serving(lambda: StreamProtocol(Chat(), sessions), loop) as running:
        talker, listener = connect(running.port), connect(running.port)
        wait_for(lambda: len(sessions) == 2, "both sessions", TIMEOUT)
        talker.sendall(b"hello\n")
        assert listener.recv(100) == b"hello\r\n"  # synced as woken, not on its own event
        talker.close()
        listener.close()


# -- timers, jobs, admission ------------------------------------------------------------------


def test_idle_connections_are_closed_on_time(loop: LoopName) -> None:
    with serving(http_app(hello), loop, limits=Limits(idle_timeout=0.2)) as running:
        silent = connect(running.port)
        used = connect(running.port)
        used.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(used)[1] == b"hello http /"
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, without a word
        assert used.recv(1) == b""
        elapsed = time.monotonic() - started
        silent.close()
        used.close()
    assert elapsed < 0.2 + 2.0


def test_a_blocking_app_runs_as_a_job_off_the_loop(loop: LoopName) -> None:
    release = threading.Event()
    threads: list[str] = []

    @blocking
    def app(request: Request) -> Response:
        threads.append(threading.current_thread().name)
        if request.path == "/wait":
            assert release.wait(TIMEOUT)
        else:
            release.set()
        return Response(200, body=request.path)

    with serving(http_app(app), loop) as running:
        waiting = connect(running.port)
        waiting.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: len(threads) == 1, "the first job", TIMEOUT)
        # The first job blocks a worker; the loop still serves the second connection.
        other = connect(running.port)
        other.sendall(b"GET /release HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(other)[1] == b"/release"
        assert read_response(waiting)[1] == b"/wait"
        waiting.close()
        other.close()
    assert all(name.startswith("spcore-job") for name in threads), threads


def test_at_max_connections_the_next_client_waits_for_a_free_slot(loop: LoopName) -> None:
    with serving(http_app(hello), loop, limits=Limits(max_connections=1)) as running:
        first = connect(running.port)
        first.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(first)[1] == b"hello http /1"
        second = connect(running.port)  # queued in the listen backlog, not accepted
        second.sendall(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        second.settimeout(0.3)
        with pytest.raises(socket.timeout):
            second.recv(1)
        first.close()  # frees the slot: accepting resumes
        second.settimeout(TIMEOUT)
        assert read_response(second)[1] == b"hello http /2"
        second.close()
        assert running.server.stats.connections_total == 2


def test_a_queued_burst_beyond_max_connections_waits_instead_of_being_reset(
    loop: LoopName,
) -> None:
    server = Server(
        [Listener(http_app(hello), host="127.0.0.1", port=0)], Limits(max_connections=3)
    )
    driver = AsyncioDriver(server, loop=loop)
    port = driver.bind()[0].address[1]
    clients = [connect(port) for _ in range(12)]  # all in the backlog before the loop runs
    try:
        for n, client in enumerate(clients):
            client.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n)
        with run_in_thread(driver, "aio-driver", join=TIMEOUT):
            for n, client in enumerate(clients):  # each one frees a slot for the next
                assert read_response(client)[1] == b"hello http /%d" % n
                client.close()
        assert server.stats.connections_refused == 0
        assert server.stats.connections_total == 12
    finally:
        for client in clients:
            client.close()


def test_two_listeners_never_admit_past_max_connections(loop: LoopName) -> None:
    listeners = [Listener(http_app(hello), host="127.0.0.1", port=0) for _ in range(2)]
    server = Server(listeners, Limits(max_connections=1))
    driver = AsyncioDriver(server, loop=loop)
    one, two = (bound.address[1] for bound in driver.bind())

    def ask(port: int, n: int) -> socket.socket:
        client = connect(port)
        client.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        return client

    with run_in_thread(driver, "aio-driver", join=TIMEOUT):
        first = ask(one, 1)
        assert read_response(first)[1] == b"hello http /1"
        held = ask(two, 2)  # accepted on the second listener, held while the limit is reached
        time.sleep(0.2)
        queued = ask(one, 3)  # waits in the first listener's backlog
        time.sleep(0.2)
        first.close()  # one slot: exactly one of the two is served
        waiting = []
        for client in (held, queued):
            client.settimeout(0.5)
            try:
                assert read_response(client)[1].startswith(b"hello http /")
                served = client
            except TimeoutError:
                waiting.append(client)
        assert len(waiting) == 1 and len(server.connections) == 1
        served.close()
        waiting[0].settimeout(TIMEOUT)
        assert read_response(waiting[0])[1].startswith(b"hello http /")
        waiting[0].close()
    assert server.stats.connections_total == 3


def test_a_socket_that_breaks_as_it_is_accepted_costs_only_itself(
    loop: LoopName, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[socket.socket] = []

    def prepare(sock: socket.socket) -> None:
        prepared.append(sock)
        if len(prepared) == 1:
            raise ConnectionResetError("reset before it was set up")
        prepare_accepted(sock)

    monkeypatch.setattr(aio, "prepare_accepted", prepare)
    with serving(http_app(hello), loop) as running:
        first = connect(running.port)
        assert first.recv(1) == b""  # closed at once
        first.close()
        second = connect(running.port)  # the accept task went on
        second.sendall(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(second)[1] == b"hello http /2"
        second.close()
        assert running.server.stats.connections_refused == 1


# -- shutdown -----------------------------------------------------------------------------------


def test_stop_lets_the_request_in_flight_finish(loop: LoopName) -> None:
    started = threading.Event()
    release = threading.Event()

    @blocking
    def app(request: Request) -> Response:
        started.set()
        assert release.wait(TIMEOUT)
        return Response(200, body=b"finished")

    with serving(http_app(app), loop) as running:
        sock = connect(running.port)
        idle = connect(running.port)
        wait_for(lambda: len(running.server.connections) == 2, "both to be accepted", TIMEOUT)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(TIMEOUT)
        running.driver.stop()

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: queued, then closed
                return True
            return False

        wait_for(refused, "the listener to close", TIMEOUT)
        assert idle.recv(1) == b""  # an idle connection is closed at once
        release.set()
        head, body = read_response(sock)
        assert body == b"finished"
        assert header(head, b"connection") == b"close"
        assert sock.recv(1) == b""
        sock.close()
        idle.close()
    assert running.server.finished


@pytest.mark.parametrize("size", [240 * 1024, 4 * 1024 * 1024], ids=["240K", "4M"])
def test_stop_cuts_what_remains_when_the_grace_period_ends(loop: LoopName, size: int) -> None:
    # 240K with close_timeout=0: the core has closed and the transport is still flushing to
    # a peer that does not read. 4M: the core itself still holds output.
    limits = Limits(shutdown_grace=0.3, close_timeout=0, send_timeout=60)

    def app(request: Request) -> Response:
        return Response(200, body=b"g" * size)

    with serving(http_app(app), loop, limits=limits, send_buffer=32 * 1024) as running:
        sock = small_window(running.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(lambda: running.server.stats.requests == 1, "the request", TIMEOUT)
        time.sleep(0.1)  # let the output back up
        started = time.monotonic()
        running.driver.stop()
        running.thread.join(TIMEOUT)
        assert not running.thread.is_alive()
        assert time.monotonic() - started < 0.3 + 2.0
        sock.close()


def test_a_tail_the_peer_never_takes_is_cut_after_the_send_timeout(loop: LoopName) -> None:
    limits = Limits(close_timeout=0, send_timeout=0.5)

    def app(request: Request) -> Response:
        return Response(200, body=b"t" * 240 * 1024)

    with serving(http_app(app), loop, limits=limits, send_buffer=32 * 1024) as running:
        sock = small_window(running.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # it ended its side, and reads nothing
        wait_for(lambda: running.server.stats.requests == 1, "the request", TIMEOUT)
        # The core finished and closed; the transport held the tail: gone within the timeout.
        wait_for(lambda: not running.server.connections, "the connection to end", 3.0)
        sock.close()


def test_a_client_arriving_as_the_stop_comes_is_refused_not_left_hanging(
    loop: LoopName, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(http_app(hello), loop) as running:
        wait_for(lambda: running.driver._loop is not None, "the loop", TIMEOUT)
        busy = threading.Event()
        running.driver._loop.call_soon_threadsafe(busy.wait, TIMEOUT)  # the loop is busy...
        client = connect(running.port)  # ...while a client arrives
        running.driver.stop()  # and the stop: both are seen in the same pass
        busy.set()  # however long this thread took to get here
        client.settimeout(2.0)
        with contextlib.suppress(ConnectionResetError):  # refused from the backlog: a reset
            assert client.recv(1) == b""  # refused at once, not left until garbage collection
        client.close()
        running.thread.join(TIMEOUT)
    assert running.server.stats.connections_total == 0
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def test_a_dying_loop_still_ends_each_connection_once(loop: LoopName) -> None:
    lost: list[BaseException | None] = []

    class Counting(HTTPProtocol):
        def connection_lost(self, error: BaseException | None) -> None:
            lost.append(error)
            super().connection_lost(error)

    server = Server([Listener(lambda: Counting(hello), host="127.0.0.1", port=0)])
    driver = AsyncioDriver(server, loop=loop)
    port = driver.bind()[0].address[1]

    def die() -> None:
        raise KeyboardInterrupt  # escapes the loop, as Ctrl-C does

    thread, failures = start_in_thread(driver, "aio-driver")
    sock = connect(port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[1] == b"hello http /"  # the loop runs; the connection stays
    assert driver._loop is not None
    driver._loop.call_soon_threadsafe(die)
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert [type(exc) for exc in failures] == [KeyboardInterrupt]
    assert len(lost) == 1
    assert isinstance(lost[0], ConnectionAbortedError)
    assert not server.connections
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    sock.close()
