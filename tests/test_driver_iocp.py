"""The iocp driver on the Linux Win32 double: AcceptEx and its context, addresses, gathered and
partial WSASend, cancellation keeping memory registered until the packet, the cancel race,
error mapping, wake-up packets, slicing waits for Ctrl-C, a clean stop, and the whole
conformance suite. Windows itself is never involved (see docs/iocp.md); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import pathlib
import select
import signal
import socket
import sys
import threading
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
    flood_lines,
    read_line,
    receive_flood,
    rst_close,
    run_in_thread,
    stop_during_a_job,
    wait_for,
)
from suiterun import assert_whole_suite_passed, run_python

# The repository root, for tests.iocp_double.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from spcore.config import Limits
from spcore.drivers import UnknownDriver, choose
from spcore.drivers.iocp import driver as iocp_driver
from spcore.drivers.iocp import win32
from spcore.drivers.iocp.driver import AcceptSocket, IocpDriver
from spcore.drivers.proactor import Buffer, Link, Operation
from spcore.listeners import stream_listener
from spcore.server import Listener, Server
from spcore.stream import StreamHandler
from tests.iocp_double.driver import DoubledIocpDriver
from tests.iocp_double.win32_double import Win32Double, make_double

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- instruments ------------------------------------------------------------------------------


class Spy:
    """A ``Win32Api`` that records every call and passes it to the double.

    ``override[name](function, *args)`` replaces a call (``function`` is the double's);
    ``fail(code, result)`` makes an override fail the Win32 way on the calling thread.
    """

    def __init__(self, double: Win32Double) -> None:
        self.double = double
        self.calls: list[tuple[str, tuple[Any, ...], str]] = []
        self.override: dict[str, Callable[..., Any]] = {}
        self._forced = threading.local()

    def __getattr__(self, name: str) -> Any:
        function = getattr(self.double, name)

        def call(*args: Any) -> Any:
            self.calls.append((name, args, threading.current_thread().name))
            replacement = self.override.get(name)
            return replacement(function, *args) if replacement else function(*args)

        return call

    def fail(self, code: int, result: int) -> int:
        self._forced.code = code
        return result

    def get_last_error(self) -> int:
        forced = getattr(self._forced, "code", None)
        if forced is not None:
            self._forced.code = None
            return int(forced)
        return self.double.get_last_error()

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args, _ in list(self.calls) if called == name]


class Recording(DoubledIocpDriver):
    """The iocp driver with its completion path instrumented (all on the loop thread)."""

    def __init__(self, server: Server, double: Win32Double, spy: Spy) -> None:
        super().__init__(server, double, api=spy)
        self.cancels: list[tuple[Operation[Any], bool, bool]] = []
        self.recv_results: list[tuple[Operation[Any], int, bool]] = []
        self.sends: list[tuple[int, int]] = []  # (bytes posted, bytes completed)
        self._posted: dict[Link, list[int]] = {}  # bytes of each send in flight, per socket
        self.most_sends_in_flight = 0  # on one socket
        self.lost: list[BaseException | None] = []

    def _cancel(self, op: Operation[Any]) -> None:
        socket_open = not isinstance(op.owner, Link) or op.owner.sock.fileno() >= 0
        self.cancels.append((op, op.key in self._ops, socket_open))
        super()._cancel(op)

    def _received(self, op: Operation[Link], result: int, now: float) -> None:
        self.recv_results.append((op, result, op.owner.sock.fileno() >= 0))
        super()._received(op, result, now)

    def _post_send(self, op: Operation[Link], buffers: Sequence[Buffer]) -> None:
        super()._post_send(op, buffers)
        posted = self._posted.setdefault(op.owner, [])
        posted.append(sum(b.len for b in op.keep[1]))  # type: ignore[index]
        self.most_sends_in_flight = max(self.most_sends_in_flight, len(posted))

    def _sent(self, op: Operation[Link], result: int, now: float) -> None:
        self.sends.append((self._posted[op.owner].pop(0), result))
        super()._sent(op, result, now)

    def close(self, link: Link, error: BaseException | None, now: float) -> None:
        if not link.closed:
            self.lost.append(error)
        super().close(link, error, now)


@contextlib.contextmanager
def serving(
    handler: type[StreamHandler] = Echo,
    *,
    listener: Listener | None = None,
    immediate_rate: float = 0.0,
    cancel_race_rate: float = 0.0,
    prepare: Callable[[Spy, IocpDriver], None] | None = None,
    **limits: Any,
) -> Iterator[tuple[Recording, Spy, tuple[str, int]]]:
    """Run the driver on its double on a thread; on exit stop it and require ``run()`` to
    return cleanly (it raises if the double recorded a violation). ``prepare`` runs before
    the loop starts."""
    limits.setdefault("shutdown_grace", 2.0)
    limits.setdefault("close_timeout", 1.0)
    server = Server([listener or stream_listener(handler)], Limits(**limits))
    double = make_double(seed=5, immediate_rate=immediate_rate, cancel_race_rate=cancel_race_rate)
    spy = Spy(double)
    driver = Recording(server, double, spy)
    address = driver.bind()[0].address
    if prepare is not None:
        prepare(spy, driver)
    with run_in_thread(driver, "iocp-loop"):
        yield driver, spy, (address[0], address[1])


class EnginePause:
    """Holds the double's engine: pending operations neither progress nor complete (their
    cancellation included) until ``resume()``. Reaches into the double's engine loop."""

    def __init__(self, double: Win32Double, monkeypatch: pytest.MonkeyPatch) -> None:
        self.double = double
        self.paused = True
        advance, heads = double._advance, double._heads
        with double._lock:  # the engine is not inside _advance: it sees the pause from now on
            monkeypatch.setattr(double, "_advance", lambda: None if self.paused else advance())
            monkeypatch.setattr(double, "_heads", lambda: [] if self.paused else heads())

    def resume(self) -> None:
        self.paused = False
        self.double._wake()


