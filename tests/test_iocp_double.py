"""The Win32 IOCP bindings on Linux, and the double that stands in for Windows in driver tests.

Everything goes through the ``Win32Api`` interface, as the IOCP driver will, on 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import pathlib
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from ctypes import addressof, byref
from dataclasses import dataclass

import pytest
from netkit import rst_close

# The repository root, for tests.iocp_double.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from spcore.drivers.iocp import win32
from tests.iocp_double import Win32Double, make_double

TIMEOUT = 5.0
LISTEN_KEY, CONN_KEY = 11, 22
SLOT = win32.ACCEPT_ADDRESS_LENGTH
Packet = tuple[int, int, int, int]  # completion key, OVERLAPPED address, NTSTATUS, bytes
Track = Callable[[socket.socket], socket.socket]  # the ``sockets`` fixture: closed after the test
Doubles = Callable[..., Win32Double]  # the ``doubles`` fixture: make_double with options


@pytest.fixture
def sockets() -> Iterator[Track]:
    opened: list[socket.socket] = []

    def track(sock: socket.socket) -> socket.socket:
        sock.settimeout(TIMEOUT)
        opened.append(sock)
        return sock

    yield track
    for sock in opened:
        sock.close()


@pytest.fixture
def doubles(sockets: object) -> Iterator[Doubles]:
    """Doubles stopped before the sockets close (engine first), then checked for violations."""
    made: list[Win32Double] = []

    def make(**options: float) -> Win32Double:
        double = make_double(seed=7, **options)
        made.append(double)
        return double

    yield make
    for double in made:
        double.close()
    for double in made:
        double.assert_no_violations()


@pytest.fixture
def api(doubles: Doubles) -> Win32Double:
    return doubles()


def new_port(api: win32.Win32Api) -> int:
    port = api.CreateIoCompletionPort(win32.INVALID_HANDLE_VALUE, None, 0, 0)
    assert port
    return port


def reap(api: win32.Win32Api, port: int, count: int) -> list[Packet]:
    """Dequeue exactly ``count`` packets, failing after TIMEOUT."""
    entries = (win32.OVERLAPPED_ENTRY * 16)()
    removed = win32.ULONG()
    packets: list[Packet] = []
    deadline = time.monotonic() + TIMEOUT
    while len(packets) < count:
        ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not api.GetQueuedCompletionStatusEx(port, entries, 16, byref(removed), ms, 0):
            assert api.get_last_error() == win32.WAIT_TIMEOUT
            pytest.fail(f"only {len(packets)} of {count} completions arrived")
        packets += [
            (e.lpCompletionKey, e.lpOverlapped or 0, e.Internal, e.dwNumberOfBytesTransferred)
            for e in entries[: removed.value]
        ]
    assert len(packets) == count
    return packets


def assert_no_packet(api: win32.Win32Api, port: int, ms: int = 60) -> None:
    entries = (win32.OVERLAPPED_ENTRY * 4)()
    removed = win32.ULONG()
    assert not api.GetQueuedCompletionStatusEx(port, entries, 4, byref(removed), ms, 0)
    assert api.get_last_error() == win32.WAIT_TIMEOUT


def started(api: win32.Win32Api, rc: int, success: int) -> bool:
    """Whether the call completed at once; otherwise it must have been queued."""
    if rc == success:
        return True
    assert api.get_last_error() == win32.ERROR_IO_PENDING
    return False


def wsabufs(*buffers: ctypes.Array[ctypes.c_char]) -> ctypes.Array[win32.WSABUF]:
    return (win32.WSABUF * len(buffers))(*(win32.WSABUF(len(b), addressof(b)) for b in buffers))


def recv(
    api: win32.Win32Api, sock: socket.socket, *buffers: ctypes.Array[ctypes.c_char]
) -> tuple[int, win32.OVERLAPPED, tuple[object, ...]]:
    """Issue a WSARecv; returns its result, OVERLAPPED, and what must outlive the operation."""
    bufs, flags, ov = wsabufs(*buffers), win32.DWORD(0), win32.OVERLAPPED()
    rc = api.WSARecv(sock.fileno(), bufs, len(buffers), None, byref(flags), byref(ov), None)
    return rc, ov, (bufs, flags, buffers)


def status_error(api: win32.Win32Api, packet: Packet) -> int:
    return win32.ntstatus_to_winerror(api, packet[2])


def accept_one(
    api: win32.Win32Api,
    port: int,
    track: Track,
    *,
    update: bool = True,
    family: socket.AddressFamily = socket.AF_INET,
) -> tuple[socket.socket, socket.socket, socket.socket, ctypes.Array[ctypes.c_char]]:
    """AcceptEx one client connection: (accepted socket, client, listener, output buffer)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    listener = track(socket.socket(family))
    listener.bind((host, 0))
    listener.listen()
    acceptor = track(socket.socket(family))
    assert api.CreateIoCompletionPort(listener.fileno(), port, LISTEN_KEY, 0) == port
    assert api.CreateIoCompletionPort(acceptor.fileno(), port, CONN_KEY, 0) == port
    output = ctypes.create_string_buffer(2 * SLOT)
    received, ov = win32.DWORD(), win32.OVERLAPPED()
    rc = api.AcceptEx(
        listener.fileno(), acceptor.fileno(), output, 0, SLOT, SLOT, byref(received), byref(ov)
    )
    assert not started(api, rc, win32.TRUE)  # nobody is connecting yet
    assert ov.Internal == win32.STATUS_PENDING
    client = track(socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT))
    [packet] = reap(api, port, 1)
    assert packet == (LISTEN_KEY, addressof(ov), win32.STATUS_SUCCESS, 0)
    assert (ov.Internal, ov.InternalHigh) == (win32.STATUS_SUCCESS, 0)
    if update:
        listen_socket = win32.SOCKET(listener.fileno())
        rc = api.setsockopt(
            acceptor.fileno(),
            win32.SOL_SOCKET,
            win32.SO_UPDATE_ACCEPT_CONTEXT,
            byref(listen_socket),
            ctypes.sizeof(listen_socket),
        )
        assert rc == 0
    return acceptor, client, listener, output


