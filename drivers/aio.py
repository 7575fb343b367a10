"""The ``asyncio`` driver: the core on asyncio's Protocol/Transport API.

It runs wherever asyncio does: the selector loop on Unix, the Proactor loop on Windows, and
uvloop when asked for (``loop="uvloop"``). The loop owns the sockets; this module only
translates its callbacks into calls on the core and carries out the core's actions.

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
  socket awaits ``loop.sock_accept`` while the core's ``Accepting`` action says on, and hands
  each socket to ``loop.connect_accepted_socket``; a failed accept goes to
  ``server.accept_failed``, which pauses accepting. A connection accepted just as the core
  stopped accepting waits in its task (as it would have in the backlog) until the core
  accepts again; once the listeners close it is refused. ``CloseListeners`` takes the
  listening sockets out of the loop before it cancels the accept tasks, so that an accept
  cannot complete into a cancelled task (on the Proactor loop, which has no readers to
  remove, a connection accepted as the stop comes may be dropped uncounted).
* What "sent" means here. A transport buffers what the kernel does not take at once, so the
  transport's write buffer limits are 0: after writing a ``Send`` the driver reports it sent
  only when ``get_write_buffer_size()`` is 0, at once or at the ``resume_writing`` that says
  the transport has handed its last byte to the kernel. Until then the bytes stay in the
  core, counted by its high-water mark and timed by its send timeout, as with any socket;
  and when the core closes, the transport holds nothing, so ``Close`` is an ``abort()``.
* Outbound connections: a task awaits ``loop.sock_connect`` on a non-blocking socket, then
  gives it its transport as an accepted socket gets one (``connect_accepted_socket``, which
  takes TCP and Unix sockets alike, on every loop). A ``Close`` while it connects (the
  connect timeout) cancels the task and closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Literal, cast

from spcore.actions import Send
from spcore.connection import Connection
from spcore.server import Server

from .base import READ_SIZE, Bound, Driver, WakeSocket, prepare_accepted, signals_wake
from .gateway.apploop import AppLoop, OwnLoop

__all__ = ["AsyncioDriver", "LoopName", "UvloopDriver"]

LoopName = Literal["default", "uvloop"]

log = logging.getLogger("spcore.driver")


class _Link(asyncio.BufferedProtocol):
    """The driver's side of one connection: asyncio's callbacks, handed to the driver."""

    __slots__ = (
        "closed",
        "conn",
        "connecting",
        "driver",
        "error",
        "reading",
        "sending",
        "transport",
    )

    def __init__(self, driver: AsyncioDriver, conn: Connection) -> None:
        self.driver = driver
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        #: An outbound connect in progress: its task, until the transport is made.
        self.connecting: asyncio.Task[None] | None = None
        self.reading = True  # a new transport reads
        self.sending: Send | None = None  # written, and the transport still holds some of it
        self.closed = False  # aborted: connection_lost is on its way
        self.error: BaseException | None = None  # a failure we saw before asyncio did

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.driver._made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.driver._read_buffer  # shared: every loop fills it and calls back at once

    def buffer_updated(self, nbytes: int) -> None:
        self.driver._received(self, bytes(self.driver._read_buffer[:nbytes]))

    def eof_received(self) -> bool:
        self.driver._received(self, b"")
        return True  # keep our side open: the core decides when to close

    def pause_writing(self) -> None:
        pass  # the Send is in flight until resume_writing: nothing else to do

    def resume_writing(self) -> None:
        self.driver._drained(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver._lost(self, exc)


class AsyncioDriver(Driver[_Link]):
    name = "asyncio"
    connects = True

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
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self._may_accept = asyncio.Event()  # follows the Accepting actions
        self._acceptors: list[asyncio.Task[None]] = []  # one per listening socket
        self._connecting: set[asyncio.Task[None]] = set()  # transports being made
        self._listening = True  # the listening sockets are not closed yet
        self._serving = False  # run() serves: wake-ups have calls to run
        self._stopped = False  # the loop is over: wake-ups find nothing to do
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # for the earliest of the timers
        self._timer_at: float | None = None

    # -- the loop -------------------------------------------------------------------------------

    def app_loop(self) -> AppLoop:
        """This driver's own loop, lent to applications: made now if ``run()`` has not made
        it yet, and then closed by ``AppLoop.close()`` rather than when ``run()`` returns, so
        that an application's startup and shutdown run on it too."""
        if self._app_loop is None:
            if self._loop is None:
                self._loop = self._new_loop()
            self._app_loop = OwnLoop(self._loop, self._call_here)
        return self._app_loop

    def _call_here(self, fn: Callable[..., object], *args: object) -> bool:
        """``call_soon_threadsafe`` for the application's coroutines on this very loop: while
        serving, the call runs at once, and its actions with it, as in any of the loop's
        callbacks (no self-pipe write, no extra pass of the loop per response: a coroutine's
        ``send()`` is written out before it returns, as uvicorn does). Never from a signal
        handler, which may interrupt a callback: that takes ``call_soon_threadsafe``."""
        if not self._serving or self._stopped:
            return self._calls.post(fn, args)  # (kept before run(), refused after)
        now = self._now()
        self.server.call(fn, args, now)
        self._after(now)
        return True

    def run(self) -> None:
        server = self.server
        if not self.bound:
            self.bind()
        loop = self._loop if self._loop is not None else self._new_loop()
        server.info["driver"] = self.name
        server.info["loop"] = type(loop).__name__
        self._done = loop.create_future()
        self._loop = loop
        # asyncio's loop has a signal wake-up only for add_signal_handler()'s signals; the
        # server's handlers are signal.signal() ones (uvloop sets its own, then puts ours back).
        waker = WakeSocket()
        loop.add_reader(waker.reader, waker.drain)
        try:
            with signals_wake(waker.signal_fd):
                loop.run_until_complete(self._serve(loop))
        finally:
            try:
                self._teardown(loop)
            finally:
                loop.remove_reader(waker.reader)
                waker.close()
                if self._app_loop is None:  # (else lent: its owner closes it)
                    loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self.server.start(loop.time(), time.time())
        self._serving = True
        self._after()  # calls handed over before the start (a stop, say)
        assert self._done is not None
        await self._done

    def wake(self) -> None:
        loop = self._loop
        if loop is None:
            return  # run() looks for calls once it has started
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        # (Not before run() serves: the loop may run an application's startup first.)
        if self._serving and not self._stopped:
            self.finish_jobs(self._now())
            self._after()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _after(self, now: float | None = None) -> None:
        """After every callback: the calls handed over and the server's actions, then one
        loop timer for the earliest of the connections' and the server's."""
        now = self._now() if now is None else now
        if not self.follow(now):
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            return
        at = self.timers.next_deadline()
        if self.server_timer is not None and (at is None or self.server_timer < at):
            at = self.server_timer
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            assert self._loop is not None
            self._timer = None if at is None else self._loop.call_at(at, self._due)
            self._timer_at = at

    def _due(self) -> None:
        """The loop timer (early, as uvloop rounds, is harmless: nothing is due yet)."""
        self._timer = self._timer_at = None
        now = self._now()
        self.expire(now)
        self._after(now)

    # -- accepting ------------------------------------------------------------------------------

    def accepting(self, on: bool) -> None:
        """The accept tasks wait while accepting is off."""
        if not on:
            self._may_accept.clear()
            return
        self._may_accept.set()
        if not self._acceptors:
            assert self._loop is not None
            self._acceptors = [self._loop.create_task(self._accept(bound)) for bound in self.bound]

    def stop_accepting(self) -> None:
        """For good. The listening sockets leave the loop at once, so that no accept
        completes any more; the tasks are cancelled a pass later, once an accept that did
        complete has reached its task, which then refuses it; then the sockets close."""
        self._may_accept.clear()
        if not self._listening:
            return
        self._listening = False
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
            except Exception as exc:  # a bug: logged, and paused like a failed accept
                log.exception("accepting on %s failed", bound.address)
                self._accept_failed(exc)

    async def _accept_one(self, bound: Bound) -> None:
        loop = self._loop
        assert loop is not None
        await self._may_accept.wait()
        try:
            sock, peer = await loop.sock_accept(bound.sock)
        except OSError as exc:
            self._accept_failed(exc)  # the core pauses accepting
            return
        try:
            # The core stopped accepting meanwhile: wait here, as in the listen backlog (in a
            # loop: another listener's task may take the slot first).
            while not self._may_accept.is_set():
                await self._may_accept.wait()
        except asyncio.CancelledError:
            self.server.refused()
            sock.close()
            raise
        self._admit(bound, sock, peer)

    def _accept_failed(self, error: Exception) -> None:
        now = self._now()
        self.server.accept_failed(error, now)
        self._after(now)

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

    # -- connecting -----------------------------------------------------------------------------

    def start_connect(
        self, conn: Connection, sock: socket.socket, address: tuple[str, int] | str, now: float
    ) -> None:
        link = self.links[conn] = _Link(self, conn)
        assert self._loop is not None
        link.connecting = self._loop.create_task(self._dial(link, sock, address))
        self.drive(conn, now)  # its timer, the connect timeout

    async def _dial(self, link: _Link, sock: socket.socket, address: tuple[str, int] | str) -> None:
        """Connect, then make the transport (``_made`` reports the connect to the core)."""
        loop = self._loop
        assert loop is not None
        try:
            await loop.sock_connect(sock, address)
            await loop.connect_accepted_socket(lambda: link, sock)
        except asyncio.CancelledError:
            sock.close()  # a Close while connecting (close() ended the link)
            raise
        except OSError as exc:
            sock.close()
            if link.transport is None and link.conn in self.links:
                now = self._now()
                link.closed = True
                self.forget(link.conn, exc, now)
                self._after(now)

    # -- asyncio's callbacks, through _Link ----------------------------------------------------

    def _made(self, link: _Link) -> None:
        transport = link.transport
        assert transport is not None
        transport.set_write_buffer_limits(high=0, low=0)  # resume_writing: all handed over
        if link.closed:  # an outbound connection given up while its transport was being made
            transport.abort()
            return
        if link.connecting is not None:  # an outbound connection: it connected
            link.connecting = None
            now = self._now()
            link.conn.connected(transport.get_extra_info("sockname"), now)
            self._callback(link, None, now)
            return
        self.links[link.conn] = link
        self._callback(link, None)

    def _received(self, link: _Link, data: bytes) -> None:
        if not link.closed:
            self._callback(link, data)

    def _drained(self, link: _Link) -> None:
        """The transport handed the last byte of the Send in flight to the kernel."""
        send, link.sending = link.sending, None
        if send is not None and not link.closed:
            now = self._now()
            link.conn.sent(send.nbytes, now)
            self._callback(link, None, now)

    def _callback(self, link: _Link, data: bytes | None, now: float | None = None) -> None:
        now = self._now() if now is None else now
        if data is not None:
            link.conn.receive_data(data, now)
        self.drive(link.conn, now)
        self._after(now)

    def _lost(self, link: _Link, error: BaseException | None) -> None:
        if link.conn in self.links:  # (not if already ended by _teardown)
            now = self._now()
            link.closed = True
            self.forget(link.conn, error or link.error, now)
            self._after(now)

    # -- one connection -------------------------------------------------------------------------

    def send(self, link: _Link, send: Send, now: float) -> None:
        transport = link.transport
        assert transport is not None
        if not transport.is_closing():
            transport.writelines(send.buffers)
        if transport.is_closing():  # the write failed: connection_lost is on its way
            raise ConnectionError("the transport failed while writing")
        if transport.get_write_buffer_size():
            link.sending = send  # reported sent at resume_writing
        else:
            link.conn.sent(send.nbytes, now)

    def read(self, link: _Link, on: bool) -> None:
        transport = link.transport
        assert transport is not None
        if on is not link.reading:
            link.reading = on
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def shut_write(self, link: _Link) -> None:
        transport = link.transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()

    def close(self, link: _Link, error: BaseException | None, now: float) -> None:
        """Abort the transport (it holds nothing the core counts as sent); asyncio's
        ``connection_lost`` ends the link."""
        if link.closed:
            return
        link.closed = True
        link.error = link.error or error
        if link.transport is None:  # still connecting: no transport to report the end
            assert link.connecting is not None
            link.connecting.cancel()
            self.forget(link.conn, link.error, now)
            return
        link.transport.abort()

    # -- the end --------------------------------------------------------------------------------

    def _teardown(self, loop: asyncio.AbstractEventLoop) -> None:
        """End what a normal stop left (nothing, unless run() failed), then wait for jobs."""
        self._stopped = True
        self.stop_accepting()
        for link in list(self.links.values()):
            if link.transport is None:  # an outbound connect still waiting: give it up
                self.close(link, ConnectionAbortedError("driver stopped"), loop.time())
        pending = [*self._acceptors, *self._connecting]
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        self._end_accepting()  # (if nothing was pending, the loop did not run it)
        now = loop.time()
        for conn, link in list(self.links.items()):
            if link.transport is not None:
                link.transport.abort()
            link.closed = True
            self.forget(conn, ConnectionAbortedError("driver stopped"), now)
        if self._timer is not None:
            self._timer.cancel()
        self.end(now)
        loop.run_until_complete(asyncio.sleep(0))  # let the transports finish closing


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
