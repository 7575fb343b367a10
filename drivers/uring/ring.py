"""Raw io_uring through ctypes syscalls and mmap'd rings: the layer under the ``uring`` driver.

No liburing and no compiled code: ``io_uring_setup``/``enter``/``register`` are called through
libc's ``syscall()``, the rings are ``mmap`` objects, an SQE is written with one
``struct.pack_into`` and CQEs are read in bulk with ``struct.iter_unpack``.

A :class:`Ring` belongs to one thread; wake it from other threads through a file that a
pending receive or read watches (the driver's: a socket pair, which a signal can write to
too). Completions are ``(user_data, res, flags)`` tuples where ``res`` is the syscall result
or a negative errno. Addresses passed to the ``prep`` methods must stay valid until the
operation's completion is reaped (argument blocks such as a msghdr or a timespec only until
:meth:`Ring.submit` returns, thanks to ``IORING_FEAT_SUBMIT_STABLE``). Importing this module
performs no syscall.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..pinned import Pinnable, pin

# --- kernel ABI (include/uapi/linux/io_uring.h); opcodes checked against the header ----------

IORING_OP_NOP = 0
IORING_OP_POLL_ADD = 6
IORING_OP_SENDMSG = 9
IORING_OP_TIMEOUT = 11
IORING_OP_ACCEPT = 13
IORING_OP_ASYNC_CANCEL = 14
IORING_OP_CONNECT = 16
IORING_OP_CLOSE = 19
IORING_OP_SEND = 26
IORING_OP_RECV = 27
IORING_OP_SHUTDOWN = 34

IORING_SETUP_CQSIZE = 1 << 3
IORING_SETUP_CLAMP = 1 << 4
IORING_SETUP_SUBMIT_ALL = 1 << 7
IORING_SETUP_COOP_TASKRUN = 1 << 8

IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_NODROP = 1 << 1
IORING_FEAT_SUBMIT_STABLE = 1 << 2
IORING_FEAT_RW_CUR_POS = 1 << 3
IORING_FEAT_CUR_PERSONALITY = 1 << 4
IORING_FEAT_FAST_POLL = 1 << 5
IORING_FEAT_POLL_32BITS = 1 << 6
IORING_FEAT_SQPOLL_NONFIXED = 1 << 7
IORING_FEAT_EXT_ARG = 1 << 8
IORING_FEAT_NATIVE_WORKERS = 1 << 9
IORING_FEAT_RSRC_TAGS = 1 << 10
IORING_FEAT_CQE_SKIP = 1 << 11
IORING_FEAT_LINKED_FILE = 1 << 12
IORING_FEAT_REG_REG_RING = 1 << 13
IORING_FEAT_RECVSEND_BUNDLE = 1 << 14
IORING_FEAT_MIN_TIMEOUT = 1 << 15
IORING_FEAT_RW_ATTR = 1 << 16
IORING_FEAT_NO_IOWAIT = 1 << 17

IORING_ENTER_GETEVENTS = 1 << 0
IORING_ENTER_EXT_ARG = 1 << 3

IORING_SQ_CQ_OVERFLOW = 1 << 1

IORING_CQE_F_BUFFER = 1 << 0
IORING_CQE_F_MORE = 1 << 1

IORING_ACCEPT_MULTISHOT = 1 << 0
IORING_REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1 << 0

_OFF_SQ_RING = 0
_OFF_CQ_RING = 0x8000000
_OFF_SQES = 0x10000000

# Generic syscall numbers, shared by every architecture except alpha and mips.
_NR_SETUP, _NR_ENTER, _NR_REGISTER = 425, 426, 427

# Linux values; read from `socket` so the defaults also match exotic architectures.
SOCK_CLOEXEC: int = getattr(socket, "SOCK_CLOEXEC", 0o2000000)
MSG_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0x4000)

#: user_data the ring reserves for its own wait timeouts (filtered out by :meth:`Ring.reap`).
RESERVED_USER_DATA = 0xFFFFFFFFFFFFFFFF

# Without SUBMIT_ALL one SQE failing its prep stops the batch behind it; COOP_TASKRUN lets
# completions be posted on our next syscall instead of interrupting us with an IPI (measured:
# NOPs in batches of 32 went from ~0.9 to ~0.6 us each). Both are optional (5.18/5.19): the
# setup retries without them when the kernel says EINVAL. SINGLE_ISSUER/DEFER_TASKRUN showed
# no gain here and would tie the ring to the thread that created it.
_OPTIONAL_SETUP_FLAGS = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN
_BASE_SETUP_FLAGS = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP

# opcode, flags, ioprio, fd, off/addr2, addr, len, op-flags, user_data; the rest (buf_index,
# personality, file_index, addr3, pad) is always zero.
_SQE = struct.Struct("=BBHiQQIIQ24x")
_SQE_SIZE = 64
_CQE = struct.Struct("=QiI")
_CQE_SIZE = 16
_PARAMS_SIZE = 120
_PROBE_OPS = 256
_PROBE_OP = struct.Struct("=BBHI")
_MASK32 = 0xFFFFFFFF
_IOV_MAX = 1024
_BIG_ENDIAN = sys.byteorder == "big"

Completion = tuple[int, int, int]
"""``(user_data, res, flags)`` of one CQE."""


class KernelTimespec(ctypes.Structure):
    """``struct __kernel_timespec``: 64-bit seconds and nanoseconds on every architecture."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _GetEventsArg(ctypes.Structure):
    _fields_ = [
        ("sigmask", ctypes.c_uint64),
        ("sigmask_sz", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("ts", ctypes.c_uint64),
    ]


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdrStruct(ctypes.Structure):
    """The kernel's ``struct user_msghdr`` (size_t lengths, as io_uring reads it)."""

    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


def _split_ns(seconds: float) -> tuple[int, int]:
    return divmod(max(0, round(seconds * 1_000_000_000)), 1_000_000_000)


def timespec(seconds: float) -> KernelTimespec:
    """A relative ``__kernel_timespec`` for :meth:`Ring.timeout` (pass its ``addressof``)."""
    return KernelTimespec(*_split_ns(seconds))


class SockAddr:
    """A Linux ``struct sockaddr`` for :meth:`Ring.connect`: ``sockaddr_in``/``sockaddr_in6``
    for a numeric (host, port), ``sockaddr_un`` for a path ("\\0..." an abstract name)."""

    __slots__ = ("_buffer", "address", "length")

    def __init__(self, address: tuple[str, int] | str) -> None:
        if isinstance(address, str):
            path = os.fsencode(address)
            if not path.startswith(b"\0"):
                path += b"\0"  # a file name is NUL-terminated, an abstract one is not
            raw = struct.pack("=H", socket.AF_UNIX) + path
        elif ":" in address[0]:
            host = socket.inet_pton(socket.AF_INET6, address[0])
            # family, port, flowinfo; the address; scope id
            raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", address[1], 0)
            raw += host + struct.pack("=I", 0)
        else:
            host = socket.inet_pton(socket.AF_INET, address[0])
            raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", address[1]) + host
            raw += bytes(8)  # sin_zero
        self._buffer = ctypes.create_string_buffer(raw, len(raw))
        self.address = ctypes.addressof(self._buffer)
        self.length = len(raw)


class MsgHdr:
    """A ``sendmsg`` argument: msghdr, iovec array and the buffers, kept alive together.

    Pass :attr:`address` to :meth:`Ring.sendmsg` and keep this object until the send's
    completion is reaped: the kernel reads the data buffers until then.
    """

    __slots__ = ("_hdr", "_iov", "_owners", "address", "nbytes")

    def __init__(self, buffers: Sequence[Pinnable]) -> None:
        if len(buffers) > _IOV_MAX:
            raise ValueError(f"sendmsg takes at most {_IOV_MAX} buffers, got {len(buffers)}")
        self._iov = (_IoVec * len(buffers))()
        self._owners: list[object] = []
        total = 0
        for slot, buf in zip(self._iov, buffers, strict=True):
            address, nbytes, owner = pin(buf)
            slot.iov_base = address
            slot.iov_len = nbytes
            self._owners.append(owner)
            total += nbytes
        self._hdr = _MsgHdrStruct(msg_iov=ctypes.addressof(self._iov), msg_iovlen=len(buffers))
        self.address = ctypes.addressof(self._hdr)
        self.nbytes = total


_Syscalls = tuple[Any, Any, Any]


@functools.cache
def _syscalls() -> _Syscalls:
    """libc ``syscall`` typed three ways: setup, enter, register (loaded on first use)."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "io_uring is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    long, ptr = ctypes.c_long, ctypes.c_void_p
    prototypes = ((long, long, ptr), (long,) * 5 + (ptr, long), (long, long, long, ptr, long))
    functions = []
    for argtypes in prototypes:
        function = libc["syscall"]  # a fresh function object each time, unlike libc.syscall
        function.argtypes = argtypes
        function.restype = long
        functions.append(function)
    setup, enter, register = functions
    return setup, enter, register


def _error(call: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call} failed: {os.strerror(code)}")


def _setup(entries: int, cq_entries: int) -> tuple[int, ctypes.Array[ctypes.c_char]]:
    """io_uring_setup with the optional flags first, then without them on EINVAL."""
    setup = _syscalls()[0]
    for optional in (_OPTIONAL_SETUP_FLAGS, 0):
        params = ctypes.create_string_buffer(_PARAMS_SIZE)
        struct.pack_into("=II", params, 4, cq_entries, _BASE_SETUP_FLAGS | optional)
        fd = setup(_NR_SETUP, entries, ctypes.addressof(params))
        if fd >= 0:
            return int(fd), params
        if ctypes.get_errno() != errno.EINVAL or not optional:
            break
    raise _error("io_uring_setup")


def _map(fd: int, size: int, offset: int) -> mmap.mmap:
    return mmap.mmap(
        fd,
        size,
        flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
        offset=offset,
    )


class Ring:
    """One io_uring instance: queue SQEs with the ``prep`` methods, :meth:`submit`, :meth:`reap`.

    Every ``prep`` method writes one SQE and takes ``user_data`` (0 .. 2**64-2) after the
    operation's arguments. When the submission queue is full, a ``prep`` method first hands
    the queued SQEs to the kernel (one ``io_uring_enter``) so no SQE is ever dropped; their
    completions then wait in the CQ (or the kernel's overflow list) for :meth:`reap`.

    The SQ index array is filled once with the identity mapping (slot *i* holds SQE *i*), so
    queueing an SQE is one ``pack_into`` plus a local tail increment; the shared tail is
    published in :meth:`submit` (the kernel reads it only inside ``io_uring_enter``).
    """

    __slots__ = (
        "_backlog",
        "_cq_head",
        "_cq_mask",
        "_cq_overflow",
        "_cq_tail",
        "_cqes",
        "_enter",
        "_ext_arg",
        "_fd",
        "_internal_timeouts",
        "_maps",
        "_sq_flags",
        "_sq_head",
        "_sq_ktail",
        "_sq_limit",
        "_sq_mask",
        "_sq_tail",
        "_sqes",
        "_views",
        "_wait_arg",
        "_wait_ts",
        "cq_entries",
        "features",
        "setup_flags",
        "sq_entries",
    )

    def __init__(self, entries: int = 256, *, cq_entries: int | None = None) -> None:
        if entries < 1:
            raise ValueError("entries must be positive")
        cq_wanted = 4 * entries if cq_entries is None else cq_entries
        if cq_wanted < entries:
            raise ValueError("cq_entries must be at least entries")
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._sq_tail = self._sq_limit = 0
        self._enter = _syscalls()[1]
        self._fd, params = _setup(entries, cq_wanted)
        try:
            self._map_rings(params)
        except BaseException:
            self.close()
            raise
        self._sq_tail = self._sq_head[0]
        self._sq_limit = self._sq_tail + self.sq_entries
        self._backlog: list[Completion] = []
        self._internal_timeouts = 0
        self._ext_arg = bool(self.features & IORING_FEAT_EXT_ARG)
        self._wait_ts = KernelTimespec()
        self._wait_arg = _GetEventsArg(sigmask_sz=8, ts=ctypes.addressof(self._wait_ts))

    def _map_rings(self, params: ctypes.Array[ctypes.c_char]) -> None:
        sq_entries, cq_entries, flags = struct.unpack_from("=3I", params, 0)
        self.sq_entries: int = sq_entries
        self.cq_entries: int = cq_entries
        self.setup_flags: int = flags
        self.features: int = struct.unpack_from("=I", params, 20)[0]
        sq_head, sq_tail, sq_mask, _, sq_flags, _, sq_array = struct.unpack_from("=7I", params, 40)
        cq_head, cq_tail, cq_mask, _, cq_overflow, cqes = struct.unpack_from("=6I", params, 80)
        sq_size = sq_array + 4 * sq_entries
        cq_size = cqes + _CQE_SIZE * cq_entries
        if self.features & IORING_FEAT_SINGLE_MMAP:
            sq_ring = cq_ring = self._view(_map(self._fd, max(sq_size, cq_size), _OFF_SQ_RING))
        else:
            sq_ring = self._view(_map(self._fd, sq_size, _OFF_SQ_RING))
            cq_ring = self._view(_map(self._fd, cq_size, _OFF_CQ_RING))
        self._sqes = self._view(_map(self._fd, _SQE_SIZE * sq_entries, _OFF_SQES))
        self._sq_head = self._u32(sq_ring, sq_head)
        self._sq_ktail = self._u32(sq_ring, sq_tail)
        self._sq_flags = self._u32(sq_ring, sq_flags)
        self._sq_mask: int = struct.unpack_from("=I", sq_ring, sq_mask)[0]
        struct.pack_into(f"={sq_entries}I", sq_ring, sq_array, *range(sq_entries))
        self._cq_head = self._u32(cq_ring, cq_head)
        self._cq_tail = self._u32(cq_ring, cq_tail)
        self._cq_overflow = self._u32(cq_ring, cq_overflow)
        self._cq_mask: int = struct.unpack_from("=I", cq_ring, cq_mask)[0]
        self._cqes = self._slice(cq_ring, cqes, _CQE_SIZE * cq_entries)

    def _view(self, mapping: mmap.mmap) -> memoryview:
        self._maps.append(mapping)
        view = memoryview(mapping)
        self._views.append(view)
        return view

    def _slice(self, ring: memoryview, offset: int, size: int) -> memoryview:
        view = ring[offset : offset + size]
        self._views.append(view)
        return view

    def _u32(self, ring: memoryview, offset: int) -> memoryview:
        with ring[offset : offset + 4] as part:
            view = part.cast("I")
        self._views.append(view)
        return view

    # --- state ----------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The ring's file descriptor (-1 once closed)."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def dropped_cqes(self) -> int:
        """Completions the kernel had to drop (CQ overflow it could not buffer); should be 0."""
        return int(self._cq_overflow[0])

    def close(self) -> None:
        """Unmap the rings and close the fd; idempotent. Later calls raise ValueError.

        Closing cancels whatever is still in flight, but the kernel tears the ring down
        asynchronously: cancel and reap pending operations first if their buffers are about
        to be reused.
        """
        self._sq_limit = self._sq_tail  # the next prep goes through _make_room, which refuses
        for view in self._views:
            view.release()
        self._views.clear()
        for mapping in self._maps:
            mapping.close()
        self._maps.clear()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def supported_opcodes(self) -> frozenset[int]:
        """Opcodes this kernel supports (``IORING_REGISTER_PROBE``, Linux 5.6+)."""
        register = _syscalls()[2]
        probe_buf = ctypes.create_string_buffer(16 + _PROBE_OP.size * _PROBE_OPS)
        ret = register(
            _NR_REGISTER, self._fd, IORING_REGISTER_PROBE, ctypes.addressof(probe_buf), _PROBE_OPS
        )
        if ret < 0:
            raise _error("io_uring_register(IORING_REGISTER_PROBE)")
        ops_len = probe_buf.raw[1]
        table = _PROBE_OP.iter_unpack(probe_buf.raw[16 : 16 + _PROBE_OP.size * ops_len])
        supported = IO_URING_OP_SUPPORTED
        return frozenset(op for op, (_, _, flags, _) in enumerate(table) if flags & supported)

    # --- preparing SQEs -------------------------------------------------------------------

    def _push(
        self,
        opcode: int,
        ioprio: int,
        fd: int,
        off: int,
        addr: int,
        length: int,
        op_flags: int,
        user_data: int,
    ) -> None:
        tail = self._sq_tail
        if tail == self._sq_limit:
            self._make_room()
        _SQE.pack_into(
            self._sqes,
            (tail & self._sq_mask) * _SQE_SIZE,
            opcode,
            0,
            ioprio,
            fd,
            off,
            addr,
            length,
            op_flags,
            user_data,
        )
        self._sq_tail = tail + 1

    def nop(self, user_data: int) -> None:
        self._push(IORING_OP_NOP, 0, -1, 0, 0, 0, 0, user_data)

    def accept(
        self, fd: int, user_data: int, *, multishot: bool = False, flags: int = SOCK_CLOEXEC
    ) -> None:
        """accept4(fd, NULL, NULL, flags); ``res`` is the new fd (use getpeername for the peer).

        A multishot accept (Linux 5.19+) keeps posting one CQE per connection with
        ``IORING_CQE_F_MORE`` set until a CQE arrives without it (error or cancel).
        """
        ioprio = IORING_ACCEPT_MULTISHOT if multishot else 0
        self._push(IORING_OP_ACCEPT, ioprio, fd, 0, 0, 0, flags, user_data)

    def recv(self, fd: int, buf_address: int, length: int, user_data: int, flags: int = 0) -> None:
        self._push(IORING_OP_RECV, 0, fd, 0, buf_address, length, flags, user_data)

    def send(
        self, fd: int, buf_address: int, length: int, user_data: int, flags: int = MSG_NOSIGNAL
    ) -> None:
        self._push(IORING_OP_SEND, 0, fd, 0, buf_address, length, flags, user_data)

    def sendmsg(
        self, fd: int, msghdr_address: int, user_data: int, flags: int = MSG_NOSIGNAL
    ) -> None:
        """Gathered send; build the argument with :class:`MsgHdr`."""
        self._push(IORING_OP_SENDMSG, 0, fd, 0, msghdr_address, 1, flags, user_data)

    def connect(self, fd: int, sockaddr: SockAddr, user_data: int) -> None:
        """connect(2) to a :class:`SockAddr`; ``res`` 0 once connected, else -errno (it waits
        for the handshake itself: a non-blocking socket never completes with -EINPROGRESS)."""
        self._push(IORING_OP_CONNECT, 0, fd, sockaddr.length, sockaddr.address, 0, 0, user_data)

    def cancel(self, target_user_data: int, user_data: int) -> None:
        """Cancel the request tagged *target_user_data*: it completes with -ECANCELED and
        the cancel with 0, or the cancel gets -ENOENT (not found) / -EALREADY (running)."""
        self._push(IORING_OP_ASYNC_CANCEL, 0, -1, 0, target_user_data, 0, 0, user_data)

    def close_fd(self, fd: int, user_data: int) -> None:
        """close(fd) in the kernel; detach the Python socket object first."""
        self._push(IORING_OP_CLOSE, 0, fd, 0, 0, 0, 0, user_data)

    def shutdown(self, fd: int, how: int, user_data: int) -> None:
        """shutdown(fd, how) (Linux 5.11+)."""
        self._push(IORING_OP_SHUTDOWN, 0, fd, 0, 0, how, 0, user_data)

    def timeout(self, ts_address: int, user_data: int, count: int = 0) -> None:
        """Complete with -ETIME after the :func:`timespec` at *ts_address*, or with 0 once
        *count* other completions were posted (0 = time only)."""
        self._push(IORING_OP_TIMEOUT, 0, -1, count, ts_address, 1, 0, user_data)

    def poll_add(self, fd: int, mask: int, user_data: int) -> None:
        """One-shot poll; ``res`` is the ready event mask."""
        if _BIG_ENDIAN:  # poll32_events is stored word-swapped on big-endian
            mask = ((mask << 16) | (mask >> 16)) & _MASK32
        self._push(IORING_OP_POLL_ADD, 0, fd, 0, 0, 0, mask, user_data)

    # --- submitting and reaping -----------------------------------------------------------

    def _enter_queued(self, min_complete: int, flags: int, arg: int, argsz: int) -> int:
        """One io_uring_enter for everything queued; the result or a negative errno."""
        tail = self._sq_tail
        self._sq_ktail[0] = tail & _MASK32
        ret: int = self._enter(
            _NR_ENTER,
            self._fd,
            (tail - self._sq_head[0]) & _MASK32,
            min_complete,
            flags,
            arg,
            argsz,
        )
        self._sq_limit = tail + self.sq_entries - ((tail - self._sq_head[0]) & _MASK32)
        return ret if ret >= 0 else -ctypes.get_errno()

    def _make_room(self) -> None:
        """The SQ is full: submit it. On CQ back-pressure park the CQEs in a backlog (handed
        out by :meth:`reap`) so the kernel can flush its overflow, then try again."""
        if self.closed:
            raise ValueError("operation on a closed io_uring")
        for _ in range(64):
            ret = self._enter_queued(0, 0, 0, 0)
            if self._sq_tail != self._sq_limit:
                return
            if -ret in (errno.EBUSY, errno.EAGAIN):
                self._drain(self._backlog, None)
            elif ret < 0 and ret != -errno.EINTR:
                raise OSError(-ret, f"io_uring_enter failed: {os.strerror(-ret)}")
        raise OSError(errno.EBUSY, "io_uring submission queue stays full")

    def submit(self, wait_nr: int = 0, timeout: float | None = None) -> int:
        """Submit everything queued; with *wait_nr* > 0 also wait for that many completions,
        at most *timeout* seconds. Returns the number of SQEs the kernel took (on kernels
        without EXT_ARG that includes the ring's own timeout SQE).

        Completions already waiting (in the CQ, or parked by a ``prep`` that found the SQ
        full) count towards *wait_nr*. Returns early (0 taken) on a timeout, and on
        EBUSY/EAGAIN, which mean the kernel wants the CQ reaped first. Retries on EINTR, so
        Python signal handlers still run.
        """
        if self._backlog:
            wait_nr -= len(self._backlog)
        if wait_nr <= 0:
            if not (self._sq_tail - self._sq_head[0]) & _MASK32:
                return 0
            return self._check(self._enter_queued(0, 0, 0, 0))
        flags = IORING_ENTER_GETEVENTS
        arg = argsz = 0
        deadline = 0.0
        if timeout is not None:
            deadline = time.monotonic() + timeout
            if self._ext_arg:
                self._set_wait_ts(timeout)
                flags |= IORING_ENTER_EXT_ARG
                arg, argsz = ctypes.addressof(self._wait_arg), ctypes.sizeof(self._wait_arg)
            else:  # Linux < 5.11: a timeout SQE ends the wait; reap() drops its CQE
                self._set_wait_ts(timeout)
                self.timeout(ctypes.addressof(self._wait_ts), RESERVED_USER_DATA, wait_nr)
                self._internal_timeouts += 1
        while True:
            ret = self._enter_queued(wait_nr, flags, arg, argsz)
            if ret != -errno.EINTR:
                return self._check(ret)
            if timeout is not None and self._ext_arg:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 0
                self._set_wait_ts(remaining)

    def _set_wait_ts(self, seconds: float) -> None:
        self._wait_ts.tv_sec, self._wait_ts.tv_nsec = _split_ns(seconds)

    @staticmethod
    def _check(ret: int) -> int:
        if ret >= 0:
            return ret
        if -ret in (errno.ETIME, errno.EBUSY, errno.EAGAIN, errno.EINTR):
            return 0
        raise OSError(-ret, f"io_uring_enter failed: {os.strerror(-ret)}")

    def reap(self, max_entries: int | None = None) -> list[Completion]:
        """Take the available completions, oldest first, at most *max_entries*.

        The CQ head advances once per batch. Completions the kernel parked in its overflow
        list (CQ was full) are flushed in with an ``io_uring_enter(GETEVENTS)``, which also
        submits anything queued, and returned too. Reap after :meth:`submit`: on weakly
        ordered CPUs the syscall is what orders the kernel's CQE writes before our reads.
        """
        if self._backlog:
            taken = len(self._backlog) if max_entries is None else max_entries
            out = self._backlog[:taken]
            del self._backlog[:taken]
            budget = None if max_entries is None else max_entries - len(out)
        else:
            out = []
            budget = max_entries
        if budget is None or budget > 0:
            self._drain(out, budget)
        if self._internal_timeouts:
            return self._drop_internal(out)
        return out

    def _drain(self, out: list[Completion], budget: int | None) -> None:
        """Append up to *budget* CQEs to *out*, flushing the kernel's overflow list."""
        while True:
            copied = self._copy_cqes(out, budget)
            if budget is not None:
                budget -= copied
                if budget <= 0:
                    return
            if not self._sq_flags[0] & IORING_SQ_CQ_OVERFLOW:
                return
            tail = self._cq_tail[0]
            self._enter_queued(0, IORING_ENTER_GETEVENTS, 0, 0)
            if self._cq_tail[0] == tail:
                return

    def _copy_cqes(self, out: list[Completion], budget: int | None) -> int:
        head = self._cq_head[0]
        count = (self._cq_tail[0] - head) & _MASK32
        if budget is not None and count > budget:
            count = budget
        if count:
            start = head & self._cq_mask
            end = start + count
            if end <= self.cq_entries:
                out += _CQE.iter_unpack(self._cqes[start * _CQE_SIZE : end * _CQE_SIZE])
            else:  # the batch wraps around the end of the ring
                out += _CQE.iter_unpack(self._cqes[start * _CQE_SIZE :])
                out += _CQE.iter_unpack(self._cqes[: (end - self.cq_entries) * _CQE_SIZE])
            self._cq_head[0] = (head + count) & _MASK32
        return count

    def _drop_internal(self, completions: Iterable[Completion]) -> list[Completion]:
        kept = []
        for completion in completions:
            if completion[0] == RESERVED_USER_DATA:
                self._internal_timeouts -= 1
            else:
                kept.append(completion)
        return kept


# --- availability -------------------------------------------------------------------------

_REQUIRED_OPS = {
    IORING_OP_ACCEPT: "ACCEPT",
    IORING_OP_RECV: "RECV",
    IORING_OP_SEND: "SEND",
    IORING_OP_SENDMSG: "SENDMSG",
    IORING_OP_ASYNC_CANCEL: "ASYNC_CANCEL",
    IORING_OP_CLOSE: "CLOSE",
    IORING_OP_TIMEOUT: "TIMEOUT",
}

_FEATURE_NAMES = {
    IORING_FEAT_SINGLE_MMAP: "SINGLE_MMAP",
    IORING_FEAT_NODROP: "NODROP",
    IORING_FEAT_SUBMIT_STABLE: "SUBMIT_STABLE",
    IORING_FEAT_RW_CUR_POS: "RW_CUR_POS",
    IORING_FEAT_CUR_PERSONALITY: "CUR_PERSONALITY",
    IORING_FEAT_FAST_POLL: "FAST_POLL",
    IORING_FEAT_POLL_32BITS: "POLL_32BITS",
    IORING_FEAT_SQPOLL_NONFIXED: "SQPOLL_NONFIXED",
    IORING_FEAT_EXT_ARG: "EXT_ARG",
    IORING_FEAT_NATIVE_WORKERS: "NATIVE_WORKERS",
    IORING_FEAT_RSRC_TAGS: "RSRC_TAGS",
    IORING_FEAT_CQE_SKIP: "CQE_SKIP",
    IORING_FEAT_LINKED_FILE: "LINKED_FILE",
    IORING_FEAT_REG_REG_RING: "REG_REG_RING",
    IORING_FEAT_RECVSEND_BUNDLE: "RECVSEND_BUNDLE",
    IORING_FEAT_MIN_TIMEOUT: "MIN_TIMEOUT",
    IORING_FEAT_RW_ATTR: "RW_ATTR",
    IORING_FEAT_NO_IOWAIT: "NO_IOWAIT",
}


#: The feature bits the driver benefits from, named in ``probe()``'s sentence.
_USED_FEATURES = (
    IORING_FEAT_SINGLE_MMAP,
    IORING_FEAT_NODROP,
    IORING_FEAT_FAST_POLL,
    IORING_FEAT_EXT_ARG,
)


def _feature_names(features: int) -> str:
    return " ".join(_FEATURE_NAMES[bit] for bit in _USED_FEATURES if features & bit) or "none"


def _kernel_release() -> str:
    return os.uname().release


def _kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", _kernel_release())
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _sysctl_disabled() -> int:
    """kernel.io_uring_disabled (Linux 6.6+): 0 allowed, 1 group only, 2 disabled."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _setup_failure(exc: OSError, disabled: int) -> str:
    message = f"io_uring_setup failed: {os.strerror(exc.errno or 0)}"
    if exc.errno == errno.EPERM:
        if disabled == 1:
            return f"{message} (kernel.io_uring_disabled=1: only kernel.io_uring_group may)"
        return f"{message} (blocked by seccomp or kernel.io_uring_disabled)"
    if exc.errno == errno.ENOSYS:
        return f"{message} (kernel too old, built without io_uring, or blocked by seccomp)"
    return message


@functools.cache
def probe() -> tuple[bool, str]:
    """Whether the ``uring`` driver can run here, and a reason shown to users. Cached."""
    if not sys.platform.startswith("linux"):
        return False, "io_uring is Linux-only"
    machine = os.uname().machine
    if machine.startswith(("alpha", "mips")):
        return False, f"io_uring syscall numbers on {machine} are not supported"
    disabled = _sysctl_disabled()
    if disabled == 2:
        return False, "io_uring is disabled (sysctl kernel.io_uring_disabled=2)"
    try:
        ring = Ring(4)
    except OSError as exc:
        return False, _setup_failure(exc, disabled)
    with ring:
        try:
            opcodes = ring.supported_opcodes()
        except OSError as exc:
            return False, f"{exc.strerror} (kernel {_kernel_release()}; Linux >= 5.6 needed)"
        features = ring.features
    kernel = _kernel_release()
    missing = " ".join(name for op, name in _REQUIRED_OPS.items() if op not in opcodes)
    if missing:
        return False, f"io_uring lacks {missing} (kernel {kernel}; Linux >= 5.6 needed)"
    return True, f"io_uring available (kernel {kernel}, features {_feature_names(features)})"


@functools.cache
def supports_multishot_accept() -> bool:
    """Multishot accept arrived in Linux 5.19 (judged by version: backports are missed)."""
    return probe()[0] and _kernel_version() >= (5, 19)
