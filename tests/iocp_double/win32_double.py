"""A Linux double of the Win32 IOCP bindings: real sockets, Windows completion semantics.

``Win32Double`` implements ``drivers.iocp.win32.Win32Api`` so the IOCP driver's every line can
run on Linux. Operations go to a background engine thread that polls the sockets and performs
the real recv/send/accept/connect straight into and out of the caller's memory, then writes the
OVERLAPPED and queues a completion packet, as the Windows I/O manager does.

What it reproduces:

- Calls checked like ctypes checks them (``win32.SIGNATURES``): positional arguments, the Win32
  parameter count and order, pointer arguments as int/None/byref/array/pointer (a Structure
  instance is refused with ``ctypes.ArgumentError``), integers truncated to their C width.
- Return values and errors as Windows gives them: SOCKET_ERROR/FALSE with WSA_IO_PENDING /
  ERROR_IO_PENDING for a queued operation; immediate success (0/TRUE, byte count filled) at a
  seeded rate when the operation can complete at once, still posting a packet unless
  FILE_SKIP_COMPLETION_PORT_ON_SUCCESS was set; immediate failures (WSAENOTSOCK, WSAENOTCONN,
  WSAECONNRESET, ...) post no packet. The last error is kept per thread, as ctypes'
  ``use_last_error`` keeps it (``ctypes.set_last_error`` does not exist off Windows).
- OVERLAPPED.Internal is STATUS_PENDING while in flight, then the NTSTATUS; InternalHigh the
  bytes. Packets carry the completion key of the handle's association and the OVERLAPPED
  address. A handle joins one port only (ERROR_INVALID_PARAMETER on a second association).
- The WSABUF array is read at call time (Windows lets it live on the stack); the data buffers
  are used until completion. Receives on one socket complete in issue order, sends likewise.
- AcceptEx on a pre-created accept socket: the accepted connection is ``dup2``-ed onto the
  accept socket's descriptor, so the driver's socket object becomes the connection; the output
  buffer holds received data (if asked for) then the local and remote addresses in an internal
  format only the double's GetAcceptExSockaddrs decodes. ConnectEx needs a bound socket and may
  send a first buffer. Connection refused completes with ERROR_CONNECTION_REFUSED.
- CancelIoEx (one OVERLAPPED or all): ERROR_NOT_FOUND when nothing is pending, else the
  operation completes later with STATUS_CANCELLED (995 through RtlNtStatusToDosError), or, at a
  seeded rate, a cancelled receive that has data completes successfully with it. Closing a
  socket completes its pending operations with STATUS_CANCELLED (noticed within one engine tick,
  ``_TICK_MS``). Peer reset gives STATUS_CONNECTION_RESET (64); a graceful close, a 0-byte
  successful receive. A zero-length WSARecv completes with 0 bytes when data (or EOF) arrives.
- GetQueuedCompletionStatusEx fills up to ulCount OVERLAPPED_ENTRY in FIFO order, times out with
  WAIT_TIMEOUT, and returns ERROR_ABANDONED_WAIT_0 when the port is closed under a waiter;
  PostQueuedCompletionStatus, from any thread and from many at once, queues one packet per call
  in the port's FIFO with the key, byte count and lpOverlapped given (never dereferenced, so
  any value goes) and Internal STATUS_SUCCESS, as NtSetIoCompletion does, and wakes a waiter;
  on a closed port it fails with ERROR_INVALID_HANDLE, and the packets queued when the port
  closed are gone.
- Driver mistakes are recorded in ``violations`` (tests assert it stays empty): WSARecv/WSASend
  on an AcceptEx/ConnectEx socket before SO_UPDATE_ACCEPT/CONNECT_CONTEXT, an OVERLAPPED or a
  buffer still owned by a pending operation (also as a posted packet's lpOverlapped), two
  WSASend pending on one socket (a rule of this project, not of Windows), an operation on a
  socket with no completion port, no OVERLAPPED, a completion routine, GetAcceptExSockaddrs
  on a buffer AcceptEx did not fill.

What it cannot show: real Windows kernel timing and ordering between sockets; Layered Service
Providers (and so whether FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is safe); the variety of
NTSTATUS codes real networks produce (only the ones in ``_DOS_ERROR_FOR_STATUS``); what
SO_UPDATE_ACCEPT_CONTEXT changes in Windows socket state (getpeername and shutdown simply work
here); memory corruption from buffers freed before completion (the double writes into them just
as Windows would, but nothing detects it); the Win64 calling convention of real ctypes calls;
alertable waits and APCs (fAlertable is ignored); Ctrl-C, which interrupts a blocking wait here
but not on Windows; partial sends (an overlapped send completes only once every byte is
written); socket options beyond TCP_NODELAY and the two UPDATE_CONTEXT options. Timing and
thread scheduling make a seed reproduce decisions, not whole runs. The repository root must be
importable (``drivers.iocp.win32``), as the tests arrange.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import os
import random
import select
import socket
import stat
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spcore.drivers.iocp import win32

_T = TypeVar("_T")
_TICK_MS = 20  # how often the engine looks for closed sockets when nothing else wakes it
_POINTER_MASK = (1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1
_SLOT_HEADER = struct.Struct("<II8x")  # sockaddr length, magic, padding: 16 bytes, as on Windows
_SLOT_MAGIC = 0x41434358  # "XCCA"
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT

_DOS_ERROR_FOR_STATUS = {
    win32.STATUS_SUCCESS: win32.ERROR_SUCCESS,
    win32.STATUS_PENDING: win32.ERROR_IO_PENDING,
    win32.STATUS_CANCELLED: win32.ERROR_OPERATION_ABORTED,
    win32.STATUS_LOCAL_DISCONNECT: win32.ERROR_NETNAME_DELETED,
    win32.STATUS_REMOTE_DISCONNECT: win32.ERROR_NETNAME_DELETED,
    win32.STATUS_CONNECTION_RESET: win32.ERROR_NETNAME_DELETED,
    win32.STATUS_CONNECTION_REFUSED: win32.ERROR_CONNECTION_REFUSED,
    win32.STATUS_CONNECTION_ABORTED: win32.ERROR_CONNECTION_ABORTED,
}
_STATUS_FOR_ERRNO = {
    errno.ECONNRESET: win32.STATUS_CONNECTION_RESET,
    errno.EPIPE: win32.STATUS_CONNECTION_RESET,
    errno.ECONNREFUSED: win32.STATUS_CONNECTION_REFUSED,
    errno.EBADF: win32.STATUS_CANCELLED,
    errno.ENOTSOCK: win32.STATUS_CANCELLED,
}
_WSA_ERROR_FOR_ERRNO = {
    errno.ENOTCONN: win32.WSAENOTCONN,
    errno.ECONNRESET: win32.WSAECONNRESET,
    errno.EPIPE: win32.WSAECONNRESET,
    errno.ECONNABORTED: win32.WSAECONNABORTED,
}
# What an operation that fails at once reports through WSAGetLastError (no packet follows).
_WSA_ERROR_FOR_STATUS = {
    win32.STATUS_CONNECTION_RESET: win32.WSAECONNRESET,
    win32.STATUS_CONNECTION_REFUSED: win32.WSAECONNREFUSED,
    win32.STATUS_CANCELLED: win32.WSA_OPERATION_ABORTED,
}
_EXTENSION_TOKENS = {
    "AcceptEx": 0xD0B1E001,
    "GetAcceptExSockaddrs": 0xD0B1E002,
    "ConnectEx": 0xD0B1E003,
}


def _status_for(exc: OSError) -> int:
    return _STATUS_FOR_ERRNO.get(exc.errno or 0, win32.STATUS_CONNECTION_ABORTED)


def _address(value: object) -> int:
    """The address a c_void_p parameter receives for ``value``."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & _POINTER_MASK
    return ctypes.cast(value, ctypes.c_void_p).value or 0  # type: ignore[arg-type]


