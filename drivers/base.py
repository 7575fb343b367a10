"""What every driver shares: listening sockets, the worker pool, the timer heap, stopping.

These are mechanisms, not policy: how many workers, the backlog, every timeout come from the
server's ``Limits``; when to read, write, close or time out comes from the connections.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from spcore.addresses import describe_address
from spcore.connection import Connection
from spcore.jobs import Job
from spcore.server import Listener, Server

from .listening import SocketFile, bind_listener

__all__ = ["Bound", "Driver", "JobPool", "TimerHeap", "bind_listener"]

log = logging.getLogger("spcore.driver")

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
    """One lazily re-armed timer per connection.

    ``arm`` pushes only when a deadline moves earlier; a timer that fires before the
    connection's current deadline costs one harmless early ``on_deadline`` call and is
    re-armed by the sync that follows. Entries left behind (moved, forgotten) are dropped
    when they reach the top, and the heap is rebuilt from the armed timers whenever they
    outnumber the live ones, so memory follows the live connections, never the closed ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._armed: dict[Connection, float] = {}
        self._seq = itertools.count()

    def arm(self, conn: Connection) -> None:
        deadline = conn.deadline
        if deadline is None:
            return
        current = self._armed.get(conn)
        if current is None or deadline < current:
            self._armed[conn] = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), conn))
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
        """Connections whose timer is due (each removed; sync re-arms them)."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if self._armed.get(conn) == deadline:
                del self._armed[conn]
                due.append(conn)
        return due


class JobPool:
    """A bounded thread pool whose finished jobs queue up for the loop thread."""

    def __init__(self, workers: int, wake: Callable[[], None]) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._workers = workers
        self._wake = wake
        self._done: queue.SimpleQueue[tuple[Connection, Job]] = queue.SimpleQueue()

    def submit(self, conn: Connection, job: Job) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="spcore-job")
        self._executor.submit(self._run, conn, job)

    def _run(self, conn: Connection, job: Job) -> None:
        job.run()
        self._done.put((conn, job))
        self._wake()

    def finished(self) -> list[tuple[Connection, Job]]:
        """Jobs that finished since the last call (loop thread)."""
        done = []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                return done

    def shutdown(self) -> None:
        """Wait for the running jobs, then hand every finished one back to its connection
        (the contract: every job taken comes back, even when the driver is stopping)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=False)
            self._executor = None
        for conn, job in self.finished():
            conn.job_done(job, time.monotonic())


class Driver(abc.ABC):
    """A driver: construct with a server, ``bind()``, then ``run()`` until shutdown ends.

    ``stop()`` may be called from any thread (or a signal handler) to begin the graceful
    shutdown the server decides.
    """

    name: ClassVar[str]

    def __init__(self, server: Server) -> None:
        self.server = server
        self.bound: list[Bound] = []
        self._stop_requested = threading.Event()

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """Whether this driver can run here, and a sentence saying why (not)."""

    def bind(self) -> list[Bound]:
        """Create the listening sockets (raises OSError for a bad or busy address)."""
        backlog = self.server.limits.listen_backlog
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
        """Serve until the server's graceful shutdown has finished."""

    @property
    def stop_requested(self) -> bool:
        """``stop()`` was called: the loop should begin the server's graceful shutdown."""
        return self._stop_requested.is_set()

    def stop(self) -> None:
        """Ask for a graceful shutdown; safe from any thread and from signal handlers."""
        self._stop_requested.set()
        self.wake()

    @abc.abstractmethod
    def wake(self) -> None:
        """Interrupt the loop's wait (thread-safe)."""
