"""What every driver shares: listening sockets, the worker pool, the timer heap, the calls
handed to the loop thread, stopping.

These are mechanisms, not policy: how many workers and the backlog come from the server;
when to read, write, close, time out, accept or stop comes from the core's actions.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import heapq
import itertools
import logging
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from spcore.actions import (
    Accepting,
    CloseListeners,
    Connect,
    Read,
    RunJobs,
    Send,
    SetTimer,
    ShutWrite,
    Sync,
)
from spcore.addresses import describe_address
from spcore.connection import Connection
from spcore.jobs import Job
from spcore.server import Listener, Server

from .calls import CallQueue
from .listening import SocketFile, bind_listener

if TYPE_CHECKING:
    from .gateway.apploop import AppLoop

__all__ = [
    "Bound",
    "CallQueue",
    "Driver",
    "JobPool",
    "TimerHeap",
    "WakeSocket",
    "bind_listener",
    "outbound_socket",
    "prepare_accepted",
    "signals_wake",
]

log = logging.getLogger("spcore.driver")

_L = TypeVar("_L")

#: Bytes asked for per receive: large enough for several TLS records, small enough to stay
#: under glibc's mmap threshold (128 KiB), which would otherwise cost an mmap/munmap per read.
READ_SIZE = 64 * 1024


class Bound:
    """A listening socket and the listener it serves."""

    __slots__ = ("_file", "listener", "sock")

    def __init__(self, listener: Listener, sock: socket.socket) -> None:
        self.listener = listener
        self.sock = sock
        # A Unix socket bound here (not handed in) has its file removed when it closes.
        self._file: SocketFile | None = None
        if listener.path is not None and listener.fd is None:
            self._file = SocketFile(listener.path)

    @property
    def address(self) -> tuple[Any, ...]:
        """The socket's address: (host, port, ...), or (path,) for a Unix socket."""
        name = self.sock.getsockname()
        return tuple(name) if isinstance(name, tuple) else (name,)

    @property
    def where(self) -> str:
        """``127.0.0.1:8443``, ``unix:/run/app.sock``: what the socket really listens on."""
        return describe_address(self.sock.getsockname())

    def close(self) -> None:
        """Close the socket (and remove the file of a Unix socket bound here)."""
        self.sock.close()
        if self._file is not None:
            self._file.remove()
            self._file = None


def prepare_accepted(sock: socket.socket) -> None:
    """Options every accepted socket gets: non-blocking, no Nagle delay."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def outbound_socket(address: tuple[str, int] | str) -> socket.socket:
    """A new non-blocking stream socket for a ``Connect`` to ``address`` (a Unix socket path,
    or a numeric IPv6 or IPv4 host and port), with the options an accepted one gets."""
    if isinstance(address, str):
        family = getattr(socket, "AF_UNIX", None)
        if family is None:
            raise OSError(errno.EAFNOSUPPORT, "Unix domain sockets are not available here")
    else:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        prepare_accepted(sock)
    except BaseException:
        sock.close()
        raise
    return sock


#: The longest one wait lasts: a selector cannot express much more (epoll: about 24 days),
#: and waking early is harmless.
MAX_WAIT = 3600.0


def wait_timeout(now: float, *deadlines: float | None) -> float | None:
    """Seconds from ``now`` to the earliest of ``deadlines`` (None if there is none), at
    most ``MAX_WAIT``."""
    due = [deadline for deadline in deadlines if deadline is not None]
    if not due:
        return None
    return min(max(0.0, min(due) - now), MAX_WAIT)


#: Stale timer entries tolerated beyond twice the live ones before the heap is rebuilt.
_STALE_SLACK = 64


class TimerHeap:
    """One lazily moved timer per connection, set by its ``SetTimer`` actions.

    ``set`` pushes only when a timer moves earlier; one moved later fires at its old time,
    which costs a harmless early ``on_deadline`` (after which the core tells the timer
    again). Entries left behind (moved, forgotten) are dropped when they reach the top, and
    the heap is rebuilt from the armed timers whenever they outnumber the live ones, so memory
    follows the live connections, never the closed ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._armed: dict[Connection, float] = {}
        self._seq = itertools.count()

    def set(self, conn: Connection, at: float | None) -> None:
        if at is None:
            self.forget(conn)
            return
        current = self._armed.get(conn)
        if current is None or at < current:
            self._armed[conn] = at
            heapq.heappush(self._heap, (at, next(self._seq), conn))
            self._compact()

    def forget(self, conn: Connection) -> None:
        if self._armed.pop(conn, None) is not None:
            self._compact()

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._armed) + _STALE_SLACK:
            seq = self._seq
            self._heap = [(deadline, next(seq), conn) for conn, deadline in self._armed.items()]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        """Entries held, stale ones included (what the compaction bounds)."""
        return len(self._heap)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._armed.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale entry
        return heap[0][0] if heap else None

    def expired(self, now: float) -> list[Connection]:
        """Connections whose timer is due (each disarmed until its next ``SetTimer``)."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if self._armed.get(conn) == deadline:
                del self._armed[conn]
                due.append(conn)
        return due


class WakeSocket:
    """A socket pair whose reading end a loop waits on: a byte written to the other end ends
    the wait. Any thread may ``wake()``; a signal's C handler writes to ``signal_fd`` (see
    ``signals_wake``). The writing end never blocks: a full pair already has a wake-up
    pending."""

    def __init__(self, *, blocking_reader: bool = False) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(blocking_reader)
        self._writer.setblocking(False)
        # wake() must never write to a closed (and maybe reused) fd number. Re-entrant: a
        # signal handler calling stop() may interrupt the loop thread while it holds the lock.
        self._lock = threading.RLock()

    @property
    def signal_fd(self) -> int:
        return self._writer.fileno()

    def wake(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # BlockingIOError: one is pending
            self._writer.send(b"\0")

    def drain(self) -> None:
        """Read every pending wake-up (from a non-blocking reading end)."""
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        with self._lock:
            self.reader.close()
            self._writer.close()


@contextlib.contextmanager
def signals_wake(fd: int) -> Iterator[None]:
    """While a loop runs on the main thread, have every signal also write a byte to ``fd``.

    Python runs a signal's handler between two bytecodes of the main thread; a signal that
    lands after the loop's last bytecode and before its wait (select, io_uring_enter) would
    otherwise leave the loop waiting, the handler pending, until something else wakes it
    (https://docs.python.org/3/library/signal.html#signal.set_wakeup_fd). Elsewhere than on
    the main thread there is nothing to do: signal handlers only run there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)


