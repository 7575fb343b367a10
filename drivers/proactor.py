"""The completion ("proactor") base shared by the ``uring`` and ``iocp`` drivers.

A readiness driver asks "can I read?" and then reads; a completion driver hands the kernel a
buffer and learns later that the read happened. Everything about that second model that does
not depend on io_uring or IOCP lives here, once: the operation registry, accept/receive/send
and their completions, closing, timers, jobs, pausing the accept and the graceful stop. A
subclass only posts operations, cancels them and waits for their completions (see
``docs/proactor.md`` for porters).

The rules this base keeps:

* **Every posted operation is an** :class:`Operation` **in** ``_ops`` **until its last
  completion is reaped**, and it references every buffer, address, iovec/msghdr or
  OVERLAPPED it uses (``op.keep``). A cancel does not end that: the kernel may still be
  writing into the buffer until it reports the cancelled (or, racing, successful) completion.
  A connection's socket is closed and its receive buffer reused only once none of its
  operations is registered.
* **One receive and at most one send in flight per connection.** A send posts the buffers of
  the core's ``Send`` action as they are (valid until ``conn.sent(n)``); its completion
  reports what went out, and a rest comes back as the next ``Send``, posted in turn.
* **A receive stays posted while the latest** ``Read`` **action says on**, and one may
  complete after a ``Read(False)``: it was posted while reading was wanted, and the data is
  delivered anyway (the core accepts it). Back-pressure therefore takes effect one receive
  late, and nothing is lost or reordered.
* **A failed operation ends its connection**: the completion's error becomes an ``OSError``
  (ECONNRESET → ``ConnectionResetError``; on Windows ERROR_NETNAME_DELETED and friends, as the
  subclass maps them) passed to ``conn.connection_lost``, called once for every connection.
* Connections accepted while the core is not accepting (a multishot accept or several pending
  AcceptEx racing with ``max_connections``) are parked and handed over when it accepts again,
  as the listen backlog would have held them; once the listeners close they are refused.
* **An outbound connection posts one connect** (``Connect``: IORING_OP_CONNECT, ConnectEx) and
  nothing else until it completes; a ``Close`` meanwhile (the connect timeout) cancels it,
  and its socket closes once the cancelled connect is back, as for any operation.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import ctypes
import errno
import itertools
import logging
import mmap
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from spcore.actions import Send
from spcore.connection import Connection
from spcore.server import Server

from .base import READ_SIZE, Bound, Driver, signals_wake

__all__ = ["Acceptor", "Completion", "Link", "Operation", "ProactorBase", "RecvBuffer"]

log = logging.getLogger("spcore.driver")

Completion = tuple[int, int, int]
"""``(key, result, flags)``: ``result`` is a count (bytes, or the accepted handle) when >= 0,
else a negative error code in the subclass's error space (see ``ProactorBase._error``)."""

Buffer = bytes | memoryview

_T = TypeVar("_T")

#: How long closing the driver waits for the completions of its cancelled operations.
DRAIN_TIMEOUT = 5.0
#: Receive buffers kept for reuse when their connection ends.
_FREE_BUFFERS = 64
#: Operations still registered when the drain gave up: their memory must never be freed.
_abandoned: list[object] = []


class RecvBuffer:
    """Memory the kernel receives into: ``size`` bytes at ``address``.

    Anonymous ``mmap`` memory, so pages are committed only when data lands in them: an idle
    connection costs no more than what it ever received at once, not ``READ_SIZE``.
    """

    __slots__ = ("_anchor", "address", "memory", "size")

    def __init__(self, size: int = READ_SIZE) -> None:
        self.memory = mmap.mmap(-1, size)
        self._anchor = ctypes.c_char.from_buffer(self.memory)  # pins the mapping while we live
        self.address = ctypes.addressof(self._anchor)
        self.size = size

    def take(self, n: int) -> bytes:
        """A copy of the first ``n`` bytes (the core keeps what it is given)."""
        return self.memory[:n]