def sockaddrs(
    api: win32.Win32Api, output: ctypes.Array[ctypes.c_char]
) -> tuple[win32.SockAddress, win32.SockAddress]:
    local, local_len = ctypes.c_void_p(), ctypes.c_int32()
    remote, remote_len = ctypes.c_void_p(), ctypes.c_int32()
    api.GetAcceptExSockaddrs(
        output, 0, SLOT, SLOT, byref(local), byref(local_len), byref(remote), byref(remote_len)
    )
    assert local.value and remote.value
    return (
        win32.sockaddr_to_address(local.value, local_len.value),
        win32.sockaddr_to_address(remote.value, remote_len.value),
    )


@dataclass
class PendingRecv:
    """A WSARecv pending on an accepted connection, with all that must outlive it."""

    api: Win32Double
    port: int
    acceptor: socket.socket
    client: socket.socket
    ov: win32.OVERLAPPED
    keep: tuple[object, ...]

    def packet(self) -> Packet:
        """The one packet that came, checked to be this receive's."""
        [packet] = reap(self.api, self.port, 1)
        assert packet[:2] == (CONN_KEY, addressof(self.ov))
        return packet


def pending_recv(
    api: Win32Double,
    track: Track,
    *buffers: ctypes.Array[ctypes.c_char],
    update: bool = True,
) -> PendingRecv:
    """Accept a connection on a new port and post a WSARecv into ``buffers`` (one of 8 bytes
    if none): nothing was sent yet, so it must be left pending."""
    port = new_port(api)
    acceptor, client, _, _ = accept_one(api, port, track, update=update)
    rc, ov, keep = recv(api, acceptor, *(buffers or (ctypes.create_string_buffer(8),)))
    assert not started(api, rc, 0)
    return PendingRecv(api, port, acceptor, client, ov, keep)


# -- drivers/iocp/win32.py on Linux --------------------------------------------------------------


def test_probe_and_load_say_iocp_is_windows_only() -> None:
    assert win32.probe() == (False, f"IOCP is Windows-only (this is {sys.platform})")
    with pytest.raises(win32.Win32Unavailable) as raised:
        win32.load()
    assert raised.value.reason == "IOCP is Windows-only (this is linux)"


@pytest.mark.parametrize(
    ("structure", "size", "offsets"),
    [
        (win32.OVERLAPPED, 32, {"Internal": 0, "InternalHigh": 8, "Offset": 16, "hEvent": 24}),
        (
            win32.OVERLAPPED_ENTRY,
            32,
            {
                "lpCompletionKey": 0,
                "lpOverlapped": 8,
                "Internal": 16,
                "dwNumberOfBytesTransferred": 24,
            },
        ),
        (win32.WSABUF, 16, {"len": 0, "buf": 8}),
        (win32.GUID, 16, {"Data1": 0, "Data2": 4, "Data3": 6, "Data4": 8}),
        (win32.sockaddr_in, 16, {"sin_port": 2, "sin_addr": 4}),
        (
            win32.sockaddr_in6,
            28,
            {"sin6_port": 2, "sin6_flowinfo": 4, "sin6_addr": 8, "sin6_scope_id": 24},
        ),
        (win32.SOCKADDR_STORAGE, 128, {"ss_family": 0}),
    ],
)
def test_structures_have_the_x64_windows_layout(
    structure: type[ctypes.Structure], size: int, offsets: dict[str, int]
) -> None:
    assert ctypes.sizeof(structure) == size
    assert {name: getattr(structure, name).offset for name in offsets} == offsets