def _convert(argtype: Any, value: object, index: int) -> int:
    """Check ``value`` as ctypes would for ``argtype``, and return it as a plain integer."""
    try:
        argtype.from_param(value)
    except TypeError as exc:
        raise ctypes.ArgumentError(f"argument {index}: TypeError: {exc}") from None
    if argtype is ctypes.c_void_p:
        return _address(value)
    raw = value if isinstance(value, int) else getattr(value, "value", 0)
    return int(argtype(raw).value)


def _win32(name: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Give a double method the calling convention ctypes gives the real function."""
    _, _, argtypes = win32.SIGNATURES.get(name) or win32.EXTENSION_SIGNATURES[name]

    def decorate(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def call(self: Win32Double, *args: object) -> _T:
            if len(args) != len(argtypes):
                raise TypeError(f"{name} takes {len(argtypes)} arguments ({len(args)} given)")
            converted = [
                _convert(t, a, i) for i, (t, a) in enumerate(zip(argtypes, args, strict=True), 1)
            ]
            return method(self, *converted)

        return call

    return decorate


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object over the caller's descriptor that never closes it."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


def _views(buffers: list[tuple[int, int]]) -> list[memoryview]:
    return [memoryview((ctypes.c_ubyte * n).from_address(a)) for a, n in buffers if n]


@dataclass
class _Port:
    handle: int
    packets: deque[tuple[int, int, int, int]] = field(default_factory=deque)
    closed: bool = False


@dataclass
class _Handle:
    """What Windows keeps per socket handle: its port association, modes and accept state."""

    fd: int
    ino: int
    port: _Port | None = None
    key: int = 0
    modes: int = 0
    origin: str = ""  # "AcceptEx" / "ConnectEx": the context must be updated before use
    listener: int = -1
    updated: bool = True
    reset: bool = False  # Windows keeps failing with WSAECONNRESET; Linux reports it once


class _Op:
    """One overlapped operation in flight; ``attempt`` returns (NTSTATUS, bytes) or None."""

    kind = ""
    fails_at_once = True  # whether Windows can report this operation's failure synchronously

    def __init__(self, handle: _Handle, overlapped: int) -> None:
        self.handle = handle
        self.overlapped = overlapped
        self.port = handle.port
        self.key = handle.key
        self.cancel_requested = False
        # Memory the operation owns until it completes: (start, end, written by the op).
        self.ranges: list[tuple[int, int, bool]] = [
            (overlapped, overlapped + ctypes.sizeof(win32.OVERLAPPED), True)
        ]

    def target(self) -> tuple[int, int, str]:
        """The descriptor, the poll events it waits for, and its ordering lane."""
        raise NotImplementedError

    def attempt(self) -> tuple[int, int] | None:
        raise NotImplementedError

    def done_bytes(self) -> int:
        return 0

    def touches(self, handle: _Handle) -> bool:
        return self.handle is handle

    def failed(self, exc: OSError) -> int:
        status = _status_for(exc)
        if status == win32.STATUS_CONNECTION_RESET:
            self.handle.reset = True
        return status


class _Recv(_Op):
    kind = "WSARecv"

    def __init__(self, handle: _Handle, overlapped: int, buffers: list[tuple[int, int]]):
        super().__init__(handle, overlapped)
        self.ranges += [(a, a + n, True) for a, n in buffers if n]
        self.views = _views(buffers)

    def target(self) -> tuple[int, int, str]:
        return self.handle.fd, _POLLIN, "in"

    def attempt(self) -> tuple[int, int] | None:
        try:
            with _borrowed(self.handle.fd) as sock:
                if not self.views:  # a zero-byte read: completes once data or EOF is there
                    sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    return win32.STATUS_SUCCESS, 0
                received = sock.recvmsg_into(self.views, 0, socket.MSG_DONTWAIT)[0]
        except BlockingIOError:
            return None
        except OSError as exc:
            return self.failed(exc), 0
        if not received and self.handle.reset:
            return win32.STATUS_CONNECTION_RESET, 0
        return win32.STATUS_SUCCESS, received


def _send_some(fd: int, views: list[memoryview], done: int) -> int:
    """Send what is left after ``done`` bytes without blocking; the new total."""
    rest = []
    for view in views:
        if done >= len(view):
            done -= len(view)
            continue
        rest.append(view[done:])
        done = 0
    with _borrowed(fd) as sock:
        return sock.sendmsg(rest, [], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)


class _Send(_Op):
    kind = "WSASend"

    def __init__(self, handle: _Handle, overlapped: int, buffers: list[tuple[int, int]]):
        super().__init__(handle, overlapped)
        self.ranges += [(a, a + n, False) for a, n in buffers if n]
        self.views = _views(buffers)
        self.total = sum(len(v) for v in self.views)
        self.sent = 0

    def target(self) -> tuple[int, int, str]:
        return self.handle.fd, _POLLOUT, "out"

    def attempt(self) -> tuple[int, int] | None:
        if self.sent < self.total:
            try:
                self.sent += _send_some(self.handle.fd, self.views, self.sent)
            except BlockingIOError:
                return None
            except OSError as exc:
                return self.failed(exc), self.sent
        return (win32.STATUS_SUCCESS, self.total) if self.sent == self.total else None

    def done_bytes(self) -> int:
        return self.sent


class _Accept(_Op):
    kind = "AcceptEx"

    def __init__(
        self,
        listener: _Handle,
        accept: _Handle,
        overlapped: int,
        output: int,
        lengths: tuple[int, int, int],
    ) -> None:
        super().__init__(listener, overlapped)
        self.accept = accept
        self.output = output
        self.receive, self.local, self.remote = lengths
        self.ranges.append((output, output + sum(lengths), True))
        self.connected = False

    def target(self) -> tuple[int, int, str]:
        if self.connected:  # waiting for the first data on the new connection
            return self.accept.fd, _POLLIN, "in"
        return self.handle.fd, _POLLIN, "accept"

    def touches(self, handle: _Handle) -> bool:
        return handle is self.handle or handle is self.accept

    def attempt(self) -> tuple[int, int] | None:
        if not self.connected:
            try:
                with _borrowed(self.handle.fd) as listener:
                    connection, _ = listener.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                return _status_for(exc), 0
            with connection:
                os.dup2(connection.fileno(), self.accept.fd, inheritable=False)
                local, remote = connection.getsockname(), connection.getpeername()
            self.accept.ino = os.fstat(self.accept.fd).st_ino
            self.accept.origin, self.accept.listener = "AcceptEx", self.handle.fd
            self.accept.updated = False
            slot = self.output + self.receive
            _write_slot(slot, local)
            _write_slot(slot + self.local, remote)
            self.connected = True
        if not self.receive:
            return win32.STATUS_SUCCESS, 0
        data = memoryview((ctypes.c_ubyte * self.receive).from_address(self.output))
        try:
            with _borrowed(self.accept.fd) as sock:
                return win32.STATUS_SUCCESS, sock.recv_into(data, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            return _status_for(exc), 0


def _write_slot(slot: int, address: win32.SockAddress) -> None:
    storage, length = win32.sockaddr_from_address(address)
    ctypes.memmove(slot, _SLOT_HEADER.pack(length, _SLOT_MAGIC), _SLOT_HEADER.size)
    ctypes.memmove(slot + _SLOT_HEADER.size, ctypes.addressof(storage), length)


class _Connect(_Send):
    """Connect, then send the optional first buffer as a WSASend would."""

    kind = "ConnectEx"
    fails_at_once = False  # the handshake is always asynchronous on Windows

    def __init__(
        self,
        handle: _Handle,
        overlapped: int,
        first_data: list[tuple[int, int]],
        early: tuple[int, int] | None,
    ):
        super().__init__(handle, overlapped, first_data)
        self.early = early  # a failure already known; Windows reports it on completion
        self.connected = False

    def attempt(self) -> tuple[int, int] | None:
        if self.early is not None:
            return self.early
        if not self.connected:
            with _borrowed(self.handle.fd) as sock:
                failure = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if failure:  # reading SO_ERROR clears it: keep the outcome for the next attempt
                self.early = _status_for(OSError(failure, os.strerror(failure))), 0
                return self.early
            self.connected = True
            self.handle.origin, self.handle.updated = "ConnectEx", False
        return super().attempt()


def _connection_error(handle: _Handle) -> int:
    """The WSA error a recv/send fails with at once: never connected, or reset (0 if usable).

    Linux forgets the peer after a reset (getpeername fails, then reads see EOF) where Windows
    keeps failing with WSAECONNRESET, so the reset is remembered on the handle.
    """
    if handle.reset:
        return win32.WSAECONNRESET
    with _borrowed(handle.fd) as sock:
        try:
            sock.getpeername()
            return 0
        except OSError:
            pass
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as exc:
            code = _WSA_ERROR_FOR_ERRNO.get(exc.errno or 0, win32.WSAENOTCONN)
            handle.reset = code == win32.WSAECONNRESET
            return code
    return 0


def _ready(op: _Op) -> bool:
    fd, events, _ = op.target()
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(0))


def _socket_state(fd: int) -> tuple[int, bool, bool]:
    """(bound port, connected, listening) of a descriptor."""
    with _borrowed(fd) as sock:
        port = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else 0
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        try:
            sock.getpeername()
        except OSError:
            return port, False, listening
    return port, True, listening


class Win32Double:
    """``Win32Api`` on Linux sockets; see the module docstring for what it does and cannot do."""

    AcceptEx: Callable[..., int]
    GetAcceptExSockaddrs: Callable[..., None]
    ConnectEx: Callable[..., int]

    def __init__(
        self, seed: int = 0, immediate_rate: float = 0.3, cancel_race_rate: float = 0.1
    ) -> None:
        self.violations: list[str] = []
        self.immediate_rate = immediate_rate
        self.cancel_race_rate = cancel_race_rate
        self._issue_rng = random.Random(seed)
        self._race_rng = random.Random(seed + 1)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._errors = threading.local()
        self._ports: dict[int, _Port] = {}
        self._port_handles = itertools.count(0x40000000, 4)  # beyond any descriptor number
        self._handles: dict[int, _Handle] = {}
        self._ops: list[_Op] = []
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="iocp-double", daemon=True)
        self._thread.start()

    # -- lifecycle and test hooks --------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine and close every port; pending operations are abandoned."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for port in self._ports.values():
                port.closed = True
            self._ports.clear()
            self._cond.notify_all()
        self._wake()
        self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._thread.is_alive():
            raise RuntimeError("the IOCP double's engine thread did not stop")

    def __enter__(self) -> Win32Double:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def assert_no_violations(self) -> None:
        if self.violations:
            raise AssertionError("IOCP driver violations:\n" + "\n".join(self.violations))

    def get_last_error(self) -> int:
        return int(getattr(self._errors, "code", 0))

    # -- kernel32 / ntdll ------------------------------------------------------------------------

    @_win32("CreateIoCompletionPort")
    def CreateIoCompletionPort(
        self, file_handle: int, existing: int, key: int, threads: int
    ) -> int | None:
        with self._lock:
            if file_handle == win32.INVALID_HANDLE_VALUE:
                if existing:
                    return self._fail(win32.ERROR_INVALID_PARAMETER, None)
                return self._new_port().handle
            handle = self._lookup(file_handle)
            if handle is None:
                return self._fail(win32.ERROR_INVALID_HANDLE, None)
            if handle.port is not None:
                return self._fail(win32.ERROR_INVALID_PARAMETER, None)
            port = self._ports.get(existing) if existing else self._new_port()
            if port is None:
                return self._fail(win32.ERROR_INVALID_HANDLE, None)
            handle.port, handle.key = port, key
            return port.handle

    @_win32("GetQueuedCompletionStatusEx")
    def GetQueuedCompletionStatusEx(
        self, port_handle: int, entries: int, count: int, removed: int, ms: int, alertable: int
    ) -> int:
        deadline = None if ms == win32.INFINITE else time.monotonic() + ms / 1000
        with self._cond:
            port = self._ports.get(port_handle)
            if port is None:
                return self._fail(win32.ERROR_INVALID_HANDLE, win32.FALSE)
            if not entries or not removed or not count:
                self.violations.append("GetQueuedCompletionStatusEx without entries or count")
                return self._fail(win32.ERROR_INVALID_PARAMETER, win32.FALSE)
            while not port.packets:
                if port.closed:
                    return self._fail(win32.ERROR_ABANDONED_WAIT_0, win32.FALSE)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    win32.ULONG.from_address(removed).value = 0
                    return self._fail(win32.WAIT_TIMEOUT, win32.FALSE)
                self._cond.wait(remaining)
            taken = min(count, len(port.packets))
            size = ctypes.sizeof(win32.OVERLAPPED_ENTRY)
            for index in range(taken):
                key, overlapped, status, transferred = port.packets.popleft()
                entry = win32.OVERLAPPED_ENTRY.from_address(entries + index * size)
                entry.lpCompletionKey, entry.lpOverlapped = key, overlapped or None
                entry.Internal, entry.dwNumberOfBytesTransferred = status, transferred
            win32.ULONG.from_address(removed).value = taken
            return win32.TRUE

    @_win32("PostQueuedCompletionStatus")
    def PostQueuedCompletionStatus(
        self, port_handle: int, transferred: int, key: int, overlapped: int
    ) -> int:
        with self._cond:
            port = self._ports.get(port_handle)
            if port is None:  # never made, or closed: its queued packets went with it
                return self._fail(win32.ERROR_INVALID_HANDLE, win32.FALSE)
            if overlapped and any(op.overlapped == overlapped for op in self._ops):
                # Windows delivers it all the same (the value is never dereferenced), and its
                # owner would take the operation as finished while it still writes memory.
                self.violations.append(
                    "PostQueuedCompletionStatus with the OVERLAPPED of a pending operation"
                )
            port.packets.append((key, overlapped, win32.STATUS_SUCCESS, transferred))
            self._cond.notify_all()
            return win32.TRUE

    @_win32("CancelIoEx")
    def CancelIoEx(self, file_handle: int, overlapped: int) -> int:
        with self._lock:
            handle = self._lookup(file_handle)
            if handle is None:
                return self._fail(win32.ERROR_INVALID_HANDLE, win32.FALSE)
            found = [
                op for op in self._ops if op.handle is handle and overlapped in (0, op.overlapped)
            ]
            if not found:
                return self._fail(win32.ERROR_NOT_FOUND, win32.FALSE)
            for op in found:
                op.cancel_requested = True
        self._wake()
        return win32.TRUE

    @_win32("CloseHandle")
    def CloseHandle(self, handle: int) -> int:
        with self._cond:
            port = self._ports.pop(handle, None)
            if port is None:
                return self._fail(win32.ERROR_INVALID_HANDLE, win32.FALSE)
            port.closed = True
            port.packets.clear()
            self._cond.notify_all()
            return win32.TRUE

    @_win32("SetFileCompletionNotificationModes")
    def SetFileCompletionNotificationModes(self, file_handle: int, flags: int) -> int:
        with self._lock:
            handle = self._lookup(file_handle)
            if handle is None:
                return self._fail(win32.ERROR_INVALID_HANDLE, win32.FALSE)
            handle.modes |= flags  # a mode once set cannot be removed
            return win32.TRUE

    @_win32("RtlNtStatusToDosError")
    def RtlNtStatusToDosError(self, status: int) -> int:
        return _DOS_ERROR_FOR_STATUS.get(status & 0xFFFFFFFF, win32.ERROR_MR_MID_NOT_FOUND)

    # -- ws2_32 ----------------------------------------------------------------------------------

    @_win32("WSAGetLastError")
    def WSAGetLastError(self) -> int:
        return self.get_last_error()

    @_win32("WSAIoctl")
    def WSAIoctl(
        self,
        s: int,
        code: int,
        in_buffer: int,
        in_size: int,
        out_buffer: int,
        out_size: int,
        returned: int,
        overlapped: int,
        routine: int,
    ) -> int:
        with self._lock:
            if self._lookup(s) is None:
                return self._fail(win32.WSAENOTSOCK, win32.SOCKET_ERROR)
            if code != win32.SIO_GET_EXTENSION_FUNCTION_POINTER:
                return self._fail(win32.WSAEINVAL, win32.SOCKET_ERROR)
            pointer_size = ctypes.sizeof(ctypes.c_void_p)
            if not in_buffer or in_size != 16 or not out_buffer or out_size < pointer_size:
                return self._fail(win32.WSAEFAULT, win32.SOCKET_ERROR)
            wanted = str(uuid.UUID(bytes_le=ctypes.string_at(in_buffer, 16)))
            extensions = {g: name for name, (g, _, _) in win32.EXTENSION_SIGNATURES.items()}
            name = extensions.get(wanted)
            if name is None:  # DisconnectEx and the others are not emulated
                return self._fail(win32.WSAEINVAL, win32.SOCKET_ERROR)
            setattr(self, name, getattr(self, "_" + name))
            ctypes.c_void_p.from_address(out_buffer).value = _EXTENSION_TOKENS[name]
            if returned:
                win32.DWORD.from_address(returned).value = pointer_size
            return 0

    @_win32("setsockopt")
    def setsockopt(self, s: int, level: int, name: int, value: int, length: int) -> int:
        with self._lock:
            handle = self._lookup(s)
            if handle is None:
                return self._fail(win32.WSAENOTSOCK, win32.SOCKET_ERROR)
            update = {
                win32.SO_UPDATE_ACCEPT_CONTEXT: "AcceptEx",
                win32.SO_UPDATE_CONNECT_CONTEXT: "ConnectEx",
            }
            if level == win32.SOL_SOCKET and name in update:
                if handle.origin != update[name]:
                    return self._fail(win32.WSAEINVAL, win32.SOCKET_ERROR)
                if update[name] == "AcceptEx":
                    if not value or length != ctypes.sizeof(win32.SOCKET):
                        return self._fail(win32.WSAEFAULT, win32.SOCKET_ERROR)
                    listener = win32.SOCKET.from_address(value).value
                    if listener != handle.listener:
                        self.violations.append(
                            f"SO_UPDATE_ACCEPT_CONTEXT on socket {s} names socket {listener},"
                            f" not its listening socket {handle.listener}"
                        )
                        return self._fail(win32.WSAEINVAL, win32.SOCKET_ERROR)
                handle.updated = True
                return 0
            if level == win32.IPPROTO_TCP and name == win32.TCP_NODELAY and value and length:
                raw = ctypes.string_at(value, min(length, 4))
                with _borrowed(s) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(any(raw)))
                return 0
            return self._fail(win32.WSAENOPROTOOPT, win32.SOCKET_ERROR)

    @_win32("WSARecv")
    def WSARecv(
        self,
        s: int,
        buffers: int,
        count: int,
        received: int,
        flags: int,
        overlapped: int,
        routine: int,
    ) -> int:
        with self._lock:
            handle = self._claim(s, overlapped, routine, "WSARecv")
            if isinstance(handle, int):
                return self._fail(handle, win32.SOCKET_ERROR)
            if not flags:
                self.violations.append("WSARecv without lpFlags")
                return self._fail(win32.WSAEFAULT, win32.SOCKET_ERROR)
            if win32.DWORD.from_address(flags).value:
                self.violations.append("WSARecv flags are not emulated (the driver passes 0)")
                return self._fail(win32.WSAEOPNOTSUPP, win32.SOCKET_ERROR)
            spans = self._transfer_spans(handle, buffers, count, "WSARecv")
            if isinstance(spans, int):
                return self._fail(spans, win32.SOCKET_ERROR)
            op = _Recv(handle, overlapped, spans)
            return self._start(op, received, flags, win32.SOCKET_ERROR)

    @_win32("WSASend")
    def WSASend(
        self,
        s: int,
        buffers: int,
        count: int,
        sent: int,
        flags: int,
        overlapped: int,
        routine: int,
    ) -> int:
        with self._lock:
            handle = self._claim(s, overlapped, routine, "WSASend")
            if isinstance(handle, int):
                return self._fail(handle, win32.SOCKET_ERROR)
            if flags:
                self.violations.append("WSASend flags are not emulated (the driver passes 0)")
                return self._fail(win32.WSAEOPNOTSUPP, win32.SOCKET_ERROR)
            spans = self._transfer_spans(handle, buffers, count, "WSASend")
            if isinstance(spans, int):
                return self._fail(spans, win32.SOCKET_ERROR)
            if any(op.kind == "WSASend" and op.handle is handle for op in self._ops):
                self.violations.append(f"two WSASend pending on socket {s}")
            op = _Send(handle, overlapped, spans)
            return self._start(op, sent, 0, win32.SOCKET_ERROR)

    # -- mswsock extensions (bound by the WSAIoctl lookup, as load() binds them) -----------------

    @_win32("AcceptEx")
    def _AcceptEx(
        self,
        listen: int,
        accept: int,
        output: int,
        receive: int,
        local: int,
        remote: int,
        received: int,
        overlapped: int,
    ) -> int:
        with self._lock:
            listener, acceptor = self._lookup(listen), self._lookup(accept)
            if listener is None or acceptor is None:
                return self._fail(win32.WSAENOTSOCK, win32.FALSE)
            refused = self._refuse(listener, overlapped, 0, "AcceptEx")
            if refused:
                return self._fail(refused, win32.FALSE)
            port, connected, _ = _socket_state(accept)
            with _borrowed(listen) as lsock, _borrowed(accept) as asock:
                same_kind = (lsock.family, lsock.type) == (asock.family, asock.type)
                family = lsock.family
            if not _socket_state(listen)[2] or port or connected or not same_kind:
                return self._fail(win32.WSAEINVAL, win32.FALSE)
            sockaddr = win32.sockaddr_in6 if family == socket.AF_INET6 else win32.sockaddr_in
            needed = ctypes.sizeof(sockaddr) + _SLOT_HEADER.size
            if not output or local < needed or remote < needed:
                return self._fail(win32.WSAEFAULT, win32.FALSE)
            if any(op.touches(acceptor) for op in self._ops):
                self.violations.append(f"accept socket {accept} is already in a pending operation")
                return self._fail(win32.WSAEINVAL, win32.FALSE)
            op = _Accept(listener, acceptor, overlapped, output, (receive, local, remote))
            return self._start(op, received, 0, win32.FALSE)

    @_win32("GetAcceptExSockaddrs")
    def _GetAcceptExSockaddrs(
        self,
        output: int,
        receive: int,
        local: int,
        remote: int,
        local_sockaddr: int,
        local_length: int,
        remote_sockaddr: int,
        remote_length: int,
    ) -> None:
        slots = (
            (output + receive, local, local_sockaddr, local_length),
            (output + receive + local, remote, remote_sockaddr, remote_length),
        )
        for slot, size, pointer_out, length_out in slots:
            if not (pointer_out and length_out):
                self.violations.append("GetAcceptExSockaddrs needs all four output pointers")
                return
            length, magic = _SLOT_HEADER.unpack(ctypes.string_at(slot, _SLOT_HEADER.size))
            sockaddr: int | None = slot + _SLOT_HEADER.size
            if magic != _SLOT_MAGIC or length + _SLOT_HEADER.size > size:
                self.violations.append(
                    "GetAcceptExSockaddrs on a buffer AcceptEx did not fill with these lengths"
                )
                sockaddr, length = None, 0
            ctypes.c_void_p.from_address(pointer_out).value = sockaddr
            ctypes.c_int32.from_address(length_out).value = length

    @_win32("ConnectEx")
    def _ConnectEx(
        self,
        s: int,
        name: int,
        name_length: int,
        first: int,
        first_length: int,
        sent: int,
        overlapped: int,
    ) -> int:
        with self._lock:
            handle = self._claim(s, overlapped, 0, "ConnectEx")
            if isinstance(handle, int):
                return self._fail(handle, win32.FALSE)
            port, connected, listening = _socket_state(s)
            if not port or listening:
                return self._fail(win32.WSAEINVAL, win32.FALSE)
            if connected:
                return self._fail(win32.WSAEISCONN, win32.FALSE)
            try:
                address = win32.sockaddr_to_address(name, name_length) if name else None
            except ValueError:
                address = None
            if address is None:
                return self._fail(win32.WSAEFAULT, win32.FALSE)
            with _borrowed(s) as sock:
                if (sock.family == socket.AF_INET6) != (len(address) == 4):
                    return self._fail(win32.WSAEAFNOSUPPORT, win32.FALSE)
                was_blocking = os.get_blocking(s)
                os.set_blocking(s, False)
                try:
                    failure = sock.connect_ex(address)
                finally:
                    os.set_blocking(s, was_blocking)
            early = None
            if failure not in (0, errno.EINPROGRESS):
                early = _status_for(OSError(failure, os.strerror(failure))), 0
            spans = [(first, first_length)] if first and first_length else []
            op = _Connect(handle, overlapped, spans, early)
            return self._start(op, sent, 0, win32.FALSE)

    # -- internals (the lock is held) ------------------------------------------------------------

    def _fail(self, code: int, result: _T) -> _T:
        self._errors.code = code
        return result

    def _new_port(self) -> _Port:
        port = _Port(next(self._port_handles))
        self._ports[port.handle] = port
        return port

    def _lookup(self, fd: int) -> _Handle | None:
        """The handle record of a live socket descriptor; a reused number starts afresh."""
        try:
            info = os.fstat(fd)
        except (OSError, OverflowError):
            return None
        if not stat.S_ISSOCK(info.st_mode):
            return None
        handle = self._handles.get(fd)
        if handle is not None and handle.ino != info.st_ino:
            self._forget(handle)
            handle = None
        if handle is None:
            handle = self._handles[fd] = _Handle(fd, info.st_ino)
        return handle

    def _forget(self, handle: _Handle) -> None:
        """The socket was closed: its operations end as closesocket ends them on Windows."""
        if self._handles.get(handle.fd) is handle:
            del self._handles[handle.fd]
        for op in [op for op in self._ops if op.touches(handle)]:
            self._complete(op, win32.STATUS_CANCELLED, op.done_bytes())

    def _claim(self, s: int, overlapped: int, routine: int, function: str) -> _Handle | int:
        """The handle of socket ``s`` for an overlapped call, or the WSA error refusing it."""
        handle = self._lookup(s)
        if handle is None:
            return win32.WSAENOTSOCK
        return self._refuse(handle, overlapped, routine, function) or handle

    def _refuse(self, handle: _Handle, overlapped: int, routine: int, function: str) -> int:
        """The WSA error for a call the double cannot accept (0 if acceptable)."""
        if not overlapped:
            self.violations.append(f"{function} without an OVERLAPPED would block")
            return win32.WSAEINVAL
        if routine:
            self.violations.append(f"{function} with a completion routine (IOCP uses none)")
            return win32.WSAEINVAL
        for op in self._ops:
            if op.overlapped == overlapped:
                self.violations.append(
                    f"OVERLAPPED {overlapped:#x} reused by {function} while its {op.kind}"
                    " is pending"
                )
                return win32.WSAEINVAL
        if handle.port is None:
            self.violations.append(
                f"{function} on socket {handle.fd}, which has no completion port"
            )
        return 0

    def _check_context(self, handle: _Handle, function: str) -> None:
        if not handle.updated:
            option = "ACCEPT" if handle.origin == "AcceptEx" else "CONNECT"
            self.violations.append(
                f"{function} on socket {handle.fd} from {handle.origin} before"
                f" setsockopt(SO_UPDATE_{option}_CONTEXT)"
            )

    def _transfer_spans(
        self, handle: _Handle, buffers: int, count: int, function: str
    ) -> list[tuple[int, int]] | int:
        """The buffers of a WSARecv or WSASend on a usable connection, or the WSA error refusing
        the call; a call before SO_UPDATE_*_CONTEXT is recorded as a violation."""
        spans = self._wsabufs(buffers, count)
        if spans is None:
            return win32.WSAEFAULT
        unusable = _connection_error(handle)
        if unusable:
            return unusable
        self._check_context(handle, function)
        return spans

    def _wsabufs(self, buffers: int, count: int) -> list[tuple[int, int]] | None:
        """The (address, length) spans of a WSABUF array, captured at call time."""
        if count and not buffers:
            return None
        array = (win32.WSABUF * count).from_address(buffers) if count else ()
        spans = [(b.buf or 0, b.len) for b in array]
        return None if any(n and not a for a, n in spans) else spans

    def _start(self, op: _Op, count_out: int, flags_out: int, failure: int) -> int:
        """Queue ``op``, or complete it at once at the seeded rate when it can."""
        for start, end, writes in op.ranges:
            for other in self._ops:
                for o_start, o_end, o_writes in other.ranges:
                    if start < o_end and o_start < end and (writes or o_writes):
                        self.violations.append(
                            f"{op.kind} uses memory {start:#x}..{end:#x} still owned by a"
                            f" pending {other.kind}"
                        )
        overlapped = win32.OVERLAPPED.from_address(op.overlapped)
        overlapped.Internal, overlapped.InternalHigh = win32.STATUS_PENDING, 0
        self._ops.append(op)
        if self._issue_rng.random() < self.immediate_rate and op in self._heads() and _ready(op):
            result = op.attempt()
            if result is not None and (result[0] == win32.STATUS_SUCCESS or op.fails_at_once):
                status, transferred = result
                self._ops.remove(op)
                overlapped.Internal, overlapped.InternalHigh = status, transferred
                if status != win32.STATUS_SUCCESS:
                    code = _WSA_ERROR_FOR_STATUS.get(status, win32.WSAECONNABORTED)
                    return self._fail(code, failure)
                if count_out:
                    win32.DWORD.from_address(count_out).value = transferred
                if flags_out:
                    win32.DWORD.from_address(flags_out).value = 0
                if not op.handle.modes & win32.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS:
                    self._post(op, status, transferred)
                return 0 if failure == win32.SOCKET_ERROR else win32.TRUE
        self._wake()
        return self._fail(win32.ERROR_IO_PENDING, failure)

    def _heads(self) -> list[_Op]:
        """Operations first in their lane: only these may progress (issue order per socket)."""
        seen: set[tuple[int, str]] = set()
        heads = []
        for op in self._ops:
            fd, _, lane = op.target()
            if (fd, lane) not in seen:
                seen.add((fd, lane))
                heads.append(op)
        return heads

    def _complete(self, op: _Op, status: int, transferred: int) -> None:
        self._ops.remove(op)
        overlapped = win32.OVERLAPPED.from_address(op.overlapped)
        overlapped.Internal, overlapped.InternalHigh = status, transferred
        self._post(op, status, transferred)

    def _post(self, op: _Op, status: int, transferred: int) -> None:
        if op.port is not None and not op.port.closed:
            op.port.packets.append((op.key, op.overlapped, status, transferred))
            self._cond.notify_all()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    # -- the engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                try:
                    self._advance()
                except Exception as exc:  # a bug of the double: make it loud, stop cleanly
                    self.violations.append(f"IOCP double engine failed: {exc!r}")
                    for port in self._ports.values():
                        port.closed = True
                    self._cond.notify_all()
                    return
                poller = select.poll()
                poller.register(self._wake_r, _POLLIN)
                for op in self._heads():
                    fd, events, _ = op.target()
                    poller.register(fd, events)
            poller.poll(_TICK_MS)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass

    def _advance(self) -> None:
        for handle in list(self._handles.values()):
            try:
                alive = os.fstat(handle.fd).st_ino == handle.ino
            except OSError:
                alive = False
            if not alive:
                self._forget(handle)
        for op in [op for op in self._ops if op.cancel_requested]:
            result = None
            if isinstance(op, _Recv) and self._race_rng.random() < self.cancel_race_rate:
                result = op.attempt() if _ready(op) else None
            if result is None or result[0] != win32.STATUS_SUCCESS:
                result = win32.STATUS_CANCELLED, op.done_bytes()
            self._complete(op, *result)
        progressed = True
        while progressed:
            progressed = False
            for op in self._heads():
                result = op.attempt() if _ready(op) else None
                if result is not None:
                    self._complete(op, *result)
                    progressed = True


def make_double(
    seed: int = 0, immediate_rate: float = 0.3, cancel_race_rate: float = 0.1
) -> Win32Double:
    """A running double with its extensions looked up through WSAIoctl, as ``load()`` does."""
    double = Win32Double(seed, immediate_rate, cancel_race_rate)
    try:
        with socket.socket() as lookup:
            for guid_text, _, _ in win32.EXTENSION_SIGNATURES.values():
                win32.get_extension_pointer(double, lookup.fileno(), guid_text)
    except BaseException:
        double.close()
        raise
    return double
