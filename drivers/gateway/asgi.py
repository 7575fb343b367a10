"""The application half of ASGI: ``receive()``, ``send()`` and the tasks, on the app loop.

``AsgiRunner`` is the core's ``spcore.gateway.asgi.Runner``: it makes, for every request or
WebSocket session, the half that lives on the app loop (``AppLoop``), whose coroutines the
application awaits. What the messages mean and in which order they may come is checked by the
core's state machines (``ResponseState``, ``SessionState``); this module only waits and wakes:
a future per waiting coroutine, set when the loop half hands over what it waits for (a body
piece, a message, the client's end, credit for what was sent). Whatever goes back to the loop
thread goes through the connection's ``call_soon_threadsafe``. ``Lifespan`` runs the lifespan
protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from spcore.errors import ClientDisconnected
from spcore.gateway.asgi import (
    RESPONSE_WINDOW,
    HTTPCycle,
    ResponseState,
    Scope,
    SessionState,
    WebSocketCycle,
)
from spcore.gateway.lifespan import LifespanError, LifespanMode, lifespan_outcome, lifespan_scope

from .apploop import AppLoop

__all__ = ["ASGIApp", "AsgiRunner", "Lifespan"]

log = logging.getLogger("spcore.asgi")

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

_DISCONNECT = {"type": "http.disconnect"}  # (a fresh dict per call: the app may keep it)


class AsgiRunner:
    """Runs an ASGI 3 application's coroutines on ``app_loop`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, app_loop: AppLoop) -> None:
        self.app = app
        self.loop = app_loop.loop
        #: Hand a call to the app loop (the core calls it from the loop thread).
        self.call = app_loop.call
        #: Hand a call back to the loop thread, if the app loop has a cheaper way than the
        #: connection's ``call_soon_threadsafe``.
        self.post = app_loop.post
        self._tasks: set[asyncio.Task[None]] = set()  # (the loop holds its tasks weakly)

    def http(self, scope: Scope, cycle: HTTPCycle, body_done: bool) -> _HTTPApp:
        return _HTTPApp(self, scope, cycle, body_done)

    def websocket(self, scope: Scope, cycle: WebSocketCycle) -> _WebSocketApp:
        return _WebSocketApp(self, scope, cycle)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task, kept until it ends (it calls ``done`` last: a done callback
        would cost the loop another pass per request)."""
        self._tasks.add(self.loop.create_task(coro))

    def done(self) -> None:
        """The task calling this is ending."""
        task = asyncio.current_task(self.loop)
        if task is not None:
            self._tasks.discard(task)


class _Waiting:
    """A coroutine waiting for the loop half: a future made when someone waits, set by
    ``wake``."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        future = self._future = self._loop.create_future()
        try:
            await future
        finally:
            self._future = None

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)


def _wake(waiting: _Waiting | None) -> None:
    if waiting is not None:
        waiting.wake()


