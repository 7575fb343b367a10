"""The WSGI worker's hand-off: a bounded buffer and a condition, nothing else.

``BlockingChannel`` is the core's ``spcore.gateway.wsgi.Channel``. Toward the worker, the loop
thread puts body pieces into a buffer under a lock and notifies; the worker waits on the
condition for them, never polling. Toward the loop, the worker hands every response part over
with the connection's ``call_soon_threadsafe``, and waits on the same condition while a window
of them is still on its way to the client (the loop thread returns credit). When the body
buffer had filled up to its window, the worker's taking hands ``resume`` to the loop thread
once half of it is free.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from spcore.errors import ClientDisconnected

__all__ = ["BlockingChannel"]


class BlockingChannel:
    """The hand-off of one WSGI call (see the module docstring). Its condition is made when
    a side first has to wait (under the lock both sides take): most calls never wait."""

    def __init__(
        self,
        post: Callable[..., bool],
        resume: Callable[[], None],
        body_window: int,
        response_window: int,
    ) -> None:
        self._post = post
        self._resume = resume
        self._body_window = body_window
        self._response_window = response_window
        self._lock = threading.Lock()
        self._ready: threading.Condition | None = None
        self._chunks: deque[bytes] = deque()
        self._size = 0  # body bytes buffered
        self._ended = False
        self._full = False  # put() said the window is full: resume is owed
        self._owed = 0  # response bytes given, credit not yet returned
        self._aborted: str | None = None

    # -- the loop thread's ----------------------------------------------------------------------

    def put(self, data: bytes) -> bool:
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            self._notify()
            if self._size < self._body_window:
                return True
            self._full = True
            return False

    def put_end(self) -> None:
        with self._lock:
            self._ended = True
            self._notify()

    def credit(self, size: int) -> None:
        with self._lock:
            self._owed -= size
            self._notify()

    def abort(self, reason: str) -> None:
        with self._lock:
            if self._aborted is None:
                self._aborted = reason
            self._notify()

    def _notify(self) -> None:
        if self._ready is not None:
            self._ready.notify()  # (one worker waits at most: the call's own)

    # -- the worker's ---------------------------------------------------------------------------

    def aborted(self) -> bool:
        return self._aborted is not None

    def take(self, size: int) -> bytes:
        with self._lock:
            while not self._chunks and not self._ended and self._aborted is None:
                self._wait()
            if self._aborted is not None:
                raise ClientDisconnected(self._aborted)
            chunks = self._chunks
            taken: list[bytes] = []
            count = 0
            while chunks and count < size:
                chunk = chunks.popleft()
                if count + len(chunk) > size:
                    cut = size - count
                    chunks.appendleft(chunk[cut:])
                    chunk = chunk[:cut]
                taken.append(chunk)
                count += len(chunk)
            self._size -= count
            resume = self._full and self._size <= self._body_window // 2
            if resume:
                self._full = False
        if resume:
            self._post(self._resume)  # (refused once the driver stopped: nothing to resume)
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def give(self, fn: Callable[..., None], *args: Any, size: int) -> None:
        with self._lock:
            while self._owed >= self._response_window and self._aborted is None:
                self._wait()
            if self._aborted is not None:
                raise ClientDisconnected(self._aborted)
            self._owed += size
        if not self._post(fn, *args):
            raise ClientDisconnected("the server has stopped")

    def _wait(self) -> None:
        """Wait for the loop thread's next hand-over (the lock held, and released meanwhile)."""
        if self._ready is None:
            self._ready = threading.Condition(self._lock)
        self._ready.wait()
