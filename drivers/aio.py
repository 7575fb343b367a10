"""The ``asyncio`` driver: the core on asyncio's Protocol/Transport API.

It runs wherever asyncio does: the selector loop on Unix, the Proactor loop on Windows, and
uvloop when asked for (``loop="uvloop"``). The loop owns the sockets; this module only
translates its callbacks into calls on the core and syncs the connections afterwards.

Choices worth knowing:

* A ``BufferedProtocol`` reading into one buffer of ``READ_SIZE`` shared by all connections
  (every loop, Proactor and uvloop included, fills it and calls ``buffer_updated`` at once),
  copied out as ``bytes`` of the size read, since the core keeps what it is given. wrk could
  not tell it from a plain ``Protocol`` (hello world, within noise), but a plain protocol on
  the selector loop costs one ``recv(256 KiB)`` object per read, which glibc serves with
  mmap/mremap/munmap until its mmap threshold has grown (about 28 us per read instead of 5),
  and the Proactor loop hands a plain protocol ``bytearray`` slices; this way costs one copy
  of what was read, whatever the loop and the allocator's history.
* Accepting. Not ``asyncio.Server``, which cannot pause, accepts its whole backlog in one
  batch whatever the core says, and handles running out of descriptors by itself (CPython
  3.11 then retries once per backlog slot; libuv accepts and closes). One task per listening
  socket awaits ``loop.sock_accept`` while ``server.accepting`` holds and hands each socket to
  ``loop.connect_accepted_socket``; a failed accept goes to ``server.accept_failed``, which
  pauses accepting. A connection accepted just as the core stopped accepting waits in its task
  (as it would have in the backlog) until the core accepts again; at shutdown it is refused.
  Stopping takes the listening sockets out of the loop before it cancels the accept tasks,
  so that an accept cannot complete into a cancelled task (on the Proactor loop, which has no
  readers to remove, a connection accepted as the stop comes may be dropped uncounted).
* Back-pressure. The core's output goes to the transport in batches of at most the
  transport's high-water mark and is reported sent at once, but only while the transport has
  not paused writing; otherwise it stays in the core, which then stops producing and reading
  and runs its send timeout. Reading follows ``conn.reading`` (``pause_reading()``).
* Closing. The core's ``connection_lost`` is called from asyncio's ``connection_lost``, once.
  A transport is aborted when the core still held output (it is dropping it) or when it
  already waited its close timeout for a peer that never ended; otherwise ``close()`` lets the
  transport flush the tail it holds, as a kernel does for a closed socket, within
  ``Limits.send_timeout`` (the rule for output the core holds). When the shutdown
  grace period ends, every transport still flushing is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast

from spcore.connection import Connection
from spcore.jobs import Job
from spcore.server import Server

from .base import READ_SIZE, Bound, Driver, prepare_accepted

__all__ = ["AsyncioDriver", "LoopName", "UvloopDriver"]

#: The transport's write buffer limit, and the most handed to it in one write.
_HIGH_WATER = 64 * 1024

LoopName = Literal["default", "uvloop"]

log = logging.getLogger("spcore.driver")


class _Link(asyncio.BufferedProtocol):
    """The driver's side of one connection: asyncio's callbacks, handed to the driver."""

    __slots__ = (
        "closing",
        "conn",
        "driver",
        "eof_seen",
        "eof_sent",
        "error",
        "paused",
        "reading",
        "timer",
        "timer_at",
        "transport",
    )

    def __init__(self, driver: AsyncioDriver, conn: Connection) -> None:
        self.driver = driver
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.paused = False  # the transport paused our writing
        self.reading = True
        self.closing = False  # we asked the transport to close
        self.eof_sent = False
        self.eof_seen = False
        self.error: BaseException | None = None  # a failure we saw before asyncio did
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.driver._made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.driver._read_buffer  # shared: every loop fills it and calls back at once

    def buffer_updated(self, nbytes: int) -> None:
        self.driver._received(self, bytes(self.driver._read_buffer[:nbytes]))

    def eof_received(self) -> bool:
        self.eof_seen = True
        self.driver._received(self, b"")
        return True  # keep our side open: the core decides when to close

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.driver._resumed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver._lost(self, exc)


class AsyncioDriver(Driver):
    name = "asyncio"

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        loop = asyncio.new_event_loop()
        try:
            kind = type(loop).__name__
        finally:
            loop.close()
        extra = "; uvloop available" if importlib.util.find_spec("uvloop") else ""
        return True, f"asyncio {kind}{extra}"

    def __init__(self, server: Server, *, loop: LoopName = "default") -> None:
        super().__init__(server)
        self._new_loop = _loop_factory(loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(server.limits.worker_threads, "spcore-job")
        self._links: dict[Connection, _Link] = {}
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self._jobs: set[asyncio.Future[None]] = set()
        self._may_accept = asyncio.Event()  # follows server.accepting
        self._acceptors: list[asyncio.Task[None]] = []  # one per listening socket
        self._connecting: set[asyncio.Task[None]] = set()  # transports being made
        self._serving = False  # started, not stopping: accepting may be on
        self._done: asyncio.Future[None] | None = None
        self._server_timer: asyncio.TimerHandle | None = None
        self._server_timer_at: float | None = None

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        server = self.server
        if not self.bound:
            self.bind()
        loop = self._new_loop()
        server.info["driver"] = self.name
        server.info["loop"] = type(loop).__name__
        self._done = loop.create_future()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(loop))
        finally:
            try:
                self._teardown(loop)
            finally:
                loop.close()
                self._pool.shutdown(wait=True)

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.server.start(now, time.time())
        self._serving = True
        if self.stop_requested:
            self._begin_stop(now)
        self._after(now)
        assert self._done is not None
        await self._done

    def wake(self) -> None:
        loop = self._loop
        if loop is None:
            return  # run() checks for a stop request once it has started
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(self._on_wake)

    def _on_wake(self) -> None:
        if not self._serving:
            return  # not started yet (run() looks itself), or already stopping
        now = self._now()
        if self.stop_requested:
            self._begin_stop(now)
        self._after(now)

    def _begin_stop(self, now: float) -> None:
        if self.server.shutting_down:
            return
        self._serving = False
        self._stop_accepting()
        self.server.begin_shutdown(now)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _after(self, now: float) -> None:
        """After every callback: sync the woken, follow ``accepting``, the server's timer, exit."""
        server = self.server
        for conn in server.take_woken():
            link = self._links.get(conn)
            if link is not None:
                self._sync(link, now)
        self._set_accepting(server.accepting)
        deadline = server.deadline
        if deadline is not None and deadline != self._server_timer_at:
            if self._server_timer is not None:
                self._server_timer.cancel()
            assert self._loop is not None
            self._server_timer = self._loop.call_at(deadline, self._server_deadline)
            self._server_timer_at = deadline
        if server.finished and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _server_deadline(self) -> None:
        """The server's deadline: the end of a pause in accepting or of the grace period."""
        self._server_timer = None
        now = self._now()
        at, self._server_timer_at = self._server_timer_at, None
        if at is not None and now < at:
            self._after(now)  # fired early (uvloop rounds to milliseconds): re-arm
            return
        self.server.on_deadline(now)
        self._after(now)
        if self.server.shutting_down:
            for link in self._links.values():
                if link.closing and link.transport is not None:
                    link.transport.abort()  # still flushing a tail: the grace period is over

    # -- accepting ------------------------------------------------------------------------------

    def _set_accepting(self, accepting: bool) -> None:
        """Follow ``server.accepting``: the accept tasks wait while it is False."""
        if not accepting:
            self._may_accept.clear()
            return
        if not self._serving:
            return
        self._may_accept.set()
        if not self._acceptors:
            assert self._loop is not None
            self._acceptors = [self._loop.create_task(self._accept(bound)) for bound in self.bound]

    def _stop_accepting(self) -> None:
        """For good. The listening sockets leave the loop at once, so that no accept
        completes any more; the tasks are cancelled a pass later, once an accept that did
        complete has reached its task, which then refuses it; then the sockets close."""
        self._may_accept.clear()
        loop = self._loop
        assert loop is not None
        for bound in self.bound:
            if bound.sock.fileno() >= 0:
                with contextlib.suppress(NotImplementedError):  # the Proactor loop: no readers
                    loop.remove_reader(bound.sock.fileno())
        loop.call_soon(self._end_accepting)

    def _end_accepting(self) -> None:
        for task in self._acceptors:
            task.cancel()
        self.close_listeners()

    async def _accept(self, bound: Bound) -> None:
        """Accept on one listening socket while the server accepts."""
        while True:
            try:
                await self._accept_one(bound)
            except Exception:  # a bug: logged, and this listener goes on accepting
                log.exception("accepting on %s failed", bound.address)
                await asyncio.sleep(self.server.limits.accept_pause)

    async def _accept_one(self, bound: Bound) -> None:
        loop = self._loop
        server = self.server
        assert loop is not None
        await self._may_accept.wait()
        try:
            sock, peer = await loop.sock_accept(bound.sock)
        except OSError as exc:
            now = self._now()
            server.accept_failed(exc, now)  # the core pauses accepting
            self._after(now)
            return
        try:
            # The core stopped accepting meanwhile: wait here, as in the listen backlog (in a
            # loop: another listener's task may take the slot first).
            while not self._may_accept.is_set():
                await self._may_accept.wait()
        except asyncio.CancelledError:
            server.refused()
            sock.close()
            raise
        self._admit(bound, sock, peer)

    def _admit(self, bound: Bound, sock: socket.socket, peer: Any) -> None:
        """Create the core's side of an accepted socket, then its transport (in a task)."""
        try:
            prepare_accepted(sock)
            local = sock.getsockname()
        except OSError as exc:  # it broke already (reset): one connection lost
            log.debug("accepted connection unusable: %s", exc)
            sock.close()
            self.server.refused()
            return
        now = self._now()
        conn = self.server.accept(bound.listener, peer, local, now)
        assert self._loop is not None
        task = self._loop.create_task(self._connect(_Link(self, conn), sock))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        self._after(now)

    async def _connect(self, link: _Link, sock: socket.socket) -> None:
        """Give an accepted socket its transport; ``connection_made`` reaches ``_made``."""
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: link, sock)
        except OSError as exc:  # the socket broke before it had a transport
            sock.close()
            if link.transport is None:
                now = self._now()
                link.conn.connection_lost(exc, now)
                self._after(now)

    # -- asyncio's callbacks, through _Link ----------------------------------------------------

    def _made(self, link: _Link) -> None:
        transport = link.transport
        assert transport is not None
        now = self._now()
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._links[link.conn] = link
        self._sync(link, now)
        self._after(now)

    def _received(self, link: _Link, data: bytes) -> None:
        conn = link.conn
        if link.closing:
            return
        now = self._now()
        conn.receive_data(data, now)
        self._sync(link, now)
        self._after(now)

    def _resumed(self, link: _Link) -> None:
        if link.conn not in self._links:
            return
        now = self._now()
        self._sync(link, now)
        self._after(now)

    def _lost(self, link: _Link, error: BaseException | None) -> None:
        conn = link.conn
        if conn not in self._links:
            return  # already ended by _teardown
        now = self._now()
        self._end(link, conn, error or link.error, now)
        self._after(now)

    def _end(self, link: _Link, conn: Connection, error: BaseException | None, now: float) -> None:
        del self._links[conn]
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        conn.connection_lost(error, now)

    # -- syncing a connection -------------------------------------------------------------------

    def _sync(self, link: _Link, now: float) -> None:
        """Apply the connection's wishes: close, write, shut down, read, time, jobs."""
        conn, transport = link.conn, link.transport
        assert conn is not None and transport is not None
        if link.closing or transport.is_closing():
            return  # connection_lost is on its way
        while True:
            if conn.should_close:
                self._close(link, conn, transport)
                return
            out = conn.outgoing()
            if out:
                if link.paused:
                    break
                batch, size = _batch(out, _HIGH_WATER)
                transport.writelines(batch)
                if transport.is_closing():
                    return  # the write failed: connection_lost is on its way
                conn.sent(size, now)
                continue
            if conn.write_eof:
                if transport.can_write_eof():
                    try:
                        transport.write_eof()
                    except OSError as exc:
                        link.error = exc
                        transport.abort()
                        return
                link.eof_sent = True
                conn.write_eof_done(now)
                continue
            break
        reading = conn.reading
        if reading != link.reading:
            link.reading = reading
            if reading:
                transport.resume_reading()
            else:
                transport.pause_reading()
        for job in conn.take_jobs():
            self._submit(link, conn, job)
        self._arm(link, conn)

    def _close(self, link: _Link, conn: Connection, transport: asyncio.Transport) -> None:
        link.closing = True
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        if conn.outgoing() or (link.eof_sent and not link.eof_seen):
            transport.abort()
            return
        transport.close()
        if transport.get_write_buffer_size():  # a tail the peer must take, as the core's own
            assert self._loop is not None  # output: within the send timeout, or be cut
            link.timer = self._loop.call_later(conn.limits.send_timeout, transport.abort)

    # -- timers and jobs ------------------------------------------------------------------------

    def _arm(self, link: _Link, conn: Connection) -> None:
        """Keep one timer per connection, moved only when the deadline comes earlier."""
        deadline = conn.deadline
        if deadline is None or (link.timer is not None and link.timer_at <= deadline):
            return
        if link.timer is not None:
            link.timer.cancel()
        assert self._loop is not None
        link.timer = self._loop.call_at(deadline, self._timer_fired, link)
        link.timer_at = deadline

    def _timer_fired(self, link: _Link) -> None:
        link.timer = None
        conn = link.conn
        if link.closing:
            return
        now = self._now()
        conn.on_deadline(now)
        self._sync(link, now)
        self._after(now)

    def _submit(self, link: _Link, conn: Connection, job: Job) -> None:
        assert self._loop is not None
        future = self._loop.run_in_executor(self._pool, job.run)
        self._jobs.add(future)
        future.add_done_callback(lambda f: self._job_finished(f, link, conn, job))

    def _job_finished(
        self, future: asyncio.Future[None], link: _Link, conn: Connection, job: Job
    ) -> None:
        self._jobs.discard(future)
        now = self._now()
        conn.job_done(job, now)  # even when the connection has gone: every job comes back
        if conn in self._links:
            self._sync(link, now)
        self._after(now)

    # -- the end --------------------------------------------------------------------------------

    def _teardown(self, loop: asyncio.AbstractEventLoop) -> None:
        """End what a normal shutdown left (nothing, unless run() failed), then wait for jobs."""
        self._serving = False
        self._stop_accepting()
        pending = [*self._acceptors, *self._connecting]
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        self._end_accepting()  # (if nothing was pending, the loop did not run it)
        now = loop.time()
        for conn, link in list(self._links.items()):
            if link.transport is not None:
                link.transport.abort()
            self._end(link, conn, ConnectionAbortedError("driver stopped"), now)
        if self._server_timer is not None:
            self._server_timer.cancel()
        if self._jobs:
            loop.run_until_complete(asyncio.wait(list(self._jobs)))
        loop.run_until_complete(asyncio.sleep(0))  # let the transports finish closing


