"""The asyncio event loop a driver offers for application coroutines: ``Driver.app_loop()``.

An ASGI application's coroutines need an asyncio loop. A driver that runs one already
(``asyncio``, ``uvloop``) lends it (``OwnLoop``): the application runs on the loop thread
itself, and the core hands it calls directly. Any other driver gets ``CompanionLoop`` from the
base class for free: one thread running an asyncio loop beside the driver's, which the core
hands calls to through a queue and one ``call_soon_threadsafe`` per batch, as the application
hands calls back through the driver's ``call_soon_threadsafe``. No call crosses between the two
threads any other way; none waits by polling.

The loop exists from the first ``app_loop()`` call, so that the application's startup (the
lifespan protocol) runs on it before the driver serves, and its shutdown after ``run()``
returned; then ``close()`` ends it.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..calls import CallQueue

__all__ = ["AppLoop", "CompanionLoop", "OwnLoop"]

log = logging.getLogger("spcore.driver")

T = TypeVar("T")


class AppLoop(abc.ABC):
    """An asyncio loop that runs application coroutines for a driver."""

    #: The loop the coroutines run on.
    loop: asyncio.AbstractEventLoop
    #: Whether it is the driver's own loop (the application runs on the loop thread).
    own: bool
    #: How coroutines of this loop hand calls to the driver's loop thread when there is a
    #: cheaper way than the connections' ``call_soon_threadsafe`` (None: that).
    post: Callable[..., bool] | None = None

    @abc.abstractmethod
    def call(self, fn: Callable[..., object], *args: object) -> None:
        """From the driver's loop thread: run ``fn(*args)`` on the app loop soon, in order
        (at once when it is the same loop)."""

    @abc.abstractmethod
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """From a thread that is not running the app loop (before ``run()``, or after it
        returned): run ``coro`` on the app loop until it ends; its result."""

    @abc.abstractmethod
    def close(self) -> None:
        """Cancel the tasks left, end the loop (and its thread); idempotent."""


class CompanionLoop(AppLoop):
    """An asyncio loop in one thread of its own, started when made."""

    own = False

    def __init__(
        self,
        name: str = "spcore-app-loop",
        factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.loop = factory()
        self._calls = CallQueue(self._wake)
        self._ready = threading.Event()
        self._closed = False
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def call(self, fn: Callable[..., object], *args: object) -> None:
        self._calls.post(fn, args)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._calls.close()
        self.run(_cancel_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def _wake(self) -> None:
        self.loop.call_soon_threadsafe(self._take)

    def _take(self) -> None:
        for fn, args in self._calls.take():
            try:
                fn(*args)
            except Exception:
                log.exception("a call handed to the application's loop failed: %r", fn)


class OwnLoop(AppLoop):
    """A driver's own asyncio loop, lent to applications (made before the driver runs it)."""

    own = True

    def __init__(
        self, loop: asyncio.AbstractEventLoop, post: Callable[..., bool] | None = None
    ) -> None:
        self.loop = loop
        self.post = post
        self._closed = False

    def call(self, fn: Callable[..., object], *args: object) -> None:
        fn(*args)  # the core calls from the loop thread, which is this loop's

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.run_until_complete(_cancel_tasks())
        self.loop.close()


async def _cancel_tasks() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