class Operation(Generic[_T]):
    """One posted operation, registered under ``key`` until its last completion is reaped.

    ``keep`` holds every object the kernel reads or writes through (buffers, msghdr/iovec,
    OVERLAPPED, address blocks); ``owner`` is the :class:`Link`, the :class:`Acceptor`, or
    None for the driver's own operations (a wake-up read), which do not keep ``run()`` alive.
    """

    __slots__ = ("cancelled", "keep", "key", "kind", "on_complete", "owner", "reaped")

    def __init__(
        self,
        kind: str,
        owner: _T,
        on_complete: Callable[[Operation[_T], int, float], None],
        key: int,
    ) -> None:
        self.kind = kind
        self.owner = owner
        self.on_complete = on_complete
        #: The base numbers operations; a subclass may use another identity (an OVERLAPPED
        #: address) by setting ``key`` in its post hook.
        self.key = key
        self.keep: object = None
        self.cancelled = False
        #: True once its final completion was taken from the kernel (it left the registry).
        self.reaped = False

    def __repr__(self) -> str:
        state = "reaped" if self.reaped else "cancelled" if self.cancelled else "pending"
        return f"<Operation {self.kind} key={self.key:#x} {state}>"


class Link:
    """The driver's side of one connection: its socket, buffer and operations in flight."""

    __slots__ = (
        "buffer",
        "closed",
        "conn",
        "connect_op",
        "fd",
        "reading",
        "recv_op",
        "send_op",
        "sock",
    )

    def __init__(self, conn: Connection, sock: socket.socket, buffer: RecvBuffer) -> None:
        self.conn = conn
        self.sock = sock
        self.fd = sock.fileno()
        self.buffer = buffer
        self.recv_op: Operation[Link] | None = None
        self.send_op: Operation[Link] | None = None
        self.connect_op: Operation[Link] | None = None  # an outbound connect in flight
        self.reading = False  # the latest Read action: keep a receive posted
        self.closed = False  # connection_lost was called; waiting for the last completions

    @property
    def idle(self) -> bool:
        """No operation in flight: the socket and buffer may be released."""
        return self.recv_op is None and self.send_op is None and self.connect_op is None


class Acceptor:
    """A listening socket and the accept operations pending on it."""

    __slots__ = ("bound", "fd", "ops")

    def __init__(self, bound: Bound) -> None:
        self.bound = bound
        self.fd = bound.sock.fileno()
        self.ops: set[Operation[Acceptor]] = set()

    @property
    def live(self) -> int:
        """Accepts pending and not cancelled."""
        return sum(1 for op in self.ops if not op.cancelled)