class _AppTask:
    """What both halves share: one task on the app loop, running the application's call
    and leaving the runner's set when it ends; how it ended (``_raised``, ``_returned``) is
    each half's to settle, outside the coroutine (a frame fewer per request)."""

    __slots__ = ()
    _runner: AsgiRunner
    _scope: Scope

    def start(self) -> None:
        self._runner.spawn(self._run())

    async def _run(self) -> None:
        try:
            await self._runner.app(self._scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise  # the app loop is closing
        except Exception as exc:
            self._raised(exc)
        else:
            self._returned()
        finally:
            self._runner.done()

    async def receive(self) -> Message:
        raise NotImplementedError

    async def send(self, message: Message) -> None:
        raise NotImplementedError

    def _raised(self, exc: Exception) -> None:
        raise NotImplementedError

    def _returned(self) -> None:
        raise NotImplementedError


class _HTTPApp(_AppTask):
    """The app loop's half of one ``http`` request (``spcore.gateway.asgi.HTTPApp``)."""

    __slots__ = (
        "_body",
        "_cycle",
        "_end_given",
        "_eof",
        "_lost",
        "_more",
        "_owed",
        "_post",
        "_receiving",
        "_response",
        "_runner",
        "_scope",
        "_sending",
        "_started",
    )

    def __init__(self, runner: AsgiRunner, scope: Scope, cycle: HTTPCycle, body_done: bool):
        self._runner = runner
        self._scope = scope
        self._cycle = cycle
        self._post = runner.post or cycle.post
        self._body: list[bytes] = []
        self._more = not body_done  # more of the body is to come
        self._end_given = False  # the message saying more_body False was received
        self._eof = False  # the client ended its side
        self._lost = False  # the exchange is over: send() raises
        self._owed = 0
        self._response = ResponseState()
        self._started = False  # the response's start went to the loop half
        self._receiving: _Waiting | None = None  # (made when a coroutine first waits)
        self._sending: _Waiting | None = None

    # -- handed over by the loop half ----------------------------------------------------------

    def body(self, chunk: bytes, more: bool) -> None:
        if chunk:
            self._body.append(chunk)
        self._more = more
        _wake(self._receiving)

    def eof(self) -> None:
        self._eof = True
        _wake(self._receiving)

    def lost(self) -> None:
        self._eof = self._lost = True
        _wake(self._receiving)
        _wake(self._sending)

    def credit(self, size: int) -> None:
        self._owed -= size
        if self._owed < RESPONSE_WINDOW:
            _wake(self._sending)

    def _receive_wait(self) -> _Waiting:
        if self._receiving is None:
            self._receiving = _Waiting(self._runner.loop)
        return self._receiving

    def _send_wait(self) -> _Waiting:
        if self._sending is None:
            self._sending = _Waiting(self._runner.loop)
        return self._sending

    # -- the application's ---------------------------------------------------------------------

    async def receive(self) -> Message:
        response = self._response
        while not self._body and self._more and not self._eof:
            await self._receive_wait().wait()
        if self._body or (not self._end_given and not self._more):
            body = self._body
            chunk = body[0] if len(body) == 1 else b"".join(body)
            self._body = []
            if chunk:
                self._post(self._cycle.taken, len(chunk))
            self._end_given = not self._more
            return {"type": "http.request", "body": chunk, "more_body": self._more}
        # The body was all received: what is left to say is that the client went (or that
        # nothing more will come, once the response is complete).
        while not self._eof and not response.complete:
            await self._receive_wait().wait()
        return dict(_DISCONNECT)

    async def send(self, message: Message) -> None:
        if self._lost:
            raise ClientDisconnected("the client disconnected")
        response = self._response
        part = response.feed(message)
        if part is None:
            return  # the start: it goes with the first body message
        body, more = part
        if not self._started:
            self._started = True
            posted = self._post(self._cycle.respond, response.status, response.headers, body, more)
        else:
            posted = self._post(self._cycle.send, body, more)
        if not posted:
            self._lost = True
            raise ClientDisconnected("the server has stopped")
        if not more:
            _wake(self._receiving)  # receive() now says http.disconnect
            return
        self._owed += len(body)
        while self._owed >= RESPONSE_WINDOW and not self._lost:
            await self._send_wait().wait()
        if self._lost:
            raise ClientDisconnected("the client disconnected")

    # -- the task ------------------------------------------------------------------------------

    def _raised(self, exc: Exception) -> None:
        if self._lost:
            log.info("ASGI application raised after the client left: %r", exc)
            return
        log.error("ASGI application error", exc_info=exc)
        self._post(self._cycle.finished, "the application raised an exception")

    def _returned(self) -> None:
        response = self._response
        if response.complete:
            if self._more and not self._lost:
                self._post(self._cycle.finished, None)  # the rest of the body is not read
            return
        if response.started:
            failure = "the application returned without completing its response"
        else:
            failure = "the application returned without starting its response"
        if self._eof:
            # It was told the client left (http.disconnect): nothing is owed any more.
            self._post(self._cycle.abandon)
        elif not self._lost:
            log.error("ASGI application error: %s", failure[4:])
            self._post(self._cycle.finished, failure)


class _WebSocketApp(_AppTask):
    """The app loop's half of one ``websocket`` session (``WebSocketApp``)."""

    def __init__(self, runner: AsgiRunner, scope: Scope, cycle: WebSocketCycle) -> None:
        self._runner = runner
        self._scope = scope
        self._cycle = cycle
        self._post = runner.post or cycle.post
        self._state = SessionState()
        self._connected = False  # websocket.connect was received
        self._messages: deque[str | bytes] = deque()
        self._closed: tuple[int, str] | None = None  # the session ended: its code and reason
        self._owed = 0
        self._receiving = _Waiting(runner.loop)
        self._sending = _Waiting(runner.loop)

    # -- handed over by the loop half ----------------------------------------------------------

    def message(self, data: str | bytes) -> None:
        self._messages.append(data)
        self._receiving.wake()

    def closed(self, code: int, reason: str) -> None:
        if self._closed is None:
            self._closed = (code, reason)
        self._receiving.wake()
        self._sending.wake()

    def credit(self, size: int) -> None:
        self._owed -= size
        if self._owed < RESPONSE_WINDOW:
            self._sending.wake()

    # -- the application's ---------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        while not self._messages and self._closed is None:
            await self._receiving.wait()
        if self._messages:
            data = self._messages.popleft()
            self._post(self._cycle.taken, len(data))
            if isinstance(data, str):
                return {"type": "websocket.receive", "text": data}
            return {"type": "websocket.receive", "bytes": data}
        code, reason = self._closed or (1006, "")
        return {"type": "websocket.disconnect", "code": code, "reason": reason}

    async def send(self, message: Message) -> None:
        if self._closed is not None and self._state.state != SessionState.CONNECTING:
            raise ClientDisconnected(f"the WebSocket is closed ({self._closed[0]})")
        action, args = self._state.feed(message)
        if action == "wait":
            return  # the denial response's start: it goes with its first body message
        if not self._post(getattr(self._cycle, action), *args):
            raise ClientDisconnected("the server has stopped")
        if action == "send":
            self._owed += len(args[0])
            while self._owed >= RESPONSE_WINDOW and self._closed is None:
                await self._sending.wait()
            if self._closed is not None:
                raise ClientDisconnected(f"the WebSocket is closed ({self._closed[0]})")

    # -- the task ------------------------------------------------------------------------------

    def _raised(self, exc: Exception) -> None:
        if self._closed is not None:
            log.info("ASGI WebSocket application raised after the session ended: %r", exc)
            return
        log.error("ASGI WebSocket application error", exc_info=exc)
        self._post(self._cycle.fail, "the application raised an exception")

    def _returned(self) -> None:
        state = self._state.state
        if self._closed is not None or state == SessionState.CLOSED:
            return
        if state == SessionState.OPEN:
            self._post(self._cycle.close, 1000, "")  # returned without closing: a normal end
        else:
            failure = "the application returned without answering the WebSocket handshake"
            log.error("ASGI WebSocket application error: %s", failure[4:])
            self._post(self._cycle.fail, failure)


class Lifespan:
    """An ASGI application's lifespan coroutine on ``app_loop``: ``startup()`` before the
    driver serves, ``shutdown()`` once ``run()`` returned (both block until answered)."""

    def __init__(self, app: ASGIApp, app_loop: AppLoop, mode: LifespanMode = "auto") -> None:
        self._app = app
        self._app_loop = app_loop
        self._mode = mode
        #: The namespace each request's scope gets a copy of (``scope["state"]``).
        self.state: dict[str, Any] = {}
        self._events: asyncio.Queue[Message] | None = None
        self._answers: asyncio.Queue[Message | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.supported = mode != "off"

    def startup(self) -> None:
        """Raise ``LifespanError`` if the startup failed (or, with mode "on", did not run)."""
        if self.supported:
            self._app_loop.run(self._phase("startup"))

    def abandon(self) -> None:
        """Ctrl-C before the startup ended: no shutdown will follow. A task that took the
        KeyboardInterrupt itself has it retrieved here, or asyncio would log it with a
        traceback as "never retrieved" when the task is collected
        (https://docs.python.org/3/library/asyncio-dev.html#detect-never-retrieved-exceptions)."""
        task, self._task = self._task, None
        if task is not None and task.done() and not task.cancelled():
            task.exception()

    def shutdown(self) -> None:
        """Raise ``LifespanError`` if the shutdown failed."""
        if self.supported and self._task is not None and not self._task.done():
            self._app_loop.run(self._phase("shutdown"))

    async def _phase(self, phase: str) -> None:
        if self._task is None:
            self._events, self._answers = asyncio.Queue(), asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._main())
        assert self._events is not None and self._answers is not None
        self._events.put_nowait({"type": f"lifespan.{phase}"})
        answer = await self._answers.get()
        if answer is not None:
            lifespan_outcome(phase, answer)
            return
        # The coroutine ended without answering.
        error = self._error
        if phase == "startup" and self._mode == "auto":
            self.supported = False
            why = f"it raised {error!r}" if error is not None else "it returned"
            log.info("the application does not use the lifespan protocol (%s)", why)
            return
        what = f"raised {type(error).__name__}: {error}" if error is not None else "returned"
        raise LifespanError(f"the application's lifespan {what} before its {phase} completed")

    async def _main(self) -> None:
        assert self._answers is not None
        try:
            await self._app(lifespan_scope(self.state), self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
        finally:
            self._answers.put_nowait(None)

    async def _receive(self) -> Message:
        assert self._events is not None
        return await self._events.get()

    async def _send(self, message: Message) -> None:
        assert self._answers is not None
        self._answers.put_nowait(message)