def test_overlapped_pointer_shares_the_offset_fields_and_accept_slots_fit_ipv6() -> None:
    assert win32.OVERLAPPED.Pointer.offset == win32.OVERLAPPED.Offset.offset == 16
    assert win32.ACCEPT_ADDRESS_LENGTH == 28 + 16


def test_every_protocol_member_has_a_signature_with_its_parameter_count() -> None:
    members = {
        name
        for name, value in vars(win32.Win32Api).items()
        if callable(value) and not name.startswith("_")
    }
    tables = {**win32.SIGNATURES, **win32.EXTENSION_SIGNATURES}
    assert members == set(tables) | {"get_last_error"}
    for name, (_, _, argtypes) in tables.items():
        parameters = list(inspect.signature(getattr(win32.Win32Api, name)).parameters)[1:]
        assert len(parameters) == len(argtypes), name


def test_guids_are_laid_out_as_windows_stores_them() -> None:
    accept = win32.guid(win32.WSAID_ACCEPTEX)
    assert (accept.Data1, accept.Data2, accept.Data3) == (0xB5367DF1, 0xCBAC, 0x11CF)
    assert bytes(accept.Data4) == bytes.fromhex("95ca00805f48a192")
    assert bytes(win32.guid(win32.WSAID_CONNECTEX))[:4] == bytes.fromhex("b907a225")


@pytest.mark.parametrize(
    "address", [("127.0.0.1", 8080), ("10.1.2.3", 1), ("::1", 443, 0, 0), ("fe80::1", 9, 7, 3)]
)
def test_sockaddr_round_trips_in_windows_format(address: win32.SockAddress) -> None:
    storage, length = win32.sockaddr_from_address(address)
    raw = bytes(storage)
    ipv6 = ":" in address[0]
    assert length == (28 if ipv6 else 16)
    assert struct.unpack_from("<H", raw)[0] == (23 if ipv6 else 2)  # AF_INET6 is 23 on Windows
    assert struct.unpack_from(">H", raw, 2)[0] == address[1]
    assert win32.sockaddr_to_address(addressof(storage), length) == address


def test_sockaddr_parsing_rejects_linux_families_and_short_lengths() -> None:
    linux_v6 = ctypes.create_string_buffer(struct.pack("<H", socket.AF_INET6) + bytes(26))
    with pytest.raises(ValueError, match="family 10"):
        win32.sockaddr_to_address(addressof(linux_v6), 28)
    storage, _ = win32.sockaddr_from_address(("::1", 1, 0, 0))
    with pytest.raises(ValueError):
        win32.sockaddr_to_address(addressof(storage), 16)


def test_disconnect_codes() -> None:
    for code in (64, 995, 1236, 10053, 10054, 10058):
        assert win32.winerror_is_disconnect(code)
    for code in (0, 997, 1225, 10022, 10038):
        assert not win32.winerror_is_disconnect(code)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (win32.STATUS_SUCCESS, 0),
        (win32.STATUS_PENDING, 997),
        (win32.STATUS_CANCELLED, 995),
        (win32.STATUS_CONNECTION_RESET, 64),
        (win32.STATUS_LOCAL_DISCONNECT, 64),
        (win32.STATUS_REMOTE_DISCONNECT, 64),
        (win32.STATUS_CONNECTION_ABORTED, 1236),
        (win32.STATUS_CONNECTION_REFUSED, 1225),
        (0xC0000001, win32.ERROR_MR_MID_NOT_FOUND),
    ],
)
def test_ntstatus_conversion(api: Win32Double, status: int, code: int) -> None:
    assert win32.ntstatus_to_winerror(api, status) == code


# -- the double: calls checked as ctypes checks them ---------------------------------------------