class ProactorBase(Driver[Link]):
    """A completion driver: post operations, reap completions in batches, dispatch them.

    Subclasses implement the hooks below (``_open``, ``_close_resources``, ``_post_accept``,
    ``_accepted_socket``, ``_post_recv``, ``_post_send``, ``_cancel``, ``_wait``, ``_error``,
    ``wake``, optionally ``_release_accept``; for outbound connections ``_post_connect``,
    ``_connected_socket`` and, if it needs another socket, ``outbound_socket``) and
    ``probe``. Every ``_post_*`` hook gets a
    fresh :class:`Operation`, posts it and fills ``op.keep`` (and ``op.key`` if the
    completion names it differently); the base registers it afterwards. A hook raises
    ``OSError`` when the post failed at once and no completion will come (the base then
    registers nothing).
    """

    #: The completion flag meaning "this operation stays posted; more completions follow"
    #: (io_uring's IORING_CQE_F_MORE for a multishot accept; 0 where nothing is multishot).
    more_flag: ClassVar[int] = 0
    #: Accept operations kept pending per listening socket.
    accepts_per_listener: ClassVar[int] = 1

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._ops: dict[int, Operation[Any]] = {}
        self._keys = itertools.count(1)
        self._acceptors: list[Acceptor] = []
        self._parked: collections.deque[tuple[Acceptor, socket.socket]] = collections.deque()
        self._free_buffers: list[RecvBuffer] = []
        self._accepting = False  # the latest Accepting action
        self._listeners_closed = False
        self._exiting = False  # the server said Exit: leave once only resident operations wait
        self._closing = False

    # -- the hooks a completion driver implements ------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Create the ring/port (and post any resident operation, such as a wake-up read)."""

    @abc.abstractmethod
    def _close_resources(self) -> None:
        """Release the ring/port; called once no operation is registered (or never was)."""

    @abc.abstractmethod
    def _post_accept(self, op: Operation[Acceptor]) -> None:
        """Post an accept on ``op.owner.bound.sock``."""

    @abc.abstractmethod
    def _accepted_socket(self, op: Operation[Acceptor], result: int) -> socket.socket:
        """The connected socket an accept completion with ``result`` >= 0 delivered."""

    def _release_accept(self, op: Operation[Acceptor]) -> None:
        """An accept completed without a connection (failed or cancelled): release what
        ``_post_accept`` prepared for it (IOCP: close the pre-created accept socket)."""

    @abc.abstractmethod
    def _post_recv(self, op: Operation[Link]) -> None:
        """Post a receive into ``op.owner.buffer`` (all ``size`` bytes of it)."""

    @abc.abstractmethod
    def _post_send(self, op: Operation[Link], buffers: Sequence[Buffer]) -> None:
        """Post one (gathered) send of the first buffers of ``buffers`` (a ``Send``'s),
        referenced as they are: keep in ``op.keep`` what the kernel reads."""

    def _post_connect(self, op: Operation[Link], address: tuple[str, int] | str) -> None:
        """Post a connect of ``op.owner.sock`` to ``address``."""
        raise OSError(errno.EOPNOTSUPP, f"the {self.name} driver makes no outbound connections")

    def _connected_socket(self, link: Link) -> None:
        """A connect completed successfully: make the socket usable (IOCP: update its
        context); raise ``OSError`` if it cannot be."""

    @abc.abstractmethod
    def _cancel(self, op: Operation[Any]) -> None:
        """Ask the kernel to cancel ``op``; it still completes (cancelled or not) later."""

    @abc.abstractmethod
    def _wait(self, timeout: float | None) -> Iterable[Completion]:
        """Submit what was posted, wait up to ``timeout`` seconds (None: until something
        completes or ``wake()`` is called), and return the completions available."""

    @abc.abstractmethod
    def _error(self, result: int) -> OSError:
        """The exception for a failed completion (``result`` < 0)."""

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        server = self.server
        server.info["driver"] = self.name
        if not self.bound:
            self.bind()
        try:
            self._open()
            self._acceptors = [Acceptor(bound) for bound in self.bound]
            now = time.monotonic()
            server.start(now, time.time())
            fd = self._signal_fd()
            with contextlib.nullcontext() if fd is None else signals_wake(fd):
                self._loop(now)
        finally:
            self._close_all()

    def _loop(self, now: float) -> None:
        while self.follow(now) or not self._quiet():
            completions = self._wait(self.wait_timeout())
            now = time.monotonic()
            self._dispatch(completions, now)
            self.finish_jobs(now)
            self.expire(now)

    def _signal_fd(self) -> int | None:
        """The fd a signal writes a byte to so as to end the wait (``signals_wake``); None
        where the wait wakes up for signals by itself."""
        return None

    def _quiet(self) -> bool:
        """Only the driver's own resident operations are pending."""
        return all(op.owner is None for op in self._ops.values())

    def _dispatch(self, completions: Iterable[Completion], now: float) -> None:
        ops = self._ops
        more = self.more_flag
        for key, result, flags in completions:
            op = ops.get(key)
            if op is None:
                continue  # a completion that carries nothing (a cancel request's own)
            if not flags & more:
                del ops[key]
                op.reaped = True
            op.on_complete(op, result, now)

    def follow(self, now: float) -> bool:
        """The server's actions; then, while it accepts, hand parked connections over and keep
        accepts posted."""
        while not self._exiting:
            if not super().follow(now):
                self._exiting = True
            elif self._accepting and self._parked:
                self._admit(*self._parked.popleft(), now)
            elif not (self._accepting and self._post_accepts(now)):
                return True  # (a post that failed paused accepting: follow that too)
        return False

    def accepting(self, on: bool) -> None:
        self._accepting = on
        if not on:
            for acceptor in self._acceptors:
                for op in list(acceptor.ops):
                    self._cancel_op(op)

    # -- posting ----------------------------------------------------------------------------------

    def _register(self, op: Operation[Any]) -> None:
        """Enter ``op`` in the registry (after its post hook succeeded)."""
        if op.key in self._ops:  # a driver bug; the kernel has the operation: keep its memory
            _abandoned.append(op)
            raise RuntimeError(f"operation key {op.key:#x} is already in flight")
        self._ops[op.key] = op

    def _new_op(
        self, kind: str, owner: _T, on_complete: Callable[[Operation[_T], int, float], None]
    ) -> Operation[_T]:
        return Operation(kind, owner, on_complete, next(self._keys))

    def _cancel_op(self, op: Operation[Any]) -> None:
        if not op.cancelled and not op.reaped:
            op.cancelled = True
            self._cancel(op)

    def _start_recv(self, link: Link) -> None:
        op = self._new_op("recv", link, self._received)
        self._post_recv(op)
        self._register(op)
        link.recv_op = op

    def _start_send(self, link: Link, buffers: Sequence[Buffer]) -> None:
        op = self._new_op("send", link, self._sent)
        self._post_send(op, buffers)
        self._register(op)
        link.send_op = op

    # -- one connection ---------------------------------------------------------------------------

    def send(self, link: Link, send: Send, now: float) -> None:
        self._start_send(link, send.buffers)

    def read(self, link: Link, on: bool) -> None:
        link.reading = on

    def shut_write(self, link: Link) -> None:
        link.sock.shutdown(socket.SHUT_WR)

    def settle(self, link: Link) -> None:
        if link.reading and link.recv_op is None:
            self._start_recv(link)

    # -- outbound connections ---------------------------------------------------------------------

    def start_connect(
        self, conn: Connection, sock: socket.socket, address: tuple[str, int] | str, now: float
    ) -> None:
        buffer = self._free_buffers.pop() if self._free_buffers else RecvBuffer()
        link = self.links[conn] = Link(conn, sock, buffer)
        op = self._new_op("connect", link, self._connected)
        try:
            self._post_connect(op, address)
        except OSError as exc:
            self.close(link, exc, now)
            return
        self._register(op)
        link.connect_op = op
        self.drive(conn, now)  # its timer, the connect timeout

    def _connected(self, op: Operation[Link], result: int, now: float) -> None:
        link = op.owner
        link.connect_op = None
        if link.closed:
            self._release_if_idle(link)  # timed out or stopped: the cancel came back
            return
        try:
            if result < 0:
                raise self._error(result)
            self._connected_socket(link)
            local = link.sock.getsockname()
        except OSError as exc:
            self.close(link, exc, now)
            return
        link.conn.connected(local, now)
        self.drive(link.conn, now)

    # -- completions ------------------------------------------------------------------------------

    def _received(self, op: Operation[Link], result: int, now: float) -> None:
        link = op.owner
        link.recv_op = None
        if link.closed:
            self._release_if_idle(link)  # cancelled, or raced the cancel: dropped either way
            return
        conn = link.conn
        if result > 0:
            conn.receive_data(link.buffer.take(result), now)
        elif result == 0:
            conn.receive_data(b"", now)  # the core stops the reading
        else:
            self.close(link, self._error(result), now)
            return
        self.drive(link.conn, now)

    def _sent(self, op: Operation[Link], result: int, now: float) -> None:
        link = op.owner
        link.send_op = None
        if link.closed:
            self._release_if_idle(link)
            return
        if result <= 0:
            error = self._error(result) if result else ConnectionError("send made no progress")
            self.close(link, error, now)
            return
        link.conn.sent(result, now)
        self.drive(link.conn, now)

    def _accepted(self, op: Operation[Acceptor], result: int, now: float) -> None:
        acceptor = op.owner
        if op.reaped:
            acceptor.ops.discard(op)
        if result >= 0:
            try:
                sock = self._accepted_socket(op, result)
            except OSError as exc:  # the hook closed what it had
                log.debug("accepted connection unusable: %s", exc)
                self.server.refused()
            else:
                self._admit_or_park(acceptor, sock, now)
        else:
            self._release_accept(op)
            if not op.cancelled:
                self.server.accept_failed(self._error(result), now)
        if not acceptor.ops and (self._listeners_closed or self._closing):
            acceptor.bound.sock.close()  # its cancelled accepts are all back

    # -- accepting --------------------------------------------------------------------------------

    def _post_accepts(self, now: float) -> bool:
        """Keep ``accepts_per_listener`` accepts posted; True if a post failed (the server
        paused accepting)."""
        for acceptor in self._acceptors:
            for _ in range(self.accepts_per_listener - acceptor.live):
                if not self._start_accept(acceptor, now):
                    return True
        return False

    def _start_accept(self, acceptor: Acceptor, now: float) -> bool:
        op = self._new_op("accept", acceptor, self._accepted)
        try:
            self._post_accept(op)
        except OSError as exc:
            self.server.accept_failed(exc, now)  # it pauses accepting: its timer retries
            return False
        self._register(op)
        acceptor.ops.add(op)
        return True

    def _admit_or_park(self, acceptor: Acceptor, sock: socket.socket, now: float) -> None:
        if self._listeners_closed or self._closing:
            sock.close()
            self.server.refused()
        elif self._accepting and not self._parked:
            self._admit(acceptor, sock, now)
            self.follow(now)  # at the limit the server stops accepting: before the next one
        else:
            self._parked.append((acceptor, sock))

    def _admit(self, acceptor: Acceptor, sock: socket.socket, now: float) -> None:
        server = self.server
        try:
            peer = sock.getpeername()
            local = sock.getsockname()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the peer is already gone
            sock.close()
            server.refused()
            return
        conn = server.accept(acceptor.bound.listener, peer, local, now)
        buffer = self._free_buffers.pop() if self._free_buffers else RecvBuffer()
        self.links[conn] = Link(conn, sock, buffer)
        self.drive(conn, now)

    # -- closing ----------------------------------------------------------------------------------

    def close(self, link: Link, error: BaseException | None, now: float) -> None:
        """End a connection: tell the core once, cancel what is in flight, release when idle."""
        if link.closed:
            return
        link.closed = True
        for op in (link.recv_op, link.send_op, link.connect_op):
            if op is not None:
                self._cancel_op(op)
        self.forget(link.conn, error, now)
        self._release_if_idle(link)

    def _release_if_idle(self, link: Link) -> None:
        """Close the socket and recycle the buffer once no completion can touch them."""
        if not link.idle:
            return
        link.sock.close()
        if len(self._free_buffers) < _FREE_BUFFERS:
            self._free_buffers.append(link.buffer)

    def stop_accepting(self) -> None:
        """Cancel every accept; close each listening socket once its accepts are back."""
        self._accepting = False
        self._listeners_closed = True
        for acceptor in self._acceptors:
            for op in list(acceptor.ops):
                self._cancel_op(op)
            if not acceptor.ops:
                acceptor.bound.sock.close()
        while self._parked:
            _, sock = self._parked.popleft()
            sock.close()
            self.server.refused()

    def _close_all(self) -> None:
        """Leave nothing behind: end the connections, cancel and reap every operation, then
        release the ring/port (never while the kernel may still use registered memory)."""
        self._closing = True
        self.end(time.monotonic())
        self.stop_accepting()
        try:
            self._drain()
        finally:
            if self._ops:
                log.error("%d operation(s) never completed; their memory is kept", len(self._ops))
                _abandoned.append(self._ops)
            else:
                self._close_resources()
            self.close_listeners()

    def _drain(self) -> None:
        for op in list(self._ops.values()):
            self._cancel_op(op)
        give_up = time.monotonic() + DRAIN_TIMEOUT
        while self._ops:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return
            self._dispatch(self._wait(remaining), time.monotonic())
