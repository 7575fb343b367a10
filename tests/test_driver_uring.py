"""The uring driver's completion design: operation registry, buffer lifetime, one send in
flight, accept pause/resume, wake-ups and a clean stop. Real io_uring, real loopback sockets;
every wait is bounded."""

from __future__ import annotations

import contextlib
import errno
import itertools
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from netkit import (
    WAIT,
    Echo,
    SlowEcho,
    big_download,
    connect,
    connect_echoed,
    download,
    read_line,
    rst_close,
    run_in_thread,
    stop_during_a_job,
    wait_for,
)

from spcore.config import Limits
from spcore.drivers import choose
from spcore.drivers.proactor import Acceptor, Buffer, Link, Operation, RecvBuffer
from spcore.drivers.uring import driver as uring_driver
from spcore.drivers.uring import ring as uring
from spcore.drivers.uring.driver import UringDriver
from spcore.listeners import stream_listener
from spcore.server import Listener, Server
from spcore.stream import StreamHandler

AVAILABLE, REASON = uring.probe()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"io_uring unavailable: {REASON}")


class Recording(UringDriver):
    """The uring driver with its completion path instrumented (all on the loop thread)."""

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.cancels: list[tuple[Operation[Any], bool, bool, object]] = []
        self.recv_results: list[tuple[Operation[Any], int, bool, bool]] = []
        self.sends_in_flight: dict[Link, int] = {}
        self.most_sends_in_flight = 0
        self.send_sizes: list[int] = []  # buffers per posted send
        self.send_results: list[int] = []
        self.send_posted: list[int] = []  # bytes handed to each send
        self.lost: list[BaseException | None] = []
        self.wakes = 0
        self.most_parked = 0

    def _cancel(self, op: Operation[Any]) -> None:
        link = op.owner if isinstance(op.owner, Link) else None
        open_socket = link is not None and link.sock.fileno() >= 0
        self.cancels.append((op, op.key in self._ops, open_socket, op.keep))
        super()._cancel(op)

    def _received(self, op: Operation[Link], result: int, now: float) -> None:
        socket_open = op.owner.sock.fileno() >= 0
        super()._received(op, result, now)
        self.recv_results.append((op, result, op.key in self._ops, socket_open))

    def _post_send(self, op: Operation[Link], buffers: Sequence[Buffer]) -> None:
        link = op.owner
        self.sends_in_flight[link] = self.sends_in_flight.get(link, 0) + 1
        self.most_sends_in_flight = max(self.most_sends_in_flight, self.sends_in_flight[link])
        self.send_sizes.append(len(buffers))
        self.send_posted.append(sum(len(b) for b in itertools.islice(buffers, 1024)))
        super()._post_send(op, buffers)

    def _sent(self, op: Operation[Link], result: int, now: float) -> None:
        self.sends_in_flight[op.owner] -= 1
        self.send_results.append(result)
        super()._sent(op, result, now)

    def close(self, link: Link, error: BaseException | None, now: float) -> None:
        if not link.closed:
            self.lost.append(error)
        super().close(link, error, now)

    def _admit_or_park(self, acceptor: Acceptor, sock: socket.socket, now: float) -> None:
        super()._admit_or_park(acceptor, sock, now)
        self.most_parked = max(self.most_parked, len(self._parked))

    def _woke(self, op: Operation[None], result: int, now: float) -> None:
        self.wakes += 1
        super()._woke(op, result, now)


@contextlib.contextmanager
def serving(
    handler: type[StreamHandler] = Echo,
    driver_class: type[UringDriver] = Recording,
    listener: Listener | None = None,
    before_run: Callable[[tuple[str, int]], None] | None = None,
    **limits: Any,
) -> Iterator[tuple[Any, tuple[str, int]]]:
    """Run the driver on a thread; on exit stop it and require ``run()`` to return cleanly."""
    limits.setdefault("shutdown_grace", 2.0)
    limits.setdefault("close_timeout", 1.0)
    server = Server([listener or stream_listener(handler)], Limits(**limits))
    driver = driver_class(server)
    address = driver.bind()[0].address
    if before_run is not None:
        before_run((address[0], address[1]))
    with run_in_thread(driver, "uring-loop"):
        yield driver, (address[0], address[1])