def _batch(out: Sequence[bytes | memoryview], limit: int) -> tuple[list[bytes | memoryview], int]:
    """The first ``limit`` bytes of ``out`` (at least one byte), and their size."""
    batch: list[bytes | memoryview] = []
    size = 0
    for buf in out:
        room = limit - size
        if len(buf) > room:
            batch.append(memoryview(buf)[:room])
            return batch, limit
        batch.append(buf)
        size += len(buf)
        if size == limit:
            break
    return batch, size


class UvloopDriver(AsyncioDriver):
    """The asyncio driver on uvloop, registered under its own name so that it can be chosen,
    probed and certified like any other driver (``AsyncioDriver(server, loop="uvloop")``
    is the same thing)."""

    name = "uvloop"

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("uvloop") is None:
            return False, "uvloop is not installed (pip install spcore[uvloop])"
        return True, "asyncio Protocol/Transport on uvloop (libuv)"

    def __init__(self, server: Server) -> None:
        super().__init__(server, loop="uvloop")


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "default":
        return asyncio.new_event_loop
    if name == "uvloop":
        try:
            uvloop: Any = importlib.import_module("uvloop")
        except ImportError as exc:
            raise RuntimeError(f"loop='uvloop' needs uvloop installed ({exc})") from exc
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"unknown asyncio loop {name!r} (use 'default' or 'uvloop')")