def test_arguments_are_checked_like_ctypes(api: Win32Double) -> None:
    port = new_port(api)
    ov = win32.OVERLAPPED()
    with pytest.raises(ctypes.ArgumentError):  # a Structure where a pointer is expected
        api.PostQueuedCompletionStatus(port, 0, 0, ov)
    with pytest.raises(TypeError):
        api.PostQueuedCompletionStatus(port, 0, 0)
    assert api.PostQueuedCompletionStatus(port, 2**32 + 5, 1, byref(ov))  # DWORD truncates
    assert reap(api, port, 1) == [(1, addressof(ov), 0, 5)]


def test_extensions_are_bound_by_the_wsaioctl_lookup(
    sockets: Track,
) -> None:
    with Win32Double() as fresh:
        lookup = sockets(socket.socket())
        assert not hasattr(fresh, "AcceptEx")
        for guid_text in (win32.WSAID_ACCEPTEX, win32.WSAID_CONNECTEX):
            assert win32.get_extension_pointer(fresh, lookup.fileno(), guid_text)
        assert callable(fresh.AcceptEx) and callable(fresh.ConnectEx)
        assert not hasattr(fresh, "GetAcceptExSockaddrs")
        with pytest.raises(win32.Win32Error) as raised:
            win32.get_extension_pointer(fresh, lookup.fileno(), win32.WSAID_DISCONNECTEX)
        assert raised.value.winerror == win32.WSAEINVAL
        read_end, write_end = os.pipe()  # descriptors that are not sockets
        try:
            with pytest.raises(win32.Win32Error) as raised:
                win32.get_extension_pointer(fresh, read_end, win32.WSAID_ACCEPTEX)
            assert raised.value.winerror == win32.WSAENOTSOCK
        finally:
            os.close(read_end)
            os.close(write_end)
        assert fresh.violations == []


# -- ports ----------------------------------------------------------------------------------------


def test_wait_times_out_with_wait_timeout_in_bounded_time(api: Win32Double) -> None:
    port = new_port(api)
    began = time.monotonic()
    assert_no_packet(api, port, ms=50)
    assert 0.04 <= time.monotonic() - began < 1.0


def test_post_from_another_thread_wakes_a_waiter(api: Win32Double) -> None:
    port = new_port(api)
    ov = win32.OVERLAPPED()
    poster = threading.Timer(0.05, api.PostQueuedCompletionStatus, (port, 7, 42, byref(ov)))
    began = time.monotonic()
    poster.start()
    try:
        assert reap(api, port, 1) == [(42, addressof(ov), win32.STATUS_SUCCESS, 7)]
    finally:
        poster.join(TIMEOUT)
    assert time.monotonic() - began < 2.0


def test_one_call_dequeues_a_batch_in_order(api: Win32Double) -> None:
    port = new_port(api)
    for number in range(100):
        assert api.PostQueuedCompletionStatus(port, number, 1, None)
    entries = (win32.OVERLAPPED_ENTRY * 64)()
    removed = win32.ULONG()
    assert api.GetQueuedCompletionStatusEx(port, entries, 64, byref(removed), 0, 0)
    assert removed.value == 64
    assert [e.dwNumberOfBytesTransferred for e in entries] == list(range(64))
    assert api.GetQueuedCompletionStatusEx(port, entries, 64, byref(removed), 0, 0)
    assert [e.dwNumberOfBytesTransferred for e in entries[: removed.value]] == list(range(64, 100))


def test_posts_from_many_threads_arrive_once_each_in_each_thread_s_order(api: Win32Double) -> None:
    port = new_port(api)
    threads, posts = 8, 200
    barrier = threading.Barrier(threads)

    def post(key: int) -> None:
        barrier.wait(TIMEOUT)
        for number in range(posts):
            assert api.PostQueuedCompletionStatus(port, number, key, None)

    posters = [threading.Thread(target=post, args=(key,)) for key in range(1, threads + 1)]
    for poster in posters:
        poster.start()
    packets = reap(api, port, threads * posts)  # while they post
    for poster in posters:
        poster.join(TIMEOUT)
    for key in range(1, threads + 1):
        assert [n for k, _, _, n in packets if k == key] == list(range(posts))
    assert {status for _, _, status, _ in packets} == {win32.STATUS_SUCCESS}
    assert_no_packet(api, port)


def test_a_posted_overlapped_is_any_value_and_comes_back_as_given(api: Win32Double) -> None:
    port = new_port(api)
    assert api.PostQueuedCompletionStatus(port, 3, 9, 0x1234)  # not a pointer: never read
    assert reap(api, port, 1) == [(9, 0x1234, win32.STATUS_SUCCESS, 3)]