# -- the registry and buffer lifetime ---------------------------------------------------------


def test_a_cancelled_recv_keeps_its_buffer_until_its_completion_is_reaped() -> None:
    with serving(close_timeout=0.2) as (driver, address):
        client = connect_echoed(address, b"hi")
        client.sendall(b"bye\n")  # the server shuts its side, then waits for ours...
        assert client.recv(10) == b""
        wait_for(lambda: driver.lost, "the close timeout to end the connection")
        # ...which never comes: the close timeout cancels the pending receive.
        wait_for(lambda: any(r[1] < 0 for r in driver.recv_results), "the cancelled recv")
        op, registered, socket_open, keep = driver.cancels[0]
        assert op.kind == "recv" and registered and socket_open
        assert isinstance(keep, RecvBuffer)  # the buffer the kernel may still write into
        cancelled = [r for r in driver.recv_results if r[0] is op]
        assert len(cancelled) == 1
        _, result, still_registered, open_until_then = cancelled[0]
        assert result == -errno.ECANCELED
        assert op.reaped and not still_registered
        assert open_until_then  # the socket was closed only after the completion
        wait_for(lambda: op.owner.sock.fileno() == -1, "the socket to be closed")
        assert driver.lost == [None]
        assert sorted(o.kind for o in driver._ops.values()) == ["accept", "wake"]
        client.close()
    assert driver._ops == {}


def test_every_operation_keeps_what_the_kernel_uses() -> None:
    with serving() as (driver, address):
        client = connect_echoed(address, b"hello")
        wait_for(lambda: driver.send_results, "the send's completion")
        ops = list(driver._ops.values())
        kinds = sorted(op.kind for op in ops)
        assert kinds == ["accept", "recv", "wake"]
        for op in ops:
            if op.kind == "recv":
                assert op.keep is op.owner.buffer
            elif op.kind == "wake":
                assert op.keep is driver._wake_buffer
        client.close()


def test_gathered_partial_sends_one_in_flight_per_socket() -> None:
    # 20 MB: more than the socket buffers hold, so the kernel takes the sends in parts
    listener, body = big_download(300)
    with serving(listener=listener) as (driver, address):
        data = download(address, body)
    assert driver.most_sends_in_flight == 1
    assert max(driver.send_sizes) > 1  # SENDMSG gathered several of the core's buffers
    sends = zip(driver.send_results, driver.send_posted, strict=True)
    assert any(
        got < posted for got, posted in sends
    )  # the kernel took some sends only in part: the rest was re-posted
    assert sum(driver.send_results) == len(data)


def test_a_buffer_larger_than_one_send_goes_out_in_several(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uring_driver, "_MAX_SEND", 1000)  # stands in for an SQE's 32-bit length
    with serving() as (driver, address):
        line = b"y" * 5000  # echoed in one buffer: one SEND, in six parts
        connect_echoed(address, line).close()
    sends = zip(driver.send_results, driver.send_sizes, strict=True)
    single = [got for got, count in sends if count == 1]
    assert single and max(single) <= 1000


def test_a_reset_peer_ends_the_connection_with_connection_reset_error() -> None:
    with serving() as (driver, address):
        client = connect_echoed(address, b"x")
        rst_close(client)
        wait_for(lambda: driver.lost, "the reset to be noticed")
        assert isinstance(driver.lost[0], ConnectionResetError)
        wait_for(lambda: not driver.server.connections, "the connection to be gone")


# -- accepting --------------------------------------------------------------------------------


def accepts(driver: UringDriver) -> list[Operation[Any]]:
    return [op for op in list(driver._ops.values()) if op.kind == "accept"]