class JobPool:
    """A bounded pool of worker threads whose finished jobs queue up for the loop thread.

    Its own threads over one queue rather than ``concurrent.futures``: a job needs no future
    (its result travels in the job), and a WSGI call is a job per request, where the
    executor's future, condition and semaphore per job cost more than the hand-off itself.
    Threads start as jobs need them, up to ``workers``.
    """

    def __init__(self, workers: int, wake: Callable[[], None]) -> None:
        self._workers = workers
        self._wake = wake
        self._todo: queue.SimpleQueue[tuple[Connection, Job] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[Connection, Job]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job, or about to
        self._lock = threading.Lock()  # (for _idle)
        self._woken = False  # a wake-up is on its way and finished() has not run since

    def submit(self, conn: Connection, job: Job) -> None:
        with self._lock:
            start = not self._idle and len(self._threads) < self._workers
            if not start:
                self._idle -= 1  # one of them takes this job
        if start:
            thread = threading.Thread(
                target=self._work, name=f"spcore-job-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._todo.put((conn, job))

    def _work(self) -> None:
        todo, done, lock = self._todo, self._done, self._lock
        while True:
            item = todo.get()
            if item is None:
                return
            item[1].run()
            with lock:
                self._idle += 1
            done.put(item)
            if not self._woken:  # one wake-up for the jobs that finish before the loop looks
                self._woken = True
                self._wake()

    def finished(self) -> list[tuple[Connection, Job]]:
        """Jobs that finished since the last call (loop thread)."""
        self._woken = False  # (before looking: a job put after this wakes the loop again)
        if self._done.empty():  # (the common case, without an exception)
            return []
        done = []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                return done

    def shutdown(self) -> None:
        """Wait for the running jobs, then hand every finished one back to its connection
        (the contract: every job taken comes back, even when the driver is stopping)."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._todo.put(None)
        for thread in threads:
            thread.join()
        for conn, job in self.finished():
            conn.job_done(job, time.monotonic())


class Driver(abc.ABC, Generic[_L]):
    """A driver: construct with a server, ``bind()``, then ``run()`` until the server says
    ``Exit``. The driver ritual is here, once; a subclass only makes the platform's calls.

    ``drive(conn, now)`` carries out a connection's actions (after every call into it):
    ``send``, ``read``, ``shut_write`` and ``close`` are the subclass's, with ``settle`` after
    the last one; timers go to ``timers`` and jobs to ``jobs``. ``follow(now)`` runs the calls
    handed over and carries out the server's actions: ``accepting``, ``stop_accepting``,
    ``drive`` for each connection to sync, the server's timer (``server_timer``); it answers
    False once the server says ``Exit``. ``expire(now)`` fires the timers that are due,
    ``finish_jobs(now)`` hands finished jobs back, and ``end(now)`` ends what a loop leaves.

    ``call_soon_threadsafe(fn, *args)`` may be called from any thread (or a signal handler)
    to run ``fn`` on the loop thread; ``stop()`` hands the server's stop request over that way.
    A subclass implements ``probe``, ``run``, ``wake`` and the connection hooks; one that
    makes outbound connections (the ``Connect`` action) implements ``start_connect`` and says
    so with ``connects = True`` (without, every outbound connection fails at once).

    ``app_loop()`` is the asyncio loop hosted applications' coroutines (ASGI) run on: by
    default one companion thread's, which every driver thus offers; a driver with an asyncio
    loop of its own lends that instead.
    """

    name: ClassVar[str]
    #: Whether this driver carries out ``Connect`` (an optional capability: the conformance
    #: suite's outbound scenarios skip, saying so, for a driver that does not declare it).
    connects: ClassVar[bool] = False

    def __init__(self, server: Server) -> None:
        self.server = server
        self.bound: list[Bound] = []
        #: The driver's side of each live connection.
        self.links: dict[Connection, _L] = {}
        self.timers = TimerHeap()
        self.jobs = JobPool(server.worker_threads, lambda: self.wake())
        #: When the server's timer is due (its latest ``SetTimer``).
        self.server_timer: float | None = None
        self._calls = CallQueue(lambda: self.wake())  # (looked up at each call)
        self._app_loop: AppLoop | None = None
        server.attach(self.call_soon_threadsafe)

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """Whether this driver can run here, and a sentence saying why (not)."""

    def app_loop(self) -> AppLoop:
        """The asyncio loop application coroutines run on (``spcore.drivers.gateway``),
        made at the first call: here a companion thread's, with which the core and the
        application exchange calls through the thread-safe wake-ups of both loops. Whoever
        asked for it closes it (``AppLoop.close()``) once ``run()`` has returned."""
        if self._app_loop is None:
            from .gateway.apploop import CompanionLoop  # (asyncio only for those who host)

            self._app_loop = CompanionLoop(f"spcore-app-loop-{self.name}")
        return self._app_loop

    def bind(self) -> list[Bound]:
        """Create the listening sockets (raises OSError for a bad or busy address)."""
        backlog = self.server.listen_backlog
        try:
            for listener in self.server.listeners:
                self.bound.append(Bound(listener, bind_listener(listener, backlog)))
        except BaseException:
            self.close_listeners()
            raise
        return self.bound

    def close_listeners(self) -> None:
        for bound in self.bound:
            bound.close()

    @abc.abstractmethod
    def run(self) -> None:
        """Serve until the server's stop sequence ends (``Exit``)."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Interrupt the loop's wait (thread-safe, and safe in a signal handler)."""

    # -- the calls handed to the loop thread ----------------------------------------------------

    def stop(self) -> None:
        """Ask for the graceful stop; safe from any thread and from signal handlers. Before
        ``run()`` it is kept for its start; once the driver stopped it does nothing."""
        self.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        self.server.request_stop(self.server.now)

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the loop thread soon (see ``CallQueue``): True if it will run,
        exactly once, after every call this thread made before; False once the driver has
        stopped, when it never will. Calls made before ``run()`` run when it starts."""
        return self._calls.post(fn, args)

    # -- the ritual -----------------------------------------------------------------------------

    def follow(self, now: float) -> bool:
        """Run the calls handed over, then carry out the server's actions; False on ``Exit``."""
        for fn, args in self._calls.take():
            self.server.call(fn, args, now)
        server = self.server
        while (action := server.next_action()) is not None:
            if type(action) is Sync:
                self.drive(action.conn, now)
            elif type(action) is Connect:
                self.connect(action.conn, action.address, now)
            elif type(action) is Accepting:
                self.accepting(action.on)
            elif type(action) is SetTimer:
                self.server_timer = action.at
            elif type(action) is CloseListeners:
                self.stop_accepting()
            else:  # Exit
                return False
        return True

    def drive(self, conn: Connection, now: float) -> None:
        """Carry out ``conn``'s actions until it has none, then ``settle`` its link."""
        link = self.links.get(conn)
        if link is None:
            return  # closed already
        try:
            while (action := conn.next_action()) is not None:
                if type(action) is Send:
                    self.send(link, action, now)
                elif type(action) is Read:
                    self.read(link, action.on)
                elif type(action) is SetTimer:
                    self.timers.set(conn, action.at)
                elif type(action) is RunJobs:
                    for job in action.jobs:
                        self.jobs.submit(conn, job)
                elif type(action) is ShutWrite:
                    self.shut_write(link)
                else:  # Close
                    self.close(link, None, now)
                    return
            self.settle(link)
        except OSError as exc:  # the socket failed: the connection ends with that error
            self.close(link, exc, now)

    def expire(self, now: float) -> None:
        """Fire the connections' timers and the server's that are due."""
        for conn in self.timers.expired(now):
            conn.on_deadline(now)
            self.drive(conn, now)
        if self.server_timer is not None and now >= self.server_timer:
            self.server_timer = None  # fired: disarmed until the next SetTimer
            self.server.on_deadline(now)

    def finish_jobs(self, now: float) -> None:
        """Hand the finished jobs back (even to a connection that has gone)."""
        for conn, job in self.jobs.finished():
            conn.job_done(job, now)
            self.drive(conn, now)

    def wait_timeout(self) -> float | None:
        """How long the loop may wait: until the earliest timer."""
        return wait_timeout(time.monotonic(), self.timers.next_deadline(), self.server_timer)

    def end(self, now: float) -> None:
        """The loop is over: refuse later calls and run those accepted before, end every
        connection left (a loop that failed), and hand back every job."""
        for fn, args in self._calls.close():
            self.server.call(fn, args, now)
        for link in list(self.links.values()):
            self.close(link, ConnectionAbortedError("driver stopped"), now)
        self.jobs.shutdown()

    def forget(self, conn: Connection, error: BaseException | None, now: float) -> None:
        """The end of a connection's link: out of the registry and the timers, then the
        core's one exit path."""
        del self.links[conn]
        self.timers.forget(conn)
        conn.connection_lost(error, now)

    # -- the platform's calls, per driver -------------------------------------------------------

    @abc.abstractmethod
    def send(self, link: _L, send: Send, now: float) -> None:
        """Write ``send``'s buffers; report ``conn.sent(n, now)`` once the kernel took ``n``
        of them (now or later). Raise ``OSError`` if the socket failed."""

    @abc.abstractmethod
    def read(self, link: _L, on: bool) -> None:
        """Keep reading (a receive posted, the socket polled) while ``on``."""

    @abc.abstractmethod
    def shut_write(self, link: _L) -> None:
        """Shut the write side now (raise ``OSError`` if the socket failed)."""

    @abc.abstractmethod
    def close(self, link: _L, error: BaseException | None, now: float) -> None:
        """Close the socket, dropping what is unsent, and end the link (``forget``); once."""

    def connect(self, conn: Connection, address: tuple[str, int] | str, now: float) -> None:
        """Carry out a ``Connect``: a socket for ``address`` (``outbound_socket``), then
        ``start_connect``; a socket that cannot be made fails the connection at once, as
        does every ``Connect`` of a driver that does not declare ``connects``."""
        if not self.connects:
            error = OSError(
                errno.EOPNOTSUPP, f"the {self.name} driver makes no outbound connections"
            )
            conn.connection_lost(error, now)
            return
        try:
            sock = self.outbound_socket(address)
        except OSError as exc:
            conn.connection_lost(exc, now)
            return
        self.start_connect(conn, sock, address, now)

    def outbound_socket(self, address: tuple[str, int] | str) -> socket.socket:
        """The socket of a ``Connect`` (``outbound_socket``'s, unless the platform wants
        another: blocking, bound first...)."""
        return outbound_socket(address)

    def start_connect(
        self, conn: Connection, sock: socket.socket, address: tuple[str, int] | str, now: float
    ) -> None:
        """Connect ``sock`` to ``address`` for ``conn``: make its link, report
        ``conn.connected(local, now)`` once connected, then ``drive`` it; a failure ends the
        link with the error (``close``). Drivers that declare ``connects`` implement it."""
        raise NotImplementedError

    def settle(self, link: _L) -> None:
        """After a connection's last action: apply what they left (register, post)."""

    def accepting(self, on: bool) -> None:
        """Poll or post accepts on the listening sockets while ``on``."""

    def stop_accepting(self) -> None:
        """Stop accepting for good and close the listening sockets."""
        self.accepting(False)
        self.close_listeners()
