"""User timers: callbacks due at a time of the driver's clock, one-shot or periodic.

SPServer's handlers could arm timers (``SP_TimerHandler``); here a protocol layer arms them
on its connection (``Transport.call_later``), a stream handler on its session, and an
application on the server (``Server.call_later``: a heartbeat to every session). No thread
and no sleep: each owner's earliest timer is part of its deadline, which the driver is told
with ``SetTimer`` like any other, and the due timers run when that deadline fires.

A periodic timer keeps its rhythm (the next run is due one period after the previous one was
due, not after it ran); runs a late loop missed are not caught up: it is due one period after
now instead. Cancelling is only a mark, so it costs nothing and may be done at any time,
also from the timer's own callback; the marked entries are dropped as they come due, or when
they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

__all__ = ["Callback", "Timer", "TimerQueue", "check_delay"]

#: What a timer runs: ``callback(now)``, ``now`` the driver's time of the run.
Callback = Callable[[float], object]

#: Entries kept beyond twice the live ones before the heap is rebuilt without the cancelled.
_SLACK = 64


def check_delay(delay: float, every: float | None) -> None:
    """A ``ValueError`` for a delay that is negative or not a number, or a period that is not
    positive (a timer due at once every time would never let the loop wait)."""
    if not (math.isfinite(delay) and delay >= 0):
        raise ValueError(f"a timer's delay must be a finite number >= 0, not {delay!r}")
    if every is not None and not (math.isfinite(every) and every > 0):
        raise ValueError(f"a periodic timer's period must be a finite number > 0, not {every!r}")


class Timer:
    """One armed callback; ``cancel()`` it to stop it (idempotent).

    ``when`` is when it is next due (driver time), ``every`` its period (None: one-shot).
    """

    __slots__ = ("_cancelled", "callback", "every", "when")

    def __init__(self, callback: Callback, every: float | None = None) -> None:
        check_delay(0.0, every)
        self.callback = callback
        self.every = every
        self.when: float | None = None  # None until armed, and once a one-shot has run
        self._cancelled = False

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else f"due {self.when}"
        period = f" every {self.every} s" if self.every is not None else ""
        return f"<Timer {state}{period}>"

    def cancel(self) -> None:
        """It will not run (again); a run in progress completes."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def active(self) -> bool:
        """Armed, not cancelled, and (one-shot) not run yet."""
        return not self._cancelled and self.when is not None


class TimerQueue:
    """The timers of one owner (a connection, the server), earliest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._rebuilt_at = 0  # the heap's size after its last rebuild

    def __len__(self) -> int:
        """Entries held, cancelled ones included (what the rebuilds bound)."""
        return len(self._heap)

    def arm(self, timer: Timer, when: float) -> Timer:
        """Make ``timer`` due at ``when`` (a cancelled one stays unarmed)."""
        if timer.cancelled:
            return timer
        timer.when = when
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        if len(self._heap) > 2 * self._rebuilt_at + _SLACK:
            self._rebuild()
        return timer

    @property
    def next(self) -> float | None:
        """When the earliest live timer is due (None: none is)."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def due(self, now: float) -> list[Timer]:
        """The timers due at ``now``, earliest first, each re-armed if periodic (before it
        runs, so that its callback may cancel it) or spent if not."""
        heap = self._heap
        ready: list[Timer] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            timer = entry[2]
            ready.append(timer)
            if timer.every is None:
                timer.when = None
            else:
                when = entry[0] + timer.every
                self.arm(timer, when if when > now else now + timer.every)
        return ready

    def clear(self) -> None:
        """Cancel every timer (their owner is gone)."""
        for _, _, timer in self._heap:
            timer.cancel()
        self._heap.clear()
        self._rebuilt_at = 0

    @staticmethod
    def _live(entry: tuple[float, int, Timer]) -> bool:
        timer = entry[2]
        return not timer.cancelled and timer.when == entry[0]

    def _rebuild(self) -> None:
        self._heap = [entry for entry in self._heap if self._live(entry)]
        heapq.heapify(self._heap)
        self._rebuilt_at = len(self._heap)
