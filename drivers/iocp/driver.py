"""The ``iocp`` driver: the proactor base on Windows I/O completion ports, through ctypes.

Every Win32 call goes through a ``win32.Win32Api`` object (``win32.load()`` on Windows), so the
same code runs on Linux against the double in ``tests/iocp_double`` (see ``docs/iocp.md``).

* One completion port; each socket is associated with it (``CreateIoCompletionPort``) before
  its first operation, with a constant completion key: a packet is identified by its
  OVERLAPPED address, which is the operation's key in the base's registry.
* Accept: ``accepts_per_listener`` ``AcceptEx`` pending per listening socket, each on a
  pre-created socket of the listener's family and with its own 2 x (sizeof(sockaddr_in6) +
  16) output buffer. On completion the accepted socket gets ``SO_UPDATE_ACCEPT_CONTEXT``
  (naming the listening SOCKET) before anything else touches it; the addresses come from
  ``GetAcceptExSockaddrs``.
* Receive: ``WSARecv`` into the connection's buffer (flags DWORD passed by pointer). Send:
  ``WSASend`` of a WSABUF array built over the core's buffers as they are (flags by value).
* Connect: ``ConnectEx`` (its pointer looked up with ``WSAIoctl``, as AcceptEx's) on a socket
  bound first to the wildcard address, port 0, as ConnectEx requires, and associated with the
  port; on completion ``SO_UPDATE_CONNECT_CONTEXT`` before anything else touches it (without
  it getpeername, getsockname and shutdown fail). TCP only: CPython's socket module has no
  AF_UNIX on Windows (https://github.com/python/cpython/issues/77589), and ConnectEx with a
  ``sockaddr_un`` needs workarounds (https://github.com/libuv/libuv/pull/4636).
* Cancel: ``CancelIoEx(socket, OVERLAPPED)``. Wait: ``GetQueuedCompletionStatusEx`` reaping up
  to ``ENTRIES`` packets per call. Wake-ups: ``PostQueuedCompletionStatus`` of a packet without
  an OVERLAPPED, which the registry ignores.

Every OVERLAPPED, WSABUF array, data buffer, flags DWORD and AcceptEx buffer is referenced by
its operation (``op.keep``) and so by the registry until its packet is dequeued, also after
``CancelIoEx``: a cancelled operation still delivers a packet, and may even have succeeded.

``FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`` is deliberately not set, so an operation that
succeeds at once still queues its packet. That keeps one completion path (a post hook never
has a result to deliver itself, and an operation leaves the registry only when its packet is
dequeued), and the mode is documented as unsafe for sockets when a non-IFS Layered Service
Provider is installed, which would have to be detected first. The price is one more entry in
a batched dequeue per immediate completion.

Ctrl-C: Python runs signal handlers on the main thread between bytecodes, and a ctypes call
blocked in ``GetQueuedCompletionStatusEx`` never returns to the interpreter. When the loop
runs on the main thread its waits are therefore cut into slices of ``SIGNAL_SLICE`` seconds,
after which a pending handler runs and its ``stop()`` posts a wake-up packet.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import math
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from spcore.server import Server

from ..pinned import pin
from ..proactor import Acceptor, Buffer, Completion, Link, Operation, ProactorBase
from . import win32

__all__ = ["ENTRIES", "SIGNAL_SLICE", "IocpDriver"]

log = logging.getLogger("spcore.driver")

#: Completion packets reaped per GetQueuedCompletionStatusEx call.
ENTRIES = 256
#: The longest wait, in seconds, when the loop runs on the main thread (see the docstring).
SIGNAL_SLICE = 0.1
#: The completion key of every socket (packets are told apart by their OVERLAPPED).
_SOCKET_KEY = 1
#: The completion key of wake-up packets (they carry no OVERLAPPED).
_WAKE_KEY = 0
#: Each AcceptEx address slot: the largest sockaddr (sockaddr_in6) plus 16 bytes.
_SLOT = win32.ACCEPT_ADDRESS_LENGTH
#: WSABUFs per WSASend, and bytes per WSASend (a WSABUF length and the byte count of a
#: completion are 32-bit).
_MAX_WSABUFS = 1024
_MAX_SEND = 1 << 30
#: Completion errors of an AcceptEx whose client went away before it completed: that
#: concerns one connection only, like accept(2)'s ECONNABORTED, and the accept is re-posted.
_ACCEPT_ABORTS = frozenset(
    {
        win32.ERROR_NETNAME_DELETED,
        win32.ERROR_CONNECTION_ABORTED,
        win32.WSAECONNRESET,
        win32.WSAECONNABORTED,
    }
)
#: Errors of a connect that failed, as the exceptions the socket module would raise.
_CONNECT_ERRORS = {
    win32.ERROR_CONNECTION_REFUSED: (ConnectionRefusedError, errno.ECONNREFUSED),
    win32.WSAECONNREFUSED: (ConnectionRefusedError, errno.ECONNREFUSED),
    win32.ERROR_NETWORK_UNREACHABLE: (OSError, errno.ENETUNREACH),
    win32.WSAENETUNREACH: (OSError, errno.ENETUNREACH),
    win32.ERROR_HOST_UNREACHABLE: (OSError, errno.EHOSTUNREACH),
    win32.WSAEHOSTUNREACH: (OSError, errno.EHOSTUNREACH),
    win32.ERROR_SEM_TIMEOUT: (TimeoutError, errno.ETIMEDOUT),
    win32.WSAETIMEDOUT: (TimeoutError, errno.ETIMEDOUT),
}
#: Errors that end a connection as a reset.
_RESETS = frozenset(
    {
        win32.ERROR_NETNAME_DELETED,
        win32.ERROR_CONNECTION_ABORTED,
        win32.ERROR_OPERATION_ABORTED,
        win32.WSAECONNRESET,
    }
)


class AcceptSocket(socket.socket):
    """A socket pre-created for AcceptEx. Once connected it answers ``getsockname`` and
    ``getpeername`` with the addresses GetAcceptExSockaddrs read from the AcceptEx buffer,
    which Windows already delivered with the connection."""

    local: win32.SockAddress | None = None
    peer: win32.SockAddress | None = None

    def getsockname(self) -> Any:
        return self.local if self.local is not None else super().getsockname()

    def getpeername(self) -> Any:
        return self.peer if self.peer is not None else super().getpeername()


class _AcceptBlock:
    """What one AcceptEx hands to Windows: the accept socket, the output buffer, the
    bytes-received DWORD and the OVERLAPPED."""

    __slots__ = ("output", "overlapped", "received", "sock")

    def __init__(self, sock: AcceptSocket) -> None:
        self.sock = sock
        self.output = ctypes.create_string_buffer(2 * _SLOT)
        self.received = win32.DWORD()
        self.overlapped = win32.OVERLAPPED()


class IocpDriver(ProactorBase):
    """The proactor base on an I/O completion port; ``api`` defaults to ``win32.load()``."""

    name = "iocp"
    connects = True
    #: AcceptEx is single-shot: several pending take a burst of connections without waiting
    #: for the loop to post the next one.
    accepts_per_listener = 8

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return win32.probe()

    def __init__(self, server: Server, *, api: win32.Win32Api | None = None) -> None:
        self._api = win32.load() if api is None else api
        super().__init__(server)
        self._port: int | None = None
        # wake() must never post to a closed (and maybe reused) handle. Re-entrant: a signal
        # handler calling stop() may interrupt the loop thread while it holds the lock.
        self._port_lock = threading.RLock()
        self._entries = (win32.OVERLAPPED_ENTRY * ENTRIES)()
        self._removed = win32.ULONG()
        self._slice_ms: int | None = None

    # -- resources --------------------------------------------------------------------------------

    def _open(self) -> None:
        port = self._api.CreateIoCompletionPort(win32.INVALID_HANDLE_VALUE, None, 0, 0)
        if not port:
            raise win32.Win32Error("CreateIoCompletionPort", self._api.get_last_error())
        with self._port_lock:
            self._port = port
        for bound in self.bound:
            self._associate(bound.sock)
        if threading.current_thread() is threading.main_thread():
            self._slice_ms = math.ceil(SIGNAL_SLICE * 1000)

    def _close_resources(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
            if port is not None and not self._api.CloseHandle(port):
                log.warning(
                    "CloseHandle(port) failed: Windows error %d", self._api.get_last_error()
                )

    def wake(self) -> None:
        with self._port_lock:
            if self._port is not None:
                self._api.PostQueuedCompletionStatus(self._port, 0, _WAKE_KEY, None)

    def _associate(self, sock: socket.socket) -> None:
        """Send the packets of ``sock``'s operations to our port."""
        if (
            self._api.CreateIoCompletionPort(sock.fileno(), self._port, _SOCKET_KEY, 0)
            != self._port
        ):
            raise win32.Win32Error("CreateIoCompletionPort", self._api.get_last_error())

    def _failure(self, rc: int, success: int) -> int:
        """0 if an overlapped call was queued or completed at once (a packet follows either
        way), else its Windows error (and no packet follows)."""
        if rc == success:
            return 0
        code = self._api.get_last_error()
        return 0 if code == win32.ERROR_IO_PENDING else code

    # -- accept -----------------------------------------------------------------------------------

    def _post_accept(self, op: Operation[Acceptor]) -> None:
        listener = op.owner.bound.sock
        sock = AcceptSocket(listener.family, listener.type, listener.proto)
        try:
            try:
                self._associate(sock)
            except win32.Win32Error as exc:
                raise self._error(-exc.winerror) from exc
            block = _AcceptBlock(sock)
            code = self._accept_ex(op.owner.fd, block)
            if code:  # (WSAECONNRESET: its client reset first; the core pauses only briefly)
                raise self._error(-code)
        except BaseException:
            sock.close()
            raise
        op.key = ctypes.addressof(block.overlapped)
        op.keep = block

    def _accept_ex(self, listening: int, block: _AcceptBlock) -> int:
        """Post AcceptEx; 0 or the Windows error it failed with at once."""
        rc = self._api.AcceptEx(
            listening,
            block.sock.fileno(),
            block.output,
            0,  # no data: complete as soon as the connection is there
            _SLOT,
            _SLOT,
            ctypes.byref(block.received),
            ctypes.byref(block.overlapped),
        )
        return self._failure(rc, win32.TRUE)

    def _accepted_socket(self, op: Operation[Acceptor], result: int) -> socket.socket:
        block = op.keep
        assert isinstance(block, _AcceptBlock)
        sock = block.sock
        try:
            listening = win32.SOCKET(op.owner.fd)
            rc = self._api.setsockopt(
                sock.fileno(),
                win32.SOL_SOCKET,
                win32.SO_UPDATE_ACCEPT_CONTEXT,
                ctypes.byref(listening),
                ctypes.sizeof(listening),
            )
            if rc == win32.SOCKET_ERROR:
                raise self._error(-self._api.get_last_error())
            sock.local, sock.peer = self._accept_addresses(block)
        except BaseException:
            sock.close()
            raise
        return sock

    def _accept_addresses(self, block: _AcceptBlock) -> tuple[win32.SockAddress, win32.SockAddress]:
        """(local, peer) from the AcceptEx output buffer."""
        local, local_length = ctypes.c_void_p(), ctypes.c_int32()
        remote, remote_length = ctypes.c_void_p(), ctypes.c_int32()
        self._api.GetAcceptExSockaddrs(
            block.output,
            0,
            _SLOT,
            _SLOT,
            ctypes.byref(local),
            ctypes.byref(local_length),
            ctypes.byref(remote),
            ctypes.byref(remote_length),
        )
        if not (local.value and remote.value):
            raise OSError(errno.EINVAL, "GetAcceptExSockaddrs found no addresses")
        try:
            return (
                win32.sockaddr_to_address(local.value, local_length.value),
                win32.sockaddr_to_address(remote.value, remote_length.value),
            )
        except ValueError as exc:
            raise OSError(errno.EAFNOSUPPORT, str(exc)) from exc

    def _release_accept(self, op: Operation[Acceptor]) -> None:
        block = op.keep
        assert isinstance(block, _AcceptBlock)
        block.sock.close()

    # -- receive and send -------------------------------------------------------------------------

    def _post_recv(self, op: Operation[Link]) -> None:
        link = op.owner
        buffer = link.buffer
        buffers = (win32.WSABUF * 1)(win32.WSABUF(buffer.size, buffer.address))
        flags = win32.DWORD(0)
        overlapped = win32.OVERLAPPED()
        rc = self._api.WSARecv(
            link.fd, buffers, 1, None, ctypes.byref(flags), ctypes.byref(overlapped), None
        )
        if code := self._failure(rc, 0):
            raise self._error(-code)
        op.key = ctypes.addressof(overlapped)
        op.keep = (overlapped, buffers, flags, buffer)

    def _post_send(self, op: Operation[Link], buffers: Sequence[Buffer]) -> None:
        batch = list(itertools.islice(buffers, _MAX_WSABUFS))
        wsabufs = (win32.WSABUF * len(batch))()
        keepers = []
        count = total = 0
        for slot, buf in zip(wsabufs, batch, strict=True):
            address, length, keeper = pin(buf)
            length = min(length, _MAX_SEND - total)
            slot.len, slot.buf = length, address or None
            keepers.append(keeper)
            count += 1
            total += length
            if total >= _MAX_SEND:
                break
        overlapped = win32.OVERLAPPED()
        rc = self._api.WSASend(op.owner.fd, wsabufs, count, None, 0, ctypes.byref(overlapped), None)
        if code := self._failure(rc, 0):
            raise self._error(-code)
        op.key = ctypes.addressof(overlapped)
        op.keep = (overlapped, wsabufs, batch, keepers)

    # -- connect ----------------------------------------------------------------------------------

    def outbound_socket(self, address: tuple[str, int] | str) -> socket.socket:
        if isinstance(address, str):
            raise OSError(
                errno.EAFNOSUPPORT, "the iocp driver connects over TCP only (see docs/iocp.md)"
            )
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))  # ConnectEx's rule
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._associate(sock)
            except win32.Win32Error as exc:
                raise self._error(-exc.winerror) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _post_connect(self, op: Operation[Link], address: tuple[str, int] | str) -> None:
        assert not isinstance(address, str)
        name, length = win32.sockaddr_from_address(address)
        overlapped = win32.OVERLAPPED()
        rc = self._api.ConnectEx(
            op.owner.fd, ctypes.byref(name), length, None, 0, None, ctypes.byref(overlapped)
        )
        if code := self._failure(rc, win32.TRUE):
            raise self._error(-code)
        op.key = ctypes.addressof(overlapped)
        op.keep = (overlapped, name)

    def _connected_socket(self, link: Link) -> None:
        rc = self._api.setsockopt(
            link.fd, win32.SOL_SOCKET, win32.SO_UPDATE_CONNECT_CONTEXT, None, 0
        )
        if rc == win32.SOCKET_ERROR:
            raise self._error(-self._api.get_last_error())

    # -- cancel, wait, errors ---------------------------------------------------------------------

    def _cancel(self, op: Operation[Any]) -> None:
        if not self._api.CancelIoEx(op.owner.fd, op.key):
            code = self._api.get_last_error()
            if code != win32.ERROR_NOT_FOUND:  # not found: it completed, its packet is queued
                log.warning("CancelIoEx failed: Windows error %d", code)

    def _wait(self, timeout: float | None) -> list[Completion]:
        api = self._api
        if timeout is None:
            ms = win32.INFINITE
        else:
            ms = min(math.ceil(timeout * 1000), win32.INFINITE - 1)  # at least ``timeout``
        if self._slice_ms is not None:
            ms = min(ms, self._slice_ms)
        removed = self._removed
        if not api.GetQueuedCompletionStatusEx(
            self._port, self._entries, ENTRIES, ctypes.byref(removed), ms, win32.FALSE
        ):
            code = api.get_last_error()
            if code == win32.WAIT_TIMEOUT:
                return []
            raise win32.Win32Error("GetQueuedCompletionStatusEx", code)
        ops = self._ops
        completions = []
        for entry in self._entries[: removed.value]:
            address = entry.lpOverlapped
            op = ops.get(address) if address else None
            if op is None:
                continue  # a wake-up packet
            # The OVERLAPPED, still ours, holds the operation's NTSTATUS.
            status = win32.OVERLAPPED.from_address(address).Internal
            result = entry.dwNumberOfBytesTransferred
            if status != win32.STATUS_SUCCESS:
                code = win32.ntstatus_to_winerror(api, status)
                if code:
                    if op.kind == "accept" and code in _ACCEPT_ABORTS:
                        code = win32.WSAECONNABORTED
                    result = -code
            completions.append((address, result, 0))
        return completions

    def _error(self, result: int) -> OSError:
        code = -result
        text = f"Windows error {code}"
        if code in _CONNECT_ERRORS:
            kind, number = _CONNECT_ERRORS[code]
            return kind(number, f"{text}: {os.strerror(number)}")
        if code in _RESETS:
            return ConnectionResetError(errno.ECONNRESET, text)
        if code == win32.WSAECONNABORTED:
            return ConnectionAbortedError(errno.ECONNABORTED, text)
        return OSError(None, text, None, code)  # Windows derives errno from the winerror
