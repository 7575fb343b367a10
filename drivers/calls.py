"""Functions handed to a loop thread from any thread: the queue behind every
``call_soon_threadsafe`` (a driver's, and the app loop's of ``spcore.drivers.gateway``)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

__all__ = ["CallQueue"]


class CallQueue:
    """Functions handed to the loop thread from any thread: each runs once, in order, soon.

    ``post`` appends and wakes the loop (once per batch: a wake-up already on its way is not
    sent again); the loop runs what ``take`` returns. ``close`` is the end: later posts are
    refused (False) and never run, and it returns what was accepted before, for the loop to
    run last, so that every call is either refused or run exactly once. Re-entrant, so that a
    signal handler may post while the loop thread itself is posting or taking.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.RLock()
        self._calls: collections.deque[tuple[Callable[..., object], tuple[object, ...]]] = (
            collections.deque()
        )
        self._open = True
        self._signalled = False  # a wake-up was sent and the loop has not taken since

    def post(self, fn: Callable[..., object], args: tuple[object, ...]) -> bool:
        """Queue ``fn(*args)``."""
        with self._lock:
            if not self._open:
                return False
            self._calls.append((fn, args))
            if self._signalled:
                return True
            self._signalled = True
        self._wake()
        return True

    def take(self) -> list[tuple[Callable[..., object], tuple[object, ...]]]:
        """What was posted since the last call, in order (loop thread)."""
        if not self._calls:  # (a post in progress wakes the loop after its append)
            return []
        with self._lock:
            self._signalled = False
            calls = list(self._calls)
            self._calls.clear()
        return calls

    def close(self) -> list[tuple[Callable[..., object], tuple[object, ...]]]:
        """Refuse every later post; what is left to run."""
        with self._lock:
            self._open = False
            calls = list(self._calls)
            self._calls.clear()
        return calls