def override_once(
    spy: Spy,
    name: str,
    replacement: Callable[..., Any],
    when: Callable[[tuple[Any, ...]], bool] = lambda args: True,
) -> list[tuple[Any, ...]]:
    """Replace the first call of ``name`` that ``when`` accepts; returns its arguments, once
    made."""
    replaced: list[tuple[Any, ...]] = []

    def override(function: Callable[..., Any], *args: Any) -> Any:
        if replaced or not when(args):
            return function(*args)
        replaced.append(args)
        return replacement(function, *args)

    spy.override[name] = override
    return replaced


def fail_first(
    spy: Spy,
    name: str,
    code: int,
    result: Any,
    when: Callable[[tuple[Any, ...]], bool] = lambda args: True,
    *,
    call_through: bool = False,
) -> list[tuple[Any, ...]]:
    """Make the first call of ``name`` that ``when`` accepts fail with ``code`` (after
    running it anyway if ``call_through``)."""

    def failing(function: Callable[..., Any], *args: Any) -> Any:
        if call_through:
            function(*args)
        return spy.fail(code, result)

    return override_once(spy, name, failing, when)


def only_link(driver: IocpDriver) -> Link:
    wait_for(lambda: len(driver.links) == 1, "one connection")
    return next(iter(driver.links.values()))


def pending_recv(link: Link) -> Operation[Link]:
    wait_for(lambda: link.recv_op is not None, "a pending receive")
    op = link.recv_op
    assert op is not None
    return op


# -- the driver's place ---------------------------------------------------------------------------


def test_probe_says_windows_only_and_the_real_bindings_do_not_load_here() -> None:
    assert IocpDriver.probe() == win32.probe() == (False, "IOCP is Windows-only (this is linux)")
    server = Server([stream_listener(Echo)], Limits())
    with pytest.raises(win32.Win32Unavailable):
        IocpDriver(server)
    with pytest.raises(UnknownDriver, match="Windows-only"):
        choose("iocp")


def test_the_factory_fails_loudly_on_a_violation() -> None:
    server = Server([stream_listener(Echo)], Limits())
    driver = DoubledIocpDriver(server)
    driver.bind()
    driver.double.violations.append("WSARecv without lpFlags")
    driver.stop()
    with pytest.raises(AssertionError, match="WSARecv without lpFlags"):
        driver.run()


