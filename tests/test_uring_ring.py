"""The raw io_uring binding against the real kernel: every wait is bounded by a timeout."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from spcore.drivers.pinned import pin
from spcore.drivers.uring import ring as uring

AVAILABLE, REASON = uring.probe()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"io_uring unavailable: {REASON}")

WAIT = 5.0  # seconds; generous upper bound for anything that should be immediate


@pytest.fixture
def ring() -> Iterator[uring.Ring]:
    with uring.Ring(32) as r:
        yield r


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def collect(r: uring.Ring, count: int, timeout: float = WAIT) -> list[uring.Completion]:
    """Submit and reap until *count* completions arrived or *timeout* passed."""
    deadline = time.monotonic() + timeout
    got: list[uring.Completion] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        r.submit(count - len(got), timeout=remaining)
        got += r.reap()
    return got


def by_user_data(completions: list[uring.Completion]) -> dict[int, tuple[int, int]]:
    return {user_data: (res, flags) for user_data, res, flags in completions}


# --- basics ----------------------------------------------------------------------------------


def test_probe_reports_available_with_kernel_and_features() -> None:
    assert AVAILABLE
    assert REASON.startswith("io_uring available (kernel ")
    assert "NODROP" in REASON


def test_ring_geometry_and_cq_is_larger_than_sq() -> None:
    with uring.Ring(8) as r:
        assert r.sq_entries == 8
        assert r.cq_entries == 32
        assert r.setup_flags & uring.IORING_SETUP_CQSIZE
        assert r.features & uring.IORING_FEAT_SINGLE_MMAP
    with uring.Ring(5, cq_entries=5) as r:  # the kernel rounds up to powers of two
        assert (r.sq_entries, r.cq_entries) == (8, 8)


def test_separate_sq_and_cq_mappings_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring, "IORING_FEAT_SINGLE_MMAP", 0)  # as on kernels before 5.4
    with uring.Ring(4, cq_entries=4) as r:
        for user_data in range(10):
            r.nop(user_data)
        assert [u for u, _, _ in collect(r, 10)] == list(range(10))


def test_setup_retries_without_optional_flags_the_kernel_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uring, "_OPTIONAL_SETUP_FLAGS", 1 << 31)  # unknown: EINVAL
    with uring.Ring(4) as r:
        assert not r.setup_flags & (1 << 31)
        assert not r.setup_flags & uring.IORING_SETUP_SUBMIT_ALL
        r.nop(1)
        assert collect(r, 1) == [(1, 0, 0)]


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        uring.Ring(0)
    with pytest.raises(ValueError):
        uring.Ring(8, cq_entries=4)


def test_nop_round_trip_keeps_full_64_bit_user_data(ring: uring.Ring) -> None:
    big = 2**64 - 2
    ring.nop(7)
    ring.nop(big)
    assert ring.submit(2, timeout=WAIT) == 2
    assert ring.reap() == [(7, 0, 0), (big, 0, 0)]
    assert ring.reap() == []


def test_submit_with_nothing_queued_returns_zero(ring: uring.Ring) -> None:
    assert ring.submit() == 0


def test_supported_opcodes_include_what_the_driver_needs(ring: uring.Ring) -> None:
    ops = ring.supported_opcodes()
    for op in (uring.IORING_OP_RECV, uring.IORING_OP_SEND, uring.IORING_OP_ACCEPT):
        assert op in ops


# --- sockets ---------------------------------------------------------------------------------


def test_send_and_recv_on_a_socketpair(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    payload = b"hello, ring"
    address, length, _owner = pin(payload)
    sink = ctypes.create_string_buffer(64)
    ring.recv(b.fileno(), ctypes.addressof(sink), 64, 1)
    ring.send(a.fileno(), address, length, 2)
    done = by_user_data(collect(ring, 2))
    assert done == {1: (len(payload), 0), 2: (len(payload), 0)}
    assert sink.raw[: len(payload)] == payload


def test_recv_lands_in_a_bytearray_in_place(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    target = bytearray(16)
    address, length, owner = pin(target)
    ring.recv(b.fileno(), address, length, 1)
    a.sendall(b"in place")
    assert collect(ring, 1) == [(1, 8, 0)]
    assert bytes(target[:8]) == b"in place"
    del owner  # releases the export: the bytearray may be resized again
    target.extend(b"!")


def test_recv_reports_eof_as_zero(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    sink = ctypes.create_string_buffer(8)
    ring.recv(b.fileno(), ctypes.addressof(sink), 8, 1)
    a.shutdown(socket.SHUT_WR)
    assert collect(ring, 1) == [(1, 0, 0)]


def test_send_to_a_closed_peer_is_epipe_without_sigpipe(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    b.close()
    address, length, _owner = pin(b"x")
    ring.send(a.fileno(), address, length, 1)
    assert collect(ring, 1) == [(1, -errno.EPIPE, 0)]


def test_sendmsg_gathers_three_buffers_in_order(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    msg = uring.MsgHdr([b"first-", bytearray(b"second-"), memoryview(b"xthird")[1:]])
    assert msg.nbytes == 18
    ring.sendmsg(a.fileno(), msg.address, 1)
    assert collect(ring, 1) == [(1, 18, 0)]
    b.settimeout(WAIT)
    assert b.recv(64) == b"first-second-third"


def test_msghdr_refuses_more_than_iov_max_buffers() -> None:
    with pytest.raises(ValueError):
        uring.MsgHdr([b"x"] * 1025)


def test_shutdown_and_close_run_in_the_kernel(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    ring.shutdown(a.fileno(), socket.SHUT_WR, 1)
    assert collect(ring, 1) == [(1, 0, 0)]
    b.settimeout(WAIT)
    assert b.recv(8) == b""
    fd = b.detach()
    ring.close_fd(fd, 2)
    assert collect(ring, 1) == [(2, 0, 0)]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_poll_add_reports_readable(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    import select

    a, b = pair
    ring.poll_add(b.fileno(), select.POLLIN, 1)
    a.sendall(b"x")
    [(user_data, res, _flags)] = collect(ring, 1)
    assert user_data == 1
    assert res & select.POLLIN


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_accept_returns_a_connected_fd(ring: uring.Ring, listener: socket.socket) -> None:
    ring.accept(listener.fileno(), 1)
    with socket.create_connection(listener.getsockname(), timeout=WAIT) as client:
        [(user_data, fd, flags)] = collect(ring, 1)
        assert user_data == 1
        assert fd >= 0
        assert not flags & uring.IORING_CQE_F_MORE
        with socket.socket(fileno=fd) as conn:
            assert conn.getpeername() == client.getsockname()
            assert os.get_inheritable(fd) is False  # SOCK_CLOEXEC by default


@pytest.mark.skipif(not uring.supports_multishot_accept(), reason="needs Linux >= 5.19")
def test_multishot_accept_accepts_several_connections_from_one_sqe(
    ring: uring.Ring, listener: socket.socket
) -> None:
    ring.accept(listener.fileno(), 1, multishot=True)
    ring.submit()
    clients = [socket.create_connection(listener.getsockname(), timeout=WAIT) for _ in range(3)]
    try:
        accepted = collect(ring, 3)
        assert [user_data for user_data, _, _ in accepted] == [1, 1, 1]
        assert all(fd >= 0 and flags & uring.IORING_CQE_F_MORE for _, fd, flags in accepted)
        peers = set()
        for _, fd, _ in accepted:
            with socket.socket(fileno=fd) as conn:
                peers.add(conn.getpeername())
        assert peers == {client.getsockname() for client in clients}
        ring.cancel(1, 2)
        done = by_user_data(collect(ring, 2))
        assert done[2] == (0, 0)
        res, flags = done[1]
        assert res == -errno.ECANCELED
        assert not flags & uring.IORING_CQE_F_MORE
    finally:
        for client in clients:
            client.close()


def test_cancel_of_a_pending_recv(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    _a, b = pair
    sink = ctypes.create_string_buffer(8)
    ring.recv(b.fileno(), ctypes.addressof(sink), 8, 1)
    ring.submit()
    assert ring.submit(1, timeout=0.02) == 0
    assert ring.reap() == []  # still pending
    ring.cancel(1, 2)
    assert by_user_data(collect(ring, 2)) == {1: (-errno.ECANCELED, 0), 2: (0, 0)}


def test_cancel_of_an_unknown_request_is_enoent(ring: uring.Ring) -> None:
    ring.cancel(12345, 2)
    assert collect(ring, 1) == [(2, -errno.ENOENT, 0)]


# --- waiting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ext_arg", [True, False], ids=["ext-arg", "timeout-sqe"])
def test_submit_timeout_returns_without_completions(ring: uring.Ring, ext_arg: bool) -> None:
    if ext_arg:
        assert ring.features & uring.IORING_FEAT_EXT_ARG
    else:  # the path for kernels before 5.11, which lack IORING_FEAT_EXT_ARG
        ring._ext_arg = False
    start = time.monotonic()
    ring.submit(1, timeout=0.05)
    elapsed = time.monotonic() - start
    assert 0.04 <= elapsed < 2.0
    assert ring.reap() == []
    ring.nop(3)  # the ring still works, and the internal timeout never shows up
    assert collect(ring, 1) == [(3, 0, 0)]
    assert ring.submit(1, timeout=0.01) in (0, 1)
    assert ring.reap() == []


def test_a_python_signal_handler_interrupts_a_blocking_wait(ring: uring.Ring) -> None:
    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            ring.submit(1, timeout=WAIT)
        assert time.monotonic() - start < WAIT / 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_eintr_is_retried_with_the_remaining_timeout(ring: uring.Ring) -> None:
    seen = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        start = time.monotonic()
        assert ring.submit(1, timeout=0.2) == 0
        elapsed = time.monotonic() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen == [signal.SIGALRM]
    assert 0.15 <= elapsed < 1.0


def test_timeout_sqe_completes_with_etime(ring: uring.Ring) -> None:
    ts = uring.timespec(0.01)
    ring.timeout(ctypes.addressof(ts), 1)
    assert collect(ring, 1) == [(1, -errno.ETIME, 0)]


def test_timeout_sqe_with_count_completes_after_that_many_completions(ring: uring.Ring) -> None:
    ts = uring.timespec(WAIT)
    ring.timeout(ctypes.addressof(ts), 1, count=2)
    ring.nop(2)
    ring.nop(3)
    assert by_user_data(collect(ring, 3, timeout=1.0)) == {1: (0, 0), 2: (0, 0), 3: (0, 0)}


def test_a_wake_up_recv_is_completed_by_another_thread(ring: uring.Ring) -> None:
    """The driver's wake-up: a RECV on a blocking socket pair's reading end, completed when
    another thread (or a signal, through signal.set_wakeup_fd) writes a byte."""
    reader, writer = socket.socketpair()
    with reader, writer:
        buffer = ctypes.create_string_buffer(64)
        ring.recv(reader.fileno(), ctypes.addressof(buffer), 64, 9)
        waker = threading.Timer(0.05, writer.send, (b"\0",))
        waker.start()
        start = time.monotonic()
        got = collect(ring, 1)
        waker.join(WAIT)
        assert [(user_data, result) for user_data, result, _flags in got] == [(9, 1)]
        assert buffer.raw[:1] == b"\0"
        assert time.monotonic() - start >= 0.03  # it really waited for the write


# --- ring mechanics ---------------------------------------------------------------------------


def test_sq_full_submits_automatically_and_drops_nothing() -> None:
    with uring.Ring(8, cq_entries=64) as r:
        for user_data in range(50):
            r.nop(user_data)
        got = collect(r, 50)
        assert [user_data for user_data, _, _ in got] == list(range(50))


def test_reap_wraps_around_the_end_of_the_cq() -> None:
    with uring.Ring(8, cq_entries=8) as r:
        expected = 0
        for _ in range(10):  # 5 per round on an 8-slot CQ: every other batch is split
            for offset in range(5):
                r.nop(expected + offset)
            assert r.submit(5, timeout=WAIT) == 5
            assert [user_data for user_data, _, _ in r.reap()] == list(
                range(expected, expected + 5)
            )
            expected += 5


def test_reap_respects_max_entries() -> None:
    with uring.Ring(8, cq_entries=8) as r:
        for user_data in range(7):
            r.nop(user_data)
        r.submit(7, timeout=WAIT)
        assert [u for u, _, _ in r.reap(3)] == [0, 1, 2]
        assert [u for u, _, _ in r.reap(3)] == [3, 4, 5]
        assert [u for u, _, _ in r.reap()] == [6]


def test_cq_overflow_is_flushed_by_reap() -> None:
    with uring.Ring(4, cq_entries=4) as r:
        for user_data in range(20):  # five SQ-fulls of NOPs into a 4-entry CQ
            r.nop(user_data)
        r.submit()
        assert r._sq_flags[0] & uring.IORING_SQ_CQ_OVERFLOW
        assert [user_data for user_data, _, _ in r.reap()] == list(range(20))
        assert r.dropped_cqes == 0


def test_busy_kernel_while_sq_full_parks_completions_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with uring.Ring(4, cq_entries=8) as r:
        for user_data in range(4):
            r.nop(user_data)
        r.submit(4, timeout=WAIT)  # four CQEs wait in the CQ
        for user_data in range(4, 8):
            r.nop(user_data)  # SQ full again
        real = uring.Ring._enter_queued
        calls = []

        def busy_once(self: uring.Ring, *args: int) -> int:
            calls.append(args)
            if len(calls) == 1:
                return -errno.EBUSY  # CQ back-pressure: the kernel wants the CQ reaped
            return real(self, *args)

        monkeypatch.setattr(uring.Ring, "_enter_queued", busy_once)
        r.nop(8)
        monkeypatch.undo()
        assert len(calls) == 2
        assert [u for u, _, _ in r.reap(2)] == [0, 1]  # parked CQEs come out first
        start = time.monotonic()
        assert [u for u, _, _ in collect(r, 7)] == [2, 3, 4, 5, 6, 7, 8]
        assert time.monotonic() - start < 1.0  # parked CQEs count towards wait_nr


def test_submit_returns_zero_on_busy(monkeypatch: pytest.MonkeyPatch, ring: uring.Ring) -> None:
    ring.nop(1)
    monkeypatch.setattr(uring.Ring, "_enter_queued", lambda self, *args: -errno.EBUSY)
    assert ring.submit(1, timeout=WAIT) == 0
    monkeypatch.undo()
    assert collect(ring, 1) == [(1, 0, 0)]  # the SQE was kept for the next submit


def test_other_enter_errors_raise_oserror(
    monkeypatch: pytest.MonkeyPatch, ring: uring.Ring
) -> None:
    ring.nop(1)
    monkeypatch.setattr(uring.Ring, "_enter_queued", lambda self, *args: -errno.EBADF)
    with pytest.raises(OSError) as info:
        ring.submit()
    assert info.value.errno == errno.EBADF


def test_close_twice_is_harmless_and_use_after_close_raises() -> None:
    r = uring.Ring(4)
    fd = r.fd
    r.close()
    r.close()
    assert r.closed
    assert r.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        r.nop(1)
    with pytest.raises(ValueError):
        r.submit()
    with pytest.raises(ValueError):
        r.reap()


# --- availability reasons ----------------------------------------------------------------------


def test_probe_reason_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert uring.probe.__wrapped__() == (False, "io_uring is Linux-only")


def test_probe_reason_when_disabled_by_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring, "_sysctl_disabled", lambda: 2)
    ok, reason = uring.probe.__wrapped__()
    assert not ok
    assert "kernel.io_uring_disabled=2" in reason


@pytest.mark.parametrize(
    ("code", "disabled", "expected"),
    [
        (
            errno.EPERM,
            0,
            "io_uring_setup failed: Operation not permitted "
            "(blocked by seccomp or kernel.io_uring_disabled)",
        ),
        (errno.EPERM, 1, "only kernel.io_uring_group may"),
        (errno.ENOSYS, 0, "kernel too old, built without io_uring, or blocked by seccomp"),
    ],
)
def test_probe_reason_when_setup_fails(
    monkeypatch: pytest.MonkeyPatch, code: int, disabled: int, expected: str
) -> None:
    def refuse(entries: int, cq_entries: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(uring, "_setup", refuse)
    monkeypatch.setattr(uring, "_sysctl_disabled", lambda: disabled)
    ok, reason = uring.probe.__wrapped__()
    assert not ok
    assert expected in reason
