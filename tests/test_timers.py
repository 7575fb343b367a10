"""User timers in memory, on a fake clock: the queue itself, a protocol's timers on its
connection, a stream handler's on its session (inline and blocking), and the server-wide
timer that sends a heartbeat to every session."""

from __future__ import annotations

import logging
import math

import pytest
from memlink import Clock, MemLink, Recorder
from memnet import MemNet

from spcore.config import Limits
from spcore.connection import Connection
from spcore.lifecycle import State
from spcore.listeners import stream_listener
from spcore.server import Listener, Server
from spcore.stream import DeferredSession, Session, Sessions, StreamHandler
from spcore.timers import Timer, TimerQueue

AnySession = Session | DeferredSession
ADDRESS = ("127.0.0.1", 7000)


# -- the queue ---------------------------------------------------------------------------------


def test_timers_come_due_in_order_and_a_one_shot_runs_once() -> None:
    queue = TimerQueue()
    late = queue.arm(Timer(lambda now: None), 20.0)
    early = queue.arm(Timer(lambda now: None), 10.0)
    assert queue.next == 10.0
    assert queue.due(9.9) == []
    assert queue.due(25.0) == [early, late]
    assert queue.next is None and not early.active and queue.due(100.0) == []


def test_a_periodic_timer_keeps_its_rhythm_and_does_not_catch_up() -> None:
    queue = TimerQueue()
    tick = queue.arm(Timer(lambda now: None, every=10.0), 10.0)
    assert queue.due(10.5) == [tick] and tick.when == 20.0  # one period after it was due
    assert queue.due(55.0) == [tick]  # late: one run, not the three it missed
    assert tick.when == 65.0 and queue.next == 65.0


def test_a_cancelled_timer_never_runs_and_its_entries_do_not_pile_up() -> None:
    queue = TimerQueue()
    keep = queue.arm(Timer(lambda now: None), 1_000_000.0)
    for i in range(10_000):  # an idle timer pushed back at every message, say
        queue.arm(Timer(lambda now: None), 500_000.0 + i).cancel()
    assert len(queue) < 200  # rebuilt as the cancelled piled up
    assert queue.next == 1_000_000.0
    keep.cancel()
    assert queue.next is None and queue.due(math.inf) == []
    assert queue.arm(keep, 1.0) is keep and queue.next is None  # cancelled stays unarmed


def test_a_periodic_timer_cancelled_in_its_own_callback_stops() -> None:
    queue = TimerQueue()
    tick = queue.arm(Timer(lambda now: None, every=1.0), 1.0)
    (due,) = queue.due(1.0)
    due.cancel()  # what its callback would do
    assert queue.next is None and not tick.active


@pytest.mark.parametrize(("delay", "every"), [(-1.0, None), (math.nan, None), (1.0, 0.0)])
def test_a_timer_that_could_never_wait_is_refused(delay: float, every: float | None) -> None:
    conn = Connection(Listener(Recorder))
    with pytest.raises(ValueError, match="timer"):
        conn.call_later(delay, lambda now: None, every=every)


# -- a protocol's timers on its connection -----------------------------------------------------