def test_a_closed_port_refuses_posts_and_its_queued_packets_are_gone(api: Win32Double) -> None:
    port = new_port(api)
    assert api.PostQueuedCompletionStatus(port, 1, 1, None)
    assert api.CloseHandle(port)
    assert not api.PostQueuedCompletionStatus(port, 2, 1, None)
    assert api.get_last_error() == win32.ERROR_INVALID_HANDLE
    entries = (win32.OVERLAPPED_ENTRY * 1)()
    removed = win32.ULONG()
    assert not api.GetQueuedCompletionStatusEx(port, entries, 1, byref(removed), 0, 0)
    assert api.get_last_error() == win32.ERROR_INVALID_HANDLE


def test_posting_a_pending_operation_s_overlapped_is_a_violation(
    doubles: Doubles, sockets: Track
) -> None:
    api = doubles(immediate_rate=0.0)
    pending = pending_recv(api, sockets, ctypes.create_string_buffer(8))
    assert api.PostQueuedCompletionStatus(pending.port, 0, 0, byref(pending.ov))
    assert api.violations == [
        "PostQueuedCompletionStatus with the OVERLAPPED of a pending operation"
    ]
    assert api.CancelIoEx(pending.acceptor.fileno(), byref(pending.ov))
    assert len(reap(api, pending.port, 2)) == 2  # the posted packet and the cancelled receive
    api.violations.clear()


def test_closing_the_port_abandons_a_waiter(api: Win32Double) -> None:
    port = new_port(api)
    outcome: list[int] = []

    def wait() -> None:
        entries = (win32.OVERLAPPED_ENTRY * 1)()
        removed = win32.ULONG()
        rc = api.GetQueuedCompletionStatusEx(port, entries, 1, byref(removed), 5000, 0)
        outcome.extend([rc, api.get_last_error()])

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    assert api.CloseHandle(port)
    waiter.join(TIMEOUT)
    assert outcome == [win32.FALSE, win32.ERROR_ABANDONED_WAIT_0]
    assert not api.CloseHandle(port)
    assert api.get_last_error() == win32.ERROR_INVALID_HANDLE


def test_a_socket_joins_only_one_port(api: Win32Double, sockets: Track) -> None:
    first, second = new_port(api), new_port(api)
    sock = sockets(socket.socket())
    assert api.CreateIoCompletionPort(sock.fileno(), first, 1, 0) == first
    assert api.CreateIoCompletionPort(sock.fileno(), second, 1, 0) is None
    assert api.get_last_error() == win32.ERROR_INVALID_PARAMETER
    read_end, write_end = os.pipe()
    try:
        assert api.CreateIoCompletionPort(read_end, first, 1, 0) is None
        assert api.get_last_error() == win32.ERROR_INVALID_HANDLE
    finally:
        os.close(read_end)
        os.close(write_end)


# -- AcceptEx, WSARecv, WSASend, ConnectEx ---------------------------------------------------------


def test_acceptex_gives_the_connection_and_both_addresses(api: Win32Double, sockets: Track) -> None:
    port = new_port(api)
    acceptor, client, listener, output = accept_one(api, port, sockets)
    assert acceptor.getpeername() == client.getsockname()  # the accept socket is the connection
    assert sockaddrs(api, output) == (listener.getsockname(), client.getsockname())


def test_acceptex_on_ipv6(api: Win32Double, sockets: Track) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = new_port(api)
    _, client, listener, output = accept_one(api, port, sockets, family=socket.AF_INET6)
    local, remote = sockaddrs(api, output)
    assert local[:2] == listener.getsockname()[:2] and len(local) == 4
    assert remote[:2] == client.getsockname()[:2]


def test_wsarecv_scatters_into_two_buffers(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=0.0)
    first, second = ctypes.create_string_buffer(4), ctypes.create_string_buffer(16)
    pending = pending_recv(api, sockets, first, second)
    pending.client.sendall(b"0123456789")
    assert pending.packet()[2:] == (win32.STATUS_SUCCESS, 10)
    assert (first.raw, second.raw[:6]) == (b"0123", b"456789")
    assert pending.ov.InternalHigh == 10