# -- accept -----------------------------------------------------------------------------------


def test_accept_updates_the_context_first_then_reads_the_addresses() -> None:
    with serving() as (driver, spy, address):
        client = connect_echoed(address, b"hi")
        link = only_link(driver)
        listening = driver.bound[0].sock.fileno()
        assert len(spy.named("AcceptEx")) >= IocpDriver.accepts_per_listener
        calls = [(name, args) for name, args, _ in list(spy.calls)]

        def first(name: str, check: Callable[[tuple[Any, ...]], bool]) -> int:
            return next(i for i, (n, a) in enumerate(calls) if n == name and check(a))

        port = driver._port
        associated = first("CreateIoCompletionPort", lambda a: a[:2] == (link.fd, port))
        accept = first("AcceptEx", lambda a: a[:2] == (listening, link.fd))
        update = first("setsockopt", lambda a: a[0] == link.fd)
        addresses = first("GetAcceptExSockaddrs", lambda a: True)
        receive = first("WSARecv", lambda a: a[0] == link.fd)
        assert associated < accept < update < addresses < receive
        _, level, option, value, length = calls[update][1]
        assert (level, option, length) == (0xFFFF, 0x700B, 8)
        assert value._obj.value == listening  # the listening SOCKET, by pointer
        output, receive_length, local_length, remote_length = calls[accept][1][2:6]
        assert (receive_length, local_length, remote_length) == (0, 44, 44)
        assert ctypes.sizeof(output) == 2 * (28 + 16)
        assert isinstance(link.sock, AcceptSocket)
        assert link.sock.family == driver.bound[0].sock.family
        assert (link.conn.peer, link.conn.local) == (client.getsockname(), client.getpeername())
        client.close()


def test_the_peer_address_is_what_getacceptexsockaddrs_read() -> None:
    def rewrite_remote(function: Callable[..., None], *args: Any) -> None:
        function(*args)
        fake, length = win32.sockaddr_from_address(("10.9.8.7", 4242))
        ctypes.memmove(args[6]._obj.value, ctypes.addressof(fake), length)
        args[7]._obj.value = length

    with serving() as (driver, spy, address):
        spy.override["GetAcceptExSockaddrs"] = rewrite_remote
        client = connect_echoed(address, b"who")
        link = only_link(driver)
        assert link.conn.peer == ("10.9.8.7", 4242)
        assert link.conn.local == client.getpeername()
        client.close()


def test_an_acceptex_whose_client_reset_at_once_is_reported_and_posted_again() -> None:
    with serving() as (driver, spy, address):
        failed = fail_first(spy, "AcceptEx", win32.WSAECONNRESET, win32.FALSE)
        client = connect_echoed(address, b"x")
        wait_for(lambda: bool(failed), "the failed AcceptEx")
        assert len(spy.named("AcceptEx")) > 1  # posted again after the core's brief pause
        assert driver.server.stats.connections_refused == 1
        client.close()


def test_an_acceptex_reset_storm_ends_in_service() -> None:
    resets = 16

    def prepare(spy: Spy, driver: IocpDriver) -> None:
        left = [resets]

        def reset(function: Callable[..., int], *args: Any) -> int:
            if left[0]:
                left[0] -= 1
                return spy.fail(win32.WSAECONNRESET, win32.FALSE)
            return function(*args)

        spy.override["AcceptEx"] = reset

    with serving(prepare=prepare) as (driver, _spy, address):
        client = connect_echoed(address, b"x")
        assert driver.server.stats.connections_refused == resets  # each one counted
        client.close()