class Ticker(Recorder):
    """Arms a one-shot and a periodic timer once connected; records their runs."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[str, float]] = []
        self.tick: Timer | None = None

    def connection_made(self, conn: Connection, now: float) -> None:
        super().connection_made(conn, now)
        conn.call_later(5.0, lambda at: self.runs.append(("once", at)))
        self.tick = conn.call_later(2.0, lambda at: self.runs.append(("tick", at)), every=2.0)


def ticking_link() -> tuple[MemLink, Ticker]:
    made: list[Ticker] = []

    def protocol() -> Ticker:
        made.append(Ticker())
        return made[-1]

    server = Server([Listener(protocol)])
    clock = Clock(0.0)
    server.start(clock.now, 0.0)
    return MemLink(server, clock=clock), made[0]


def test_a_protocols_timers_are_its_connections_deadline() -> None:
    link, ticker = ticking_link()
    assert link.timer == 2.0  # told to the driver with SetTimer
    for step in (2.0, 2.0, 1.0, 1.5):
        link.advance(step)
    assert ticker.runs == [("tick", 2.0), ("tick", 4.0), ("once", 5.0), ("tick", 6.5)]
    assert link.timer == 8.0  # the rhythm holds: 6.5 was a late run of 6.0
    assert ticker.tick is not None
    ticker.tick.cancel()
    link.advance(10.0)  # an early wake-up, harmless; then nothing more is due
    assert len(ticker.runs) == 4 and link.timer is None


def test_timers_end_with_their_connection() -> None:
    link, ticker = ticking_link()
    link.client_close()
    link.advance(0.0)
    assert link.conn.state is State.OPEN  # (the protocol keeps it open after the EOF)
    link.conn.close()
    link.advance(100.0)
    assert ticker.runs == [] and ticker.tick is not None and not ticker.tick.active


def test_a_failing_timer_is_an_internal_error_that_closes_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link, ticker = ticking_link()
    assert ticker.conn is not None
    ticker.conn.call_later(1.0, lambda now: 1 / 0)  # outside any call: the driver syncs it
    link.pump()
    assert link.timer == 1.0
    with caplog.at_level(logging.ERROR):
        link.advance(1.0)
    assert link.closed and link.server.stats.errors == 1
    assert "internal error" in caplog.text and "ZeroDivisionError" in caplog.text


# -- a stream handler's timers on its session ---------------------------------------------------


class Countdown(StreamHandler):
    """Says ``3``, ``2``, ``1`` a second apart, then closes; ``stop`` cancels it."""

    def start(self, session: AnySession) -> None:
        session.data["left"] = 3
        session.data["timer"] = session.call_later(1.0, self.tick, every=1.0)

    def tick(self, session: AnySession) -> None:
        session.send(b"%d" % session.data["left"])
        session.data["left"] -= 1
        if not session.data["left"]:
            session.data["timer"].cancel()
            session.close()

    def message(self, session: AnySession, message: bytes) -> None:
        if message == b"stop":
            session.data["timer"].cancel()
            session.send(b"stopped")


class BlockingCountdown(Countdown):
    blocking = True

    def tick(self, session: AnySession) -> None:
        assert isinstance(session, DeferredSession)  # in a job, as its other calls
        super().tick(session)


@pytest.mark.parametrize("handler", [Countdown, BlockingCountdown])
def test_a_session_timer_is_a_handler_call(handler: type[Countdown]) -> None:
    net = MemNet(Clock(0.0))
    net.add(Server([stream_listener(handler)]), ADDRESS)
    client = net.dial(ADDRESS)
    net.advance(3.5)
    assert client.take() == b"3\r\n2\r\n1\r\n" and client.got_eof


@pytest.mark.parametrize("handler", [Countdown, BlockingCountdown])
def test_a_session_timer_can_be_cancelled(handler: type[Countdown]) -> None:
    net = MemNet(Clock(0.0))
    net.add(Server([stream_listener(handler)]), ADDRESS)
    client = net.dial(ADDRESS)
    net.advance(1.5)
    client.send(b"stop\n")
    net.advance(10.0)
    assert client.take() == b"3\r\nstopped\r\n" and not client.got_eof


class CancelledAtOnce(StreamHandler):
    """A blocking handler that arms a timer and cancels it in the same call."""

    blocking = True

    def start(self, session: AnySession) -> None:
        session.call_later(1.0, lambda s: s.send(b"never")).cancel()
        session.send(b"started")


def test_a_blocking_handler_may_cancel_a_timer_before_the_loop_armed_it() -> None:
    net = MemNet(Clock(0.0))
    net.add(Server([stream_listener(CancelledAtOnce)]), ADDRESS)
    client = net.dial(ADDRESS)
    net.advance(5.0)
    assert client.take() == b"started\r\n"


# -- the server-wide timer ----------------------------------------------------------------------


def test_a_server_timer_sends_a_heartbeat_to_every_session() -> None:
    net = MemNet(Clock(0.0))
    room = Sessions()
    server = Server([stream_listener(StreamHandler, sessions=room)])
    net.add(server, ADDRESS)
    beats = server.call_later(10.0, lambda now: room.broadcast(b"beat"), every=10.0)
    clients = [net.dial(ADDRESS) for _ in range(3)]
    net.advance(25.0)
    assert [c.take() for c in clients] == [b"beat\r\nbeat\r\n"] * 3
    clients[0].shut()
    beats.cancel()
    net.advance(30.0)
    assert [c.take() for c in clients[1:]] == [b""] * 2


def test_a_failing_server_timer_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = MemNet(Clock(0.0))
    server = net.add(Server([Listener(Recorder)]))
    runs: list[float] = []
    server.call_later(1.0, lambda now: 1 / 0)
    server.call_later(1.0, runs.append)
    with caplog.at_level(logging.ERROR, logger="spcore.server"):
        net.advance(1.0)
    assert runs == [1.0] and server.stats.errors == 1
    assert "a server timer failed" in caplog.text


def test_server_timers_do_not_hold_the_stop_back() -> None:
    net = MemNet(Clock(0.0))
    server = net.add(Server([Listener(Recorder)], Limits(shutdown_grace=5.0)))
    server.call_later(1.0, lambda now: None, every=1.0)
    net.advance(2.5)
    server.request_stop(net.clock.now)
    net.pump()
    assert server in net.exited