def test_wsasend_gathers_three_buffers_in_order(api: Win32Double, sockets: Track) -> None:
    port = new_port(api)
    acceptor, client, _, _ = accept_one(api, port, sockets)
    parts = [ctypes.create_string_buffer(p, len(p)) for p in (b"alpha-", b"beta-", b"gamma")]
    bufs, sent, ov = wsabufs(*parts), win32.DWORD(), win32.OVERLAPPED()
    rc = api.WSASend(acceptor.fileno(), bufs, 3, byref(sent), 0, byref(ov), None)
    if started(api, rc, 0):
        assert sent.value == 16
    assert reap(api, port, 1) == [(CONN_KEY, addressof(ov), win32.STATUS_SUCCESS, 16)]
    data = b""
    while len(data) < 16:
        data += client.recv(64)
    assert data == b"alpha-beta-gamma"


def test_immediate_success_still_posts_a_packet_unless_skipped(
    doubles: Doubles, sockets: Track
) -> None:
    api = doubles(immediate_rate=1.0)
    port = new_port(api)
    acceptor, client, _, _ = accept_one(api, port, sockets)
    client.sendall(b"ping")
    assert select.select([acceptor], [], [], TIMEOUT)[0]
    buffer = ctypes.create_string_buffer(8)
    bufs, got, flags, ov = wsabufs(buffer), win32.DWORD(), win32.DWORD(), win32.OVERLAPPED()
    rc = api.WSARecv(acceptor.fileno(), bufs, 1, byref(got), byref(flags), byref(ov), None)
    assert rc == 0 and got.value == 4 and buffer.raw[:4] == b"ping"
    assert reap(api, port, 1) == [(CONN_KEY, addressof(ov), win32.STATUS_SUCCESS, 4)]

    assert api.SetFileCompletionNotificationModes(
        acceptor.fileno(), win32.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
    )
    client.sendall(b"pong")
    assert select.select([acceptor], [], [], TIMEOUT)[0]
    rc = api.WSARecv(acceptor.fileno(), bufs, 1, byref(got), byref(flags), byref(ov), None)
    assert rc == 0 and got.value == 4 and buffer.raw[:4] == b"pong"
    assert (ov.Internal, ov.InternalHigh) == (win32.STATUS_SUCCESS, 4)
    assert_no_packet(api, port)


def test_connectex_connects_a_bound_socket_and_sends_first_data(
    api: Win32Double, sockets: Track
) -> None:
    port = new_port(api)
    server = sockets(socket.create_server(("127.0.0.1", 0)))
    sock = sockets(socket.socket())
    sock.bind(("127.0.0.1", 0))
    assert api.CreateIoCompletionPort(sock.fileno(), port, CONN_KEY, 0) == port
    name, name_length = win32.sockaddr_from_address(server.getsockname())
    first = ctypes.create_string_buffer(b"hello", 5)
    sent, ov = win32.DWORD(), win32.OVERLAPPED()
    rc = api.ConnectEx(sock.fileno(), byref(name), name_length, first, 5, byref(sent), byref(ov))
    started(api, rc, win32.TRUE)
    assert reap(api, port, 1) == [(CONN_KEY, addressof(ov), win32.STATUS_SUCCESS, 5)]
    assert (
        api.setsockopt(sock.fileno(), win32.SOL_SOCKET, win32.SO_UPDATE_CONNECT_CONTEXT, None, 0)
        == 0
    )
    connection, peer = server.accept()
    with connection:
        connection.settimeout(TIMEOUT)
        assert peer == sock.getsockname()
        assert connection.recv(16) == b"hello"


def test_connectex_refused_completes_with_connection_refused(
    api: Win32Double, sockets: Track
) -> None:
    port = new_port(api)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    address = closed.getsockname()
    closed.close()
    sock = sockets(socket.socket())
    sock.bind(("127.0.0.1", 0))
    api.CreateIoCompletionPort(sock.fileno(), port, CONN_KEY, 0)
    name, name_length = win32.sockaddr_from_address(address)
    ov = win32.OVERLAPPED()
    rc = api.ConnectEx(sock.fileno(), byref(name), name_length, None, 0, None, byref(ov))
    assert not started(api, rc, win32.TRUE)
    [packet] = reap(api, port, 1)
    assert status_error(api, packet) == win32.ERROR_CONNECTION_REFUSED


def test_connectex_needs_a_bound_socket(api: Win32Double, sockets: Track) -> None:
    port = new_port(api)
    sock = sockets(socket.socket())
    api.CreateIoCompletionPort(sock.fileno(), port, CONN_KEY, 0)
    name, name_length = win32.sockaddr_from_address(("127.0.0.1", 9))
    ov = win32.OVERLAPPED()
    rc = api.ConnectEx(sock.fileno(), byref(name), name_length, None, 0, None, byref(ov))
    assert rc == win32.FALSE and api.get_last_error() == win32.WSAEINVAL
    assert_no_packet(api, port)


