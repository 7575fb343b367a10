"""The thread-safe wake-up: ``call_soon_threadsafe`` from many threads at once, under load,
through a connection, and while the server stops.

Every call the driver accepts (True) runs exactly once, on the loop thread (the one running
``run()``), after every call the same thread made before; a refused call (False) never runs,
and once a driver refuses, it refuses for good. Calls made while the server stops still run
(the loop is still serving); calls made after ``run()`` returned are refused.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import pytest

from spcore.conformance.apps import suite_app
from spcore.conformance.harness import SUITE_LIMITS, Serve, Served, wait_until
from spcore.conformance.plugin import DriverChoice
from spcore.listeners import http_listener
from spcore.server import Server
from spcore.stream import DeferredSession, Session, StreamHandler

POSTERS = 8  # threads posting at once
CALLS = 300  # calls per thread
LOADERS = 3  # clients keeping the loop busy with requests meanwhile
REQUESTS = 30  # keep-alive requests per client
WAIT = 10.0


class _Ledger:
    """What the posted calls did, as they ran: (running thread, poster, sequence number)."""

    def __init__(self) -> None:
        self.ran: list[tuple[int, int, int]] = []
        self.accepted: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
        self.refused: collections.defaultdict[int, list[int]] = collections.defaultdict(list)

    def record(self, poster: int, seq: int) -> None:
        self.ran.append((threading.get_ident(), poster, seq))

    def post(self, served: Served, poster: int, seq: int) -> bool:
        ok = served.server.call_soon_threadsafe(self.record, poster, seq)
        (self.accepted if ok else self.refused)[poster].append(seq)
        return ok

    def check(self, loop_thread: int | None) -> None:
        """Each accepted call ran once, on the loop thread, in its poster's order; no refused
        call ran; and a poster refused once was refused from then on."""
        assert loop_thread is not None
        threads = {ident for ident, _, _ in self.ran}
        assert threads <= {loop_thread}, "a call ran on another thread than the loop's"
        ran: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
        for _, poster, seq in self.ran:
            ran[poster].append(seq)
        for poster in set(self.accepted) | set(self.refused):
            assert ran[poster] == self.accepted[poster], f"poster {poster}: ran {ran[poster]!r}"
            refused = self.refused[poster]
            if refused:  # every call after the first refusal was refused too
                assert all(seq < refused[0] for seq in self.accepted[poster])
                assert refused == list(range(refused[0], refused[0] + len(refused)))


def _run_all(targets: list[Callable[[], None]]) -> None:
    """Start every target at once (a barrier) and wait for them, bounded."""
    barrier = threading.Barrier(len(targets))
    failures: list[BaseException] = []

    def start(target: Callable[[], None]) -> None:
        barrier.wait(WAIT)
        try:
            target()
        except BaseException as exc:  # reported below, from the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if failures:
        raise failures[0]


def test_calls_from_many_threads_run_once_each_in_order_on_the_loop_thread(
    serve: Serve,
) -> None:
    ledger = _Ledger()
    with serve(suite_app) as served:

        def poster(index: int) -> Callable[[], None]:
            def post() -> None:
                for seq in range(CALLS):
                    assert ledger.post(served, index, seq), "refused while serving"

            return post

        def loader() -> None:
            with served.connect() as client:
                for _ in range(REQUESTS):
                    assert client.fetch("GET", "/hello").body == b"Hello, world!"

        _run_all([poster(i) for i in range(POSTERS)] + [loader] * LOADERS)
        wait_until(lambda: len(ledger.ran) == POSTERS * CALLS, WAIT, "every call to run")
        loop_thread = served.loop_thread
    ledger.check(loop_thread)
    assert sum(map(len, ledger.refused.values())) == 0


class _Streams(StreamHandler):
    """``count N``: a thread of its own sends N numbered lines through the session's wake-up
    (each a call handed to the loop thread, where the session may be used)."""

    idle_timeout = None
    threads: list[int] = []  # where the sends ran

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        assert isinstance(session, Session)
        count = int(message.split()[1])

        def send(n: int) -> None:
            self.threads.append(threading.get_ident())
            session.send(b"%d" % n)

        def from_a_thread() -> None:
            for n in range(count):
                assert session.call_soon_threadsafe(send, n)

        threading.Thread(target=from_a_thread, daemon=True).start()


@pytest.mark.spcore_stream
def test_a_thread_writes_to_its_connection_through_the_wake_up(serve: Serve) -> None:
    _Streams.threads = []
    with serve(handler=_Streams) as served:
        clients = [served.connect() for _ in range(4)]
        try:
            for client in clients:
                client.send(b"count 200\n")
            for client in clients:  # each in order: one caller's calls run in its order
                for n in range(200):
                    assert client.read_until(b"\r\n") == b"%d\r\n" % n
        finally:
            for client in clients:
                client.close()
        loop_thread = served.loop_thread
    assert set(_Streams.threads) == {loop_thread}
    assert len(_Streams.threads) == 4 * 200


class _Working(StreamHandler):
    """A blocking handler whose job keeps a stop in its grace period for a while."""

    blocking = True
    idle_timeout = None

    def message(self, session: Session | DeferredSession, message: bytes) -> None:
        time.sleep(0.5)
        session.send(b"done")


@pytest.mark.spcore_stream
def test_calls_made_while_stopping_run_and_calls_after_the_stop_are_refused(
    serve: Serve,
) -> None:
    ledger = _Ledger()
    stopping = threading.Event()
    ran_while_stopping: list[bool] = []
    with serve(handler=_Working) as served:
        client = served.connect()
        client.send(b"work\n")  # in flight when the stop comes: the loop goes on for it
        wait_until(lambda: len(served.sessions) == 1, WAIT, "the session")

        def note() -> None:
            ran_while_stopping.append(served.server.shutting_down)

        def poster(index: int) -> Callable[[], None]:
            def post() -> None:
                seq = 0
                while ledger.post(served, index, seq):  # until refused
                    seq += 1
                    if stopping.is_set() and seq % 50 == 0:
                        served.server.call_soon_threadsafe(note)
                    if seq % 5 == 0:
                        time.sleep(0.001)  # (a steady stream, not a flood)
                for more in range(seq + 1, seq + 20):  # refused for good
                    ledger.post(served, index, more)

            return post

        def stopper() -> None:
            time.sleep(0.1)
            stopping.set()
            served.request_stop()

        posting = threading.Thread(
            target=_run_all, args=([poster(i) for i in range(POSTERS)] + [stopper],)
        )
        posting.start()
        assert client.read_until(b"\r\n") == b"done\r\n"  # the job in flight finished
        assert client.recv() == b""
        client.close()
        served.stop()  # wait for run() to return
        loop_thread = served.loop_thread
        posting.join(WAIT * 3)
        assert not posting.is_alive()
        assert served.server.call_soon_threadsafe(note) is False  # after the driver stopped
    ledger.check(loop_thread)
    assert all(ledger.refused[i] for i in range(POSTERS))  # every poster ended refused
    assert any(ran_while_stopping), "no call ran while the server was stopping"


@pytest.mark.skipif(sys.platform == "win32", reason="signal.pthread_kill is POSIX-only")
def test_a_signal_taken_while_the_loop_waits_runs_its_handler(driver: DriverChoice) -> None:
    """A ``signal.signal`` handler runs on the main thread between two bytecodes. A signal
    that reaches the process while the loop is about to wait, or that another thread takes,
    interrupts no wait: only a wake-up written by the signal itself does (Python's
    ``signal.set_wakeup_fd``). Here the loop runs on the main thread, the signal is sent to
    a helper thread (which only marks it), and the handler asks for the stop."""
    assert driver.factory is not None
    assert threading.current_thread() is threading.main_thread()
    server = Server([http_listener(suite_app, host="127.0.0.1")], SUITE_LIMITS)
    under_test = driver.factory(server)
    under_test.bind()
    running, handled = threading.Event(), threading.Event()
    rescued: list[bool] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        handled.set()
        under_test.stop()

    def signaller() -> None:
        if running.wait(WAIT):
            time.sleep(0.2)  # the loop is in its wait by now
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        if not handled.wait(WAIT):
            rescued.append(True)
            under_test.stop()  # its wake-up also runs the pending handler

    previous = signal.signal(signal.SIGUSR1, handler)
    helper = threading.Thread(target=signaller, daemon=True)
    try:
        server.call_soon_threadsafe(running.set)
        helper.start()
        under_test.run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        helper.join(WAIT)
    assert not rescued, "the loop waited on: the signal's handler ran only once stop() woke it"