def test_accepts_are_cancelled_at_the_limit_and_their_sockets_closed() -> None:
    with serving(max_connections=1) as (driver, spy, address):
        first = connect_echoed(address, b"1")
        wait_for(
            lambda: not any(op.kind == "accept" for op in list(driver._ops.values())),
            "the accepts to be cancelled and reaped",
        )
        listening = driver.bound[0].sock.fileno()
        cancelled = [op for op, _, _ in driver.cancels if op.kind == "accept"]
        assert len(cancelled) == IocpDriver.accepts_per_listener - 1  # all but the one used
        cancels = spy.named("CancelIoEx")
        for op in cancelled:
            assert (listening, op.key) in cancels  # on the listening socket, that OVERLAPPED
            assert op.keep.sock.fileno() == -1
        second = connect(address)  # waits in the backlog
        second.sendall(b"2\n")
        second.settimeout(0.3)
        with pytest.raises(socket.timeout):
            second.recv(10)
        first.close()
        second.settimeout(WAIT)
        assert read_line(second) == b"2\r\n"
        assert driver.server.stats.connections_refused == 0
        second.close()


# -- receive and send -------------------------------------------------------------------------


def test_a_receive_passes_its_flags_by_pointer_and_keeps_everything_it_handed_over() -> None:
    with serving() as (driver, spy, address):
        client = connect_echoed(address, b"a")
        link = only_link(driver)
        op = pending_recv(link)
        overlapped, buffers, flags, buffer = op.keep  # type: ignore[misc]
        assert op.key == ctypes.addressof(overlapped) and driver._ops[op.key] is op
        assert overlapped.Internal == win32.STATUS_PENDING
        assert (buffers[0].buf, buffers[0].len) == (link.buffer.address, link.buffer.size)
        assert buffer is link.buffer and flags.value == 0
        args = next(a for a in reversed(spy.named("WSARecv")) if a[0] == link.fd)
        assert args[2:4] == (1, None)  # one WSABUF, no byte count with an OVERLAPPED
        assert args[4]._obj is flags and args[5]._obj is overlapped and args[6] is None
        client.close()


def test_gathered_sends_one_in_flight_all_bytes_in_order() -> None:
    # 13 MB: more than the socket buffers hold, so sends stay pending while more queues
    listener, body = big_download(200)
    with serving(listener=listener) as (driver, spy, address):
        data = download(address, body)
    assert driver.most_sends_in_flight == 1
    sends = spy.named("WSASend")
    assert max(args[2] for args in sends) > 1  # several of the core's buffers in one WSASend
    assert all(args[3] is None and args[4] == 0 for args in sends)  # flags by value
    assert sum(done for _, done in driver.sends) == len(data)


