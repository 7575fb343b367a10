"""What every driver shares: the lazy timer heap and the job pool."""

from __future__ import annotations

import threading
from typing import Any, cast

from spcore.connection import Connection
from spcore.drivers.base import MAX_WAIT, JobPool, TimerHeap, wait_timeout
from spcore.jobs import Job


class Timed:
    """Just what the timer heap reads from a connection."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline


def conn(deadline: float | None) -> Any:
    return cast(Connection, Timed(deadline))


def test_timers_fire_in_deadline_order_and_once() -> None:
    heap = TimerHeap()
    late, early, never = conn(20.0), conn(10.0), conn(None)
    for c in (late, early, never):
        heap.arm(c)
    assert heap.next_deadline() == 10.0
    assert heap.expired(15.0) == [early]
    assert heap.expired(15.0) == []
    assert heap.expired(25.0) == [late]
    assert heap.next_deadline() is None


def test_a_deadline_moved_earlier_fires_at_the_new_time_only() -> None:
    heap = TimerHeap()
    c = conn(50.0)
    heap.arm(c)
    c.deadline = 5.0
    heap.arm(c)
    assert heap.expired(6.0) == [c]
    assert heap.expired(60.0) == []  # the entry for 50.0 was stale


def test_a_forgotten_connection_never_fires() -> None:
    heap = TimerHeap()
    c = conn(1.0)
    heap.arm(c)
    heap.forget(c)
    assert heap.next_deadline() is None and heap.expired(2.0) == []


def test_closed_connections_are_not_kept_behind_a_long_lived_one() -> None:
    heap = TimerHeap()
    keeper = conn(1.0)  # an early deadline that stays at the top of the heap
    heap.arm(keeper)
    for _ in range(10_000):  # connections that arm a later timer, then close
        gone = conn(60.0)
        heap.arm(gone)
        heap.forget(gone)
    assert len(heap) <= 100
    assert heap.expired(100.0) == [keeper]


def test_shutdown_hands_back_every_job_that_ran() -> None:
    finished = threading.Event()
    pool = JobPool(2, wake=finished.set)
    back: list[Job] = []

    class Owner:
        def job_done(self, job: Job, now: float) -> None:
            back.append(job)

    job = Job(lambda: 42, lambda job, now: None)
    pool.submit(cast(Connection, Owner()), job)
    pool.shutdown()  # nobody took it from finished(): shutdown must
    assert back == [job] and job.result == 42 and finished.is_set()


def test_a_wait_never_exceeds_what_a_selector_can_express() -> None:
    now = 1000.0
    assert wait_timeout(now) is None and wait_timeout(now, None, None) is None
    assert wait_timeout(now, now - 5.0) == 0.0  # already due
    assert wait_timeout(now, now + 30.0, None, now + 2.0) == 2.0
    assert wait_timeout(now, now + 30 * 86400.0) == MAX_WAIT  # epoll's limit is about 24 days
