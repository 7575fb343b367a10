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
* Pausing the accept. ``asyncio.Server`` cannot pause, and ``close()`` closes its sockets. So
  each asyncio server is made on a ``dup()`` of the listening socket: pausing closes the
  asyncio server (only the duplicate), the listening socket itself stays open and the kernel
  keeps queueing connections in its backlog, and resuming makes a fresh asyncio server on a
  new duplicate. asyncio accepts in batches, so a few connections may still arrive after the
  core said no: those are counted with ``server.refused()`` and aborted.
* Back-pressure. The core's output goes to the transport in batches of at most the
  transport's high-water mark and is reported sent at once, but only while the transport has
  not paused writing; otherwise it stays in the core, which then stops producing and reading
  and runs its send timeout. Reading follows ``conn.reading`` (``pause_reading()``).
* Closing. The core's ``connection_lost`` is called from asyncio's ``connection_lost``, once.
  A transport is aborted when the core still held output (it is dropping it) or when it
  already waited its close timeout for a peer that never ended; otherwise ``close()`` lets the
  transport flush the tail it holds, as a kernel does for a closed socket. When the shutdown
  grace period ends, every transport still flushing is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast

from spcore.connection import Connection
from spcore.jobs import Job
from spcore.server import Listener, Server

from .base import READ_SIZE, Driver

__all__ = ["AsyncioDriver", "LoopName", "UvloopDriver"]

#: The transport's write buffer limit, and the most handed to it in one write.
_HIGH_WATER = 64 * 1024

LoopName = Literal["default", "uvloop"]


class _Link(asyncio.BufferedProtocol):
    """The driver's side of one connection: asyncio's callbacks, handed to the driver."""

    __slots__ = (
        "closing",
        "conn",
        "driver",
        "eof_seen",
        "eof_sent",
        "error",
        "listener",
        "paused",
        "reading",
        "timer",
        "timer_at",
        "transport",
    )

    def __init__(self, driver: AsyncioDriver, listener: Listener) -> None:
        self.driver = driver
        self.listener = listener
        self.conn: Connection | None = None  # None: refused
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
        self._servers: list[asyncio.AbstractServer] = []
        self._accepting = False
        self._epoch = 0  # bumped when accepting flips, so a late server creation backs off
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
        self._set_accepting(False)
        self.close_listeners()
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
        if accepting == self._accepting or (accepting and not self._serving):
            return
        self._accepting = accepting
        self._epoch += 1
        if accepting:
            assert self._loop is not None
            self._loop.create_task(self._open_servers(self._epoch))
        else:
            for srv in self._servers:
                srv.close()
            self._servers.clear()

    async def _open_servers(self, epoch: int) -> None:
        assert self._loop is not None
        backlog = self.server.limits.listen_backlog
        for bound in self.bound:
            if bound.sock.fileno() < 0 or epoch != self._epoch:
                return
            srv = await self._loop.create_server(
                functools.partial(_Link, self, bound.listener),
                sock=bound.sock.dup(),
                backlog=backlog,
            )
            if epoch != self._epoch:  # paused again while this was being made
                srv.close()
                return
            self._servers.append(srv)

    # -- asyncio's callbacks, through _Link ----------------------------------------------------

    def _made(self, link: _Link) -> None:
        transport = link.transport
        assert transport is not None
        server = self.server
        now = self._now()
        if not server.accepting:  # accepted in the same batch as the last one allowed
            server.refused()
            transport.abort()
            return
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        conn = server.accept(link.listener, peer, local, now)
        link.conn = conn
        self._links[conn] = link
        self._sync(link, now)
        self._after(now)

    def _received(self, link: _Link, data: bytes) -> None:
        conn = link.conn
        if conn is None or link.closing:
            return
        now = self._now()
        conn.receive_data(data, now)
        self._sync(link, now)
        self._after(now)

    def _resumed(self, link: _Link) -> None:
        if link.conn is None:
            return
        now = self._now()
        self._sync(link, now)
        self._after(now)

    def _lost(self, link: _Link, error: BaseException | None) -> None:
        conn = link.conn
        if conn is None or conn not in self._links:
            return  # refused, or already ended by _teardown
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
        else:
            transport.close()

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
        if conn is None or link.closing:
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
        self._set_accepting(False)
        self.close_listeners()
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