def test_accept_pauses_at_max_connections_and_resumes() -> None:
    with serving(max_connections=2) as (driver, address):
        first, second = connect(address), connect(address)
        for client in (first, second):
            client.sendall(b"in\n")
            assert read_line(client) == b"in\r\n"
        wait_for(lambda: all(op.cancelled for op in accepts(driver)), "the accept to pause")
        wait_for(lambda: not accepts(driver), "the cancelled accept to be reaped")
        third = connect(address)  # queued in the listen backlog, not served
        third.sendall(b"wait\n")
        third.settimeout(0.3)
        with pytest.raises(socket.timeout):
            third.recv(10)
        assert len(driver.server.connections) == 2
        first.close()
        third.settimeout(WAIT)
        assert read_line(third) == b"wait\r\n"
        assert driver.server.stats.connections_refused == 0
        second.close()
        third.close()


@pytest.mark.skipif(not uring.supports_multishot_accept(), reason="no multishot accept")
def test_connections_accepted_over_the_limit_are_parked_not_dropped() -> None:
    clients: list[socket.socket] = []

    def connect_early(address: tuple[str, int]) -> None:
        clients.extend(connect(address) for _ in range(4))  # waiting in the listen backlog

    with serving(max_connections=1, before_run=connect_early) as (driver, _):
        # The first multishot accept takes the whole backlog at once: one connection for
        # the core, three parked until it accepts again.
        for client in clients:
            client.sendall(b"hey\n")
        for client in clients:
            assert read_line(client) == b"hey\r\n"
            client.close()
        assert driver.most_parked == 3
        assert driver.server.stats.connections_refused == 0
        assert driver.server.stats.connections_total == 4


def test_plain_accept_is_reposted_after_each_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring, "supports_multishot_accept", lambda: False)
    with serving() as (driver, address):
        assert not driver._multishot
        for n in range(3):
            client = connect_echoed(address, b"%d" % n)
            client.close()
        assert driver.server.stats.connections_total == 3


# -- wake-ups, jobs and stopping --------------------------------------------------------------


def test_a_finished_job_wakes_the_loop() -> None:
    with serving(SlowEcho) as (driver, address):
        client = connect(address)
        started = time.monotonic()
        client.sendall(b"slow\n")
        assert read_line(client) == b"slow\r\n"
        assert time.monotonic() - started < 2.0
        assert driver.wakes >= 1  # the eventfd read completed, and was posted again
        assert sum(op.kind == "wake" for op in driver._ops.values()) == 1
        client.close()


def test_graceful_stop_finishes_the_request_in_flight() -> None:
    with serving(SlowEcho) as (driver, address):
        client = stop_during_a_job(driver, address)
        client.close()


def test_stop_leaves_no_operation_and_closes_everything() -> None:
    with serving(close_timeout=0.2) as (driver, address):
        idle = connect_echoed(address, b"ping")
        link = next(iter(driver.links.values()))
    assert driver._ops == {}
    assert driver._ring is not None and driver._ring.closed
    assert driver._waker is not None and driver._waker.reader.fileno() == -1
    assert link.sock.fileno() == -1
    assert all(bound.sock.fileno() == -1 for bound in driver.bound)
    assert idle.recv(10) == b""  # the idle connection was closed by the shutdown
    driver.wake()  # harmless once stopped
    idle.close()


def test_stop_before_run_returns_at_once() -> None:
    server = Server([stream_listener(Echo)], Limits())
    driver = UringDriver(server)
    driver.bind()
    driver.stop()
    driver.run()
    assert driver._ops == {} and driver._ring is not None and driver._ring.closed


def test_stop_from_a_signal_handler_on_the_loop_thread() -> None:
    server = Server([stream_listener(Echo)], Limits())
    driver = UringDriver(server)
    driver.bind()
    previous = signal.signal(signal.SIGALRM, lambda *_: driver.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        driver.run()  # blocked in io_uring_enter with no timeout until the handler wakes it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 0.15 < time.monotonic() - started < WAIT
    assert driver._ops == {}


def test_registry_and_probe() -> None:
    assert choose("uring") is UringDriver
    assert UringDriver.probe() == uring.probe()
