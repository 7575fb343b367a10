"""What every driver shares: the lazy timer heap, the job pool and the call queue."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from spcore.connection import Connection
from spcore.drivers.base import MAX_WAIT, CallQueue, JobPool, TimerHeap, wait_timeout
from spcore.jobs import Job


def conn() -> Any:
    """A stand-in: the timer heap only hashes its connections."""
    return cast(Connection, object())


def test_timers_fire_in_deadline_order_and_once() -> None:
    heap = TimerHeap()
    late, early, never = conn(), conn(), conn()
    heap.set(late, 20.0)
    heap.set(early, 10.0)
    heap.set(never, None)
    assert heap.next_deadline() == 10.0
    assert heap.expired(15.0) == [early]
    assert heap.expired(15.0) == []
    assert heap.expired(25.0) == [late]
    assert heap.next_deadline() is None


def test_a_timer_moved_earlier_fires_at_the_new_time_only() -> None:
    heap = TimerHeap()
    c = conn()
    heap.set(c, 50.0)
    heap.set(c, 5.0)
    assert heap.expired(6.0) == [c]
    assert heap.expired(60.0) == []  # the entry for 50.0 was stale


def test_a_timer_moved_later_fires_early_once_then_waits_to_be_set_again() -> None:
    heap = TimerHeap()
    c = conn()
    heap.set(c, 5.0)
    heap.set(c, 50.0)  # lazily: no push (the core tells the timer again after the early one)
    assert len(heap) == 1
    assert heap.expired(6.0) == [c]
    assert heap.next_deadline() is None
    heap.set(c, 50.0)
    assert heap.expired(49.0) == [] and heap.expired(50.0) == [c]


def test_a_forgotten_connection_never_fires() -> None:
    heap = TimerHeap()
    c = conn()
    heap.set(c, 1.0)
    heap.forget(c)
    assert heap.next_deadline() is None and heap.expired(2.0) == []
    heap.set(c, 1.0)
    heap.set(c, None)  # what SetTimer(None) does
    assert heap.expired(2.0) == []


def test_closed_connections_are_not_kept_behind_a_long_lived_one() -> None:
    heap = TimerHeap()
    keeper = conn()  # an early deadline that stays at the top of the heap
    heap.set(keeper, 1.0)
    for _ in range(10_000):  # connections that arm a later timer, then close
        gone = conn()
        heap.set(gone, 60.0)
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


def test_calls_run_in_order_and_a_batch_wakes_the_loop_once() -> None:
    wakes: list[int] = []
    calls = CallQueue(lambda: wakes.append(1))
    ran: list[int] = []
    for n in range(5):
        assert calls.post(ran.append, (n,))
    assert len(wakes) == 1  # a wake-up on its way says it for the whole batch
    for fn, args in calls.take():
        fn(*args)
    assert ran == [0, 1, 2, 3, 4] and calls.take() == []
    assert calls.post(ran.append, (5,)) and len(wakes) == 2  # taken: the next one wakes again


def test_after_close_every_call_is_refused_and_those_before_are_handed_back() -> None:
    calls = CallQueue(lambda: None)
    assert calls.post(print, ("before",))
    left = calls.close()
    assert [args for _, args in left] == [("before",)]
    assert calls.post(print, ("after",)) is False
    assert calls.take() == [] and calls.close() == []


def test_calls_posted_from_many_threads_are_each_taken_once_in_each_thread_s_order() -> None:
    calls = CallQueue(lambda: None)
    taken: list[tuple[object, ...]] = []
    barrier = threading.Barrier(4)

    def post(thread: int) -> None:
        barrier.wait(5)
        for n in range(1000):
            calls.post(print, (thread, n))

    posters = [threading.Thread(target=post, args=(t,)) for t in range(4)]
    for poster in posters:
        poster.start()
    give_up = time.monotonic() + 10.0
    while any(poster.is_alive() for poster in posters) or len(taken) < 4000:
        taken += [args for _, args in calls.take()]
        assert len(taken) <= 4000 and time.monotonic() < give_up
    for thread in range(4):
        assert [n for t, n in taken if t == thread] == list(range(1000))  # type: ignore[misc]