def test_a_partial_send_completion_is_reported_and_the_rest_reposted() -> None:
    def half(function: Callable[..., int], *args: Any) -> int:
        """Hand the double only the first half of the bytes: it completes with that."""
        s, buffers, count, *rest = args
        spans = [(b.buf, b.len) for b in buffers[:count]]
        allowed = max(1, sum(n for _, n in spans) // 2)
        cut = []
        for address, length in spans:
            cut.append(win32.WSABUF(min(length, allowed), address))
            allowed -= cut[-1].len
            if not allowed:
                break
        return function(s, (win32.WSABUF * len(cut))(*cut), len(cut), *rest)

    expected = flood_lines(20)
    with serving() as (driver, spy, address):
        spy.override["WSASend"] = half
        received = receive_flood(address, 20)
    assert received == expected
    partial = [(posted, done) for posted, done in driver.sends if done < posted]
    assert partial and all(done > 0 for _, done in partial)
    assert sum(done for _, done in driver.sends) == len(expected)


# -- cancellation and errors ------------------------------------------------------------------


def test_a_cancelled_receive_keeps_its_memory_registered_until_its_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serving() as (driver, spy, address):
        client = connect_echoed(address, b"hi")
        link = only_link(driver)
        op = pending_recv(link)
        pause = EnginePause(driver.double, monkeypatch)
        driver.stop()  # the idle connection is closed at once: its receive is cancelled
        wait_for(lambda: any(o is op for o, _, _ in driver.cancels), "the cancel")
        assert (link.fd, op.key) in spy.named("CancelIoEx")
        time.sleep(0.2)  # the packet has not come: nothing may be released
        overlapped, _, _, buffer = op.keep  # type: ignore[misc]
        assert driver._ops.get(op.key) is op and not op.reaped
        assert overlapped.Internal == win32.STATUS_PENDING
        assert link.sock.fileno() >= 0 and buffer not in driver._free_buffers
        assert driver.lost == [None]
        pause.resume()
        wait_for(lambda: link.sock.fileno() == -1, "the socket to close after the packet")
        [(_, result, open_then)] = [r for r in driver.recv_results if r[0] is op]
        assert result == -win32.ERROR_OPERATION_ABORTED and open_then and op.reaped
        client.close()
    assert driver._ops == {}


def test_a_cancel_that_races_with_data_completes_with_the_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serving(cancel_race_rate=1.0) as (driver, _spy, address):
        client = connect_echoed(address, b"hi")
        link = only_link(driver)
        op = pending_recv(link)
        pause = EnginePause(driver.double, monkeypatch)
        client.sendall(b"late\n")
        assert select.select([link.sock], [], [], WAIT)[0]  # there, but not received yet
        driver.stop()
        wait_for(lambda: any(o is op for o, _, _ in driver.cancels), "the cancel")
        pause.resume()
        wait_for(lambda: op.reaped, "the receive's packet")
        [(_, result, open_then)] = [r for r in driver.recv_results if r[0] is op]
        assert op.cancelled and result == len(b"late\n") and open_then
        assert op.owner.buffer.take(result) == b"late\n"  # written into the kept buffer
        assert driver.lost == [None]  # dropped with the connection, reported once
        client.close()


def test_a_reset_peer_ends_the_connection_with_connection_reset_error() -> None:
    with serving() as (driver, _spy, address):
        client = connect_echoed(address, b"x")
        rst_close(client)  # the pending WSARecv fails with ERROR_NETNAME_DELETED
        wait_for(lambda: driver.lost, "the reset")
        assert isinstance(driver.lost[0], ConnectionResetError)
        wait_for(lambda: not driver.server.connections, "the connection to be gone")


def test_a_receive_that_fails_at_once_ends_the_connection_with_that_error() -> None:
    def not_a_socket(function: Callable[..., int], *args: Any) -> int:
        return function(-1, *args[1:])

    with serving() as (driver, spy, address):
        spy.override["WSARecv"] = not_a_socket
        client = connect(address)
        wait_for(lambda: driver.lost, "the failed receive")
        error = driver.lost[0]
        assert type(error) is OSError and str(win32.WSAENOTSOCK) in str(error)
        assert client.recv(10) == b""  # closed; no packet was waited for
        client.close()


@pytest.mark.parametrize(
    ("code", "kind", "number"),
    [
        (win32.ERROR_NETNAME_DELETED, ConnectionResetError, errno.ECONNRESET),
        (win32.ERROR_CONNECTION_ABORTED, ConnectionResetError, errno.ECONNRESET),
        (win32.ERROR_OPERATION_ABORTED, ConnectionResetError, errno.ECONNRESET),
        (win32.WSAECONNRESET, ConnectionResetError, errno.ECONNRESET),
        (win32.WSAECONNABORTED, ConnectionAbortedError, errno.ECONNABORTED),
        (win32.WSAENOTSOCK, OSError, None),
    ],
)
def test_windows_errors_map_to_exceptions(code: int, kind: type[OSError], number: int) -> None:
    driver = DoubledIocpDriver(Server([stream_listener(Echo)], Limits()))
    try:
        error = driver._error(-code)
    finally:
        driver.double.close()
    assert type(error) is kind and error.errno == number and str(code) in str(error)


def test_completion_statuses_become_results_and_wake_ups_are_skipped() -> None:
    """Fake packets for OVERLAPPEDs no operation uses: no memory Windows (or the double)
    could still write."""
    driver = DoubledIocpDriver(Server([stream_listener(Echo)], Limits()))
    api = driver.double
    try:
        driver._open()
        statuses = {
            "recv": (win32.STATUS_CONNECTION_RESET, 0, -win32.ERROR_NETNAME_DELETED),
            "accept": (win32.STATUS_CONNECTION_RESET, 0, -win32.WSAECONNABORTED),
            "send": (win32.STATUS_SUCCESS, 77, 77),
            "cancelled": (win32.STATUS_CANCELLED, 0, -win32.ERROR_OPERATION_ABORTED),
        }
        expected = []
        kept = []
        api.PostQueuedCompletionStatus(driver._port, 0, 0, None)  # a wake-up
        for kind, (status, transferred, result) in statuses.items():
            overlapped = win32.OVERLAPPED(Internal=status)
            kept.append(overlapped)
            op = Operation(kind, None, lambda *_: None, ctypes.addressof(overlapped))
            driver._register(op)
            api.PostQueuedCompletionStatus(driver._port, transferred, 1, ctypes.byref(overlapped))
            expected.append((op.key, result, 0))
        assert driver._wait(1.0) == expected
        assert driver._wait(0.0) == []  # WAIT_TIMEOUT
        driver._ops.clear()
    finally:
        driver._close_resources()
        driver.double.close()
    assert driver._port is None
    driver.wake()  # harmless once the port is gone


# -- Win32 failures -----------------------------------------------------------------------------

WSAENOBUFS = 10055


@pytest.mark.parametrize("which", ["the port", "a listening socket's association"])
def test_a_port_that_cannot_be_set_up_fails_run_and_releases_everything(which: str) -> None:
    spy = Spy(make_double(seed=5))
    driver = DoubledIocpDriver(Server([stream_listener(Echo)], Limits()), spy.double, api=spy)
    driver.bind()
    creating = which == "the port"
    fail_first(
        spy,
        "CreateIoCompletionPort",
        win32.ERROR_INVALID_PARAMETER,
        None,
        lambda args: (args[1] is None) == creating,
    )
    with pytest.raises(win32.Win32Error) as raised:
        driver.run()
    assert raised.value.winerror == win32.ERROR_INVALID_PARAMETER
    assert driver._port is None and driver._ops == {}
    assert len(spy.named("CloseHandle")) == (0 if creating else 1)
    assert all(bound.sock.fileno() == -1 for bound in driver.bound)


@pytest.mark.parametrize("function", ["CreateIoCompletionPort", "AcceptEx"])
def test_an_accept_that_cannot_be_posted_is_retried_after_a_pause(
    function: str, caplog: pytest.LogCaptureFixture
) -> None:
    def prepare(spy: Spy, driver: IocpDriver) -> None:
        listening = driver.bound[0].sock.fileno()
        if function == "AcceptEx":
            fail_first(spy, function, WSAENOBUFS, win32.FALSE)
        else:  # the accept socket's association with the port
            fail_first(
                spy,
                function,
                win32.ERROR_INVALID_PARAMETER,
                None,
                lambda args: args[1] is not None and args[0] != listening,
            )

    with serving(prepare=prepare) as (driver, _spy, address):
        client = connect_echoed(address, b"later")
        assert driver.server.stats.connections_refused == 1
        assert "accept failed" in caplog.text and "pausing accepts for 0.10 s" in caplog.text
        client.close()


def rewrite_sockaddrs(how: str) -> Callable[..., None]:
    """A GetAcceptExSockaddrs that finds nothing, or a family the driver cannot read."""

    def broken(function: Callable[..., None], *args: Any) -> None:
        function(*args)
        if how == "none":
            args[4]._obj.value = None
        else:
            ctypes.c_uint16.from_address(args[4]._obj.value).value = 99

    return broken


@pytest.mark.parametrize("failure", ["SO_UPDATE_ACCEPT_CONTEXT", "no address", "odd family"])
def test_an_accepted_socket_that_cannot_be_set_up_is_refused(failure: str) -> None:
    with serving() as (driver, spy, address):
        if failure == "SO_UPDATE_ACCEPT_CONTEXT":
            fail_first(spy, "setsockopt", win32.WSAENOTCONN, win32.SOCKET_ERROR)
        else:
            broken = rewrite_sockaddrs("none" if failure == "no address" else "family")
            spy.override["GetAcceptExSockaddrs"] = lambda f, *a: (
                spy.override.pop("GetAcceptExSockaddrs") and broken(f, *a)
            )
        first = connect(address)
        assert first.recv(10) == b""  # closed by the server, never served
        wait_for(lambda: driver.server.stats.connections_refused == 1, "the refusal")
        second = connect_echoed(address, b"ok")
        assert driver.server.stats.connections_total == 1
        first.close()
        second.close()


def test_a_send_that_fails_at_once_ends_the_connection_as_a_reset() -> None:
    with serving() as (driver, spy, address):
        fail_first(spy, "WSASend", win32.WSAECONNRESET, win32.SOCKET_ERROR)
        client = connect(address)
        client.sendall(b"x\n")
        wait_for(lambda: driver.lost, "the failed send")
        assert isinstance(driver.lost[0], ConnectionResetError)
        client.close()


def test_no_send_hands_windows_more_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iocp_driver, "_MAX_SEND", 1000)
    sizes: list[int] = []

    def measure(function: Callable[..., int], *args: Any) -> int:
        sizes.append(sum(b.len for b in args[1][: args[2]]))
        return function(*args)

    expected = flood_lines(3)
    with serving() as (_driver, spy, address):
        spy.override["WSASend"] = measure
        received = receive_flood(address, 3)
    assert received == expected
    assert max(sizes) == 1000 and len(sizes) >= len(expected) // 1000