def test_immediate_failures_post_no_packet(api: Win32Double, sockets: Track) -> None:
    port = new_port(api)
    unconnected = sockets(socket.socket())
    api.CreateIoCompletionPort(unconnected.fileno(), port, CONN_KEY, 0)
    rc, _, _ = recv(api, unconnected, ctypes.create_string_buffer(4))
    assert rc == win32.SOCKET_ERROR and api.get_last_error() == win32.WSAENOTCONN
    gone = socket.socket()
    number = gone.fileno()
    gone.close()
    bufs, flags, ov = wsabufs(ctypes.create_string_buffer(4)), win32.DWORD(), win32.OVERLAPPED()
    rc = api.WSARecv(number, bufs, 1, None, byref(flags), byref(ov), None)
    assert rc == win32.SOCKET_ERROR and api.WSAGetLastError() == win32.WSAENOTSOCK
    assert_no_packet(api, port)


def test_zero_byte_recv_completes_when_data_arrives(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=0.0)
    pending = pending_recv(api, sockets, ctypes.create_string_buffer(0))
    assert_no_packet(api, pending.port)
    pending.client.sendall(b"x")
    assert pending.packet()[2:] == (win32.STATUS_SUCCESS, 0)
    assert pending.acceptor.recv(4) == b"x"  # the byte is still there for the real read


# -- cancellation, close, reset --------------------------------------------------------------------


def test_cancel_completes_a_pending_recv_with_operation_aborted(
    doubles: Doubles, sockets: Track
) -> None:
    api = doubles(immediate_rate=0.0, cancel_race_rate=0.0)
    pending = pending_recv(api, sockets)
    assert pending.ov.Internal == win32.STATUS_PENDING
    assert api.CancelIoEx(pending.acceptor.fileno(), byref(pending.ov))
    assert status_error(api, pending.packet()) == win32.ERROR_OPERATION_ABORTED
    assert pending.ov.Internal == win32.STATUS_CANCELLED


def test_cancel_with_nothing_pending_is_not_found(api: Win32Double, sockets: Track) -> None:
    port = new_port(api)
    acceptor, _, _, _ = accept_one(api, port, sockets)
    ov = win32.OVERLAPPED()
    assert not api.CancelIoEx(acceptor.fileno(), byref(ov))
    assert api.get_last_error() == win32.ERROR_NOT_FOUND
    assert not api.CancelIoEx(acceptor.fileno(), None)
    assert api.get_last_error() == win32.ERROR_NOT_FOUND


def test_cancel_all_on_the_listener_aborts_a_pending_acceptex(
    api: Win32Double, sockets: Track
) -> None:
    port = new_port(api)
    listener = sockets(socket.create_server(("127.0.0.1", 0)))
    acceptor = sockets(socket.socket())
    api.CreateIoCompletionPort(listener.fileno(), port, LISTEN_KEY, 0)
    output = ctypes.create_string_buffer(2 * SLOT)
    ov = win32.OVERLAPPED()
    rc = api.AcceptEx(listener.fileno(), acceptor.fileno(), output, 0, SLOT, SLOT, None, byref(ov))
    assert not started(api, rc, win32.TRUE)
    assert api.CancelIoEx(listener.fileno(), None)
    [packet] = reap(api, port, 1)
    assert packet[:2] == (LISTEN_KEY, addressof(ov))
    assert status_error(api, packet) == win32.ERROR_OPERATION_ABORTED


def test_a_cancel_racing_with_data_may_deliver_the_data(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=0.0, cancel_race_rate=1.0)
    buffer = ctypes.create_string_buffer(8)
    pending = pending_recv(api, sockets, buffer)
    pending.client.sendall(b"late")
    if not api.CancelIoEx(pending.acceptor.fileno(), byref(pending.ov)):  # unless it completed
        assert api.get_last_error() == win32.ERROR_NOT_FOUND
    assert pending.packet()[2:] == (win32.STATUS_SUCCESS, 4)
    assert buffer.raw[:4] == b"late"


def test_closing_a_socket_aborts_its_pending_recv(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=0.0)
    pending = pending_recv(api, sockets)
    pending.acceptor.close()
    assert status_error(api, pending.packet()) == win32.ERROR_OPERATION_ABORTED


def test_peer_reset_completes_a_pending_recv_with_netname_deleted(
    doubles: Doubles, sockets: Track
) -> None:
    api = doubles(immediate_rate=0.0)
    pending = pending_recv(api, sockets)
    rst_close(pending.client)
    error = status_error(api, pending.packet())
    assert error == win32.ERROR_NETNAME_DELETED == 64
    assert win32.winerror_is_disconnect(error)


def test_recv_on_a_reset_connection_fails_at_once(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=1.0)
    port = new_port(api)
    acceptor, client, _, _ = accept_one(api, port, sockets)
    rst_close(client)
    assert select.select([acceptor], [], [], TIMEOUT)[0]
    for _ in range(2):  # Windows keeps saying so; Linux forgets after the first read
        rc, _, _ = recv(api, acceptor, ctypes.create_string_buffer(8))
        assert rc == win32.SOCKET_ERROR and api.get_last_error() == win32.WSAECONNRESET
    assert_no_packet(api, port)


def test_graceful_close_completes_a_recv_with_zero_bytes(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=0.0)
    pending = pending_recv(api, sockets)
    pending.client.close()
    assert pending.packet()[2:] == (win32.STATUS_SUCCESS, 0)


# -- driver mistakes are recorded ------------------------------------------------------------------


def test_recv_before_update_accept_context_is_a_violation(api: Win32Double, sockets: Track) -> None:
    pending = pending_recv(api, sockets, update=False)  # pending: no data yet
    pending.client.sendall(b"data")
    assert pending.packet()[2:] == (win32.STATUS_SUCCESS, 4)
    assert len(api.violations) == 1
    assert "before setsockopt(SO_UPDATE_ACCEPT_CONTEXT)" in api.violations[0]
    api.violations.clear()


def test_reusing_pending_memory_is_a_violation(doubles: Doubles, sockets: Track) -> None:
    api = doubles(immediate_rate=0.0)
    buffer = ctypes.create_string_buffer(8)
    pending = pending_recv(api, sockets, buffer)
    port, acceptor, ov = pending.port, pending.acceptor, pending.ov
    bufs, flags = wsabufs(ctypes.create_string_buffer(8)), win32.DWORD()
    rc = api.WSARecv(acceptor.fileno(), bufs, 1, None, byref(flags), byref(ov), None)
    assert rc == win32.SOCKET_ERROR and api.get_last_error() == win32.WSAEINVAL
    assert "reused by WSARecv while its WSARecv is pending" in api.violations[-1]
    send_ov, send_bufs = win32.OVERLAPPED(), wsabufs(buffer)
    rc = api.WSASend(acceptor.fileno(), send_bufs, 1, None, 0, byref(send_ov), None)
    assert not started(api, rc, 0)
    assert "still owned by a pending WSARecv" in api.violations[-1]
    assert len(api.violations) == 2
    assert api.CancelIoEx(acceptor.fileno(), byref(ov))
    assert {p[1] for p in reap(api, port, 2)} == {addressof(ov), addressof(send_ov)}
    api.violations.clear()


def test_two_pending_sends_and_a_socket_without_port_are_violations(
    doubles: Doubles, sockets: Track
) -> None:
    api = doubles(immediate_rate=0.0)
    port = new_port(api)
    acceptor, _, _, _ = accept_one(api, port, sockets)
    big = ctypes.create_string_buffer(32 * 1024 * 1024)  # more than the socket buffers hold
    small = ctypes.create_string_buffer(b"x", 1)
    first, second = win32.OVERLAPPED(), win32.OVERLAPPED()
    bufs_big, bufs_small = wsabufs(big), wsabufs(small)
    api.WSASend(acceptor.fileno(), bufs_big, 1, None, 0, byref(first), None)
    api.WSASend(acceptor.fileno(), bufs_small, 1, None, 0, byref(second), None)
    assert api.violations == [f"two WSASend pending on socket {acceptor.fileno()}"]
    assert api.CancelIoEx(acceptor.fileno(), None)
    statuses = {p[1]: status_error(api, p) for p in reap(api, port, 2)}
    assert statuses == {addressof(first): 995, addressof(second): 995}

    loose, peer = socket.socketpair()
    with loose, peer:
        ov = win32.OVERLAPPED()
        rc = api.WSASend(loose.fileno(), bufs_small, 1, None, 0, byref(ov), None)
        assert not started(api, rc, 0)
        assert "has no completion port" in api.violations[-1]
        peer.settimeout(TIMEOUT)
        assert peer.recv(1) == b"x"
        deadline = time.monotonic() + TIMEOUT
        while ov.Internal == win32.STATUS_PENDING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ov.Internal == win32.STATUS_SUCCESS  # done, but no packet will ever say so
    assert len(api.violations) == 2
    api.violations.clear()