@pytest.mark.parametrize(
    ("function", "code", "logged"),
    [
        ("CancelIoEx", win32.ERROR_NOT_FOUND, ""),
        ("CancelIoEx", win32.ERROR_INVALID_HANDLE, "CancelIoEx failed: Windows error 6"),
        ("CloseHandle", win32.ERROR_INVALID_HANDLE, "CloseHandle(port) failed: Windows error 6"),
    ],
)
def test_cancel_and_close_failures_are_tolerated(
    function: str, code: int, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with serving() as (driver, spy, address):
        # The call still happens: only its answer says it failed.
        fail_first(spy, function, code, win32.FALSE, call_through=True)
        client = connect_echoed(address, b"x")
        client.close()
    assert driver._ops == {} and spy.named(function)
    warnings = [r.getMessage() for r in caplog.records if r.name == "spcore.driver"]
    assert warnings == ([logged] if logged else [])


def test_a_failed_wait_ends_run_with_the_error_after_reaping_everything() -> None:
    def prepare(spy: Spy, driver: IocpDriver) -> None:
        fail_first(spy, "GetQueuedCompletionStatusEx", win32.ERROR_ABANDONED_WAIT_0, 0)

    with (
        pytest.raises(AssertionError, match="GetQueuedCompletionStatusEx") as raised,
        serving(prepare=prepare) as (driver, spy, _),
    ):
        # (not before the wait failed: before run() opens the port, there is none either)
        waited = spy.named
        wait_for(lambda: waited("GetQueuedCompletionStatusEx"), "the wait that fails")
        wait_for(lambda: not driver._ops and driver._port is None, "run() to end")
    assert "Windows error 735" in str(raised.value)


# -- wake-ups and stopping --------------------------------------------------------------------


def test_a_finished_job_wakes_the_loop_with_a_posted_packet() -> None:
    with serving(SlowEcho) as (driver, spy, address):
        wait_for(lambda: bool(spy.named("GetQueuedCompletionStatusEx")), "the first wait")
        # Nothing to time yet, and not on the main thread: the wait is not sliced.
        assert spy.named("GetQueuedCompletionStatusEx")[0][4] == win32.INFINITE
        client = connect(address)
        started = time.monotonic()
        client.sendall(b"slow\n")
        assert read_line(client) == b"slow\r\n"
        assert time.monotonic() - started < 2.0
        posts = [
            (args, thread)
            for name, args, thread in list(spy.calls)
            if name == "PostQueuedCompletionStatus"
        ]
        assert any(thread.startswith("spcore-job") for _, thread in posts)
        assert all(args == (driver._port, 0, 0, None) for args, _ in posts)
        waits = spy.named("GetQueuedCompletionStatusEx")
        assert all(a[2] == 256 for a in waits)  # a batch of up to 256 packets per call
        client.close()


def test_calls_from_another_thread_wake_the_loop_with_one_packet_per_batch() -> None:
    ran: list[tuple[int, str]] = []
    busy, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        busy.set()
        release.wait(WAIT)

    with serving() as (driver, spy, _):
        wait_for(lambda: bool(spy.named("GetQueuedCompletionStatusEx")), "the first wait")
        assert driver.call_soon_threadsafe(hold_the_loop)
        wait_for(busy.is_set, "the loop to run the first call")
        posted = len(spy.named("PostQueuedCompletionStatus"))
        for n in range(100):  # while the loop is busy: one wake-up packet says it all
            assert driver.call_soon_threadsafe(
                lambda n=n: ran.append((n, threading.current_thread().name))
            )
        release.set()
        wait_for(lambda: len(ran) == 100, "the calls to run")
        assert len(spy.named("PostQueuedCompletionStatus")) == posted + 1
        assert ran == [(n, "iocp-loop") for n in range(100)]
    posted = len(spy.named("PostQueuedCompletionStatus"))
    assert driver.call_soon_threadsafe(ran.append, "too late") is False  # stopped: refused
    assert len(spy.named("PostQueuedCompletionStatus")) == posted and len(ran) == 100


def test_graceful_stop_finishes_the_job_in_flight_then_releases_everything() -> None:
    with serving(SlowEcho) as (driver, spy, address):
        client = stop_during_a_job(driver, address)
        link_socks = [op.owner.sock for op, _, _ in driver.cancels if op.kind != "accept"]
        port = driver._port
        client.close()
    assert driver._ops == {} and driver._port is None
    assert spy.named("CloseHandle") == [(port,)]
    assert spy.calls[-1][0] == "CloseHandle"  # the port is closed last, once all is reaped
    assert all(bound.sock.fileno() == -1 for bound in driver.bound)
    assert all(sock.fileno() == -1 for sock in link_socks)
    assert spy.named("SetFileCompletionNotificationModes") == []
    driver.wake()  # harmless once stopped


def test_immediate_completions_still_arrive_as_packets() -> None:
    with serving(immediate_rate=1.0) as (driver, spy, address):
        for n in range(3):
            client = connect_echoed(address, b"%d" % n)
            client.close()
        assert driver.server.stats.connections_total == 3
    assert spy.named("SetFileCompletionNotificationModes") == []


def test_stop_from_a_signal_handler_on_the_main_thread() -> None:
    double = make_double(seed=5)
    spy = Spy(double)
    driver = DoubledIocpDriver(Server([stream_listener(Echo)], Limits()), double, api=spy)
    driver.bind()
    before = driver.wake
    woken: list[str] = []

    def wake() -> None:
        woken.append(threading.current_thread().name)
        before()

    driver.wake = wake  # type: ignore[method-assign]
    previous = signal.signal(signal.SIGALRM, lambda *_: driver.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        started = time.monotonic()
        driver.run()  # on the main thread: every wait is a slice of at most 0.1 s
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 0.25 < time.monotonic() - started < WAIT
    assert woken == ["MainThread"] and driver._ops == {}
    waits = [a[4] for a in spy.named("GetQueuedCompletionStatusEx")]
    assert waits and max(waits) <= 100


def test_wake_before_run_is_harmless() -> None:
    spy = Spy(make_double(seed=5))
    driver = DoubledIocpDriver(Server([stream_listener(Echo)], Limits()), spy.double, api=spy)
    driver.wake()
    driver.double.close()
    assert spy.named("PostQueuedCompletionStatus") == []


# -- the whole conformance suite --------------------------------------------------------------

FACTORY = "tests.iocp_double.driver:make_driver"


def test_the_whole_conformance_suite_passes_through_the_double(tmp_path: pathlib.Path) -> None:
    # The repository root goes at the end of sys.path, after spcore was imported: on it are
    # tests.iocp_double and the source-tree drivers package the double imports, while spcore
    # (and spcore.drivers) stay the installed ones, editable or not.
    code = (
        "import sys, spcore.conformance as c\n"
        f"sys.path.append({str(ROOT)!r})\n"
        f"sys.exit(c.run([{FACTORY!r}], ['-p', 'no:cacheprovider', '-q']))\n"
    )
    assert_whole_suite_passed(run_python(code, tmp_path, 300), FACTORY)
