"""The server object: admission, graceful shutdown, wake-ups, counters and the HTTP date."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest
from engines import ENGINE_NAMES, skip_unavailable
from memlink import LOCAL, PEER, ByHand, MemLink

from spcore.actions import (
    CLOSE,
    CLOSE_LISTENERS,
    EXIT,
    START_ACCEPTING,
    STOP_ACCEPTING,
    SetTimer,
    Sync,
)
from spcore.config import Limits
from spcore.connection import Connection
from spcore.http.dates import DateCache
from spcore.listeners import stream_listener
from spcore.server import Listener, Server, ServerAction
from spcore.stream import Session, StreamHandler, StreamProtocol
from spcore.tls import ClientTLS, ServerTLS
from spcore.tls.openssl import OpenSSLEngine
from spcore.tls.openssl_context import OPENSSL

NOW = 1000.0
WALL = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


class Echo(StreamHandler):
    def __init__(self, closed: list[int], *, blocking: bool = False) -> None:
        self.closed = closed
        self.blocking = blocking

    def message(self, session: Session | object, message: bytes) -> None:
        session.send(message)  # type: ignore[attr-defined]

    def close(self, session: Session) -> None:
        self.closed.append(session.id)


def echo_server(
    *, tls: ServerTLS | None = None, blocking: bool = False, **limits: float
) -> tuple[Server, list[int]]:
    closed: list[int] = []
    listener = Listener(lambda: StreamProtocol(Echo(closed, blocking=blocking)), tls=tls)
    server = Server([listener], Limits(**limits))  # type: ignore[arg-type]
    server.start(NOW, WALL)
    return server, closed


def accept(server: Server) -> Connection:
    return server.accept(server.listeners[0], PEER, LOCAL, NOW)


def actions(server: Server) -> list[ServerAction]:
    """The server's actions until it has none (or says exit)."""
    done: list[ServerAction] = []
    while (action := server.next_action()) is not None:
        done.append(action)
        if action is EXIT:
            break
    return done


def test_a_server_needs_a_listener() -> None:
    with pytest.raises(ValueError, match="at least one listener"):
        Server([])


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_listener_builds_its_engine_state_once(server_tls: ServerTLS, name: str) -> None:
    assert Listener(StreamProtocol).new_engine() is None  # type: ignore[arg-type]
    listener = Listener(StreamProtocol, tls=server_tls, tls_engine=skip_unavailable(name))  # type: ignore[arg-type]
    assert listener.tls_context is not None and listener.tls_context.factory.name == name
    state = listener.tls_context.state
    first, second = listener.new_engine(), listener.new_engine()
    assert first is not None and second is not None and first is not second
    assert listener.tls_context.state is state  # one state for every connection


def test_listener_takes_a_third_party_engine_factory(server_tls: ServerTLS) -> None:
    seen: list[ServerTLS] = []

    class Factory:
        name = "theirs"
        features: frozenset[Any] = frozenset()

        def library_version(self) -> str:
            return "theirs 1.0"

        def server(self, config: ServerTLS) -> Any:
            seen.append(config)
            return OPENSSL.server(config)

        def client(self, config: Any) -> Any:
            raise NotImplementedError

    listener = Listener(StreamProtocol, tls=server_tls, tls_engine=Factory())  # type: ignore[arg-type]
    assert isinstance(listener.new_engine(), OpenSSLEngine)
    assert isinstance(listener.new_engine(), OpenSSLEngine)
    assert seen == [server_tls]


# -- admission ---------------------------------------------------------------------------------


def test_accepting_is_told_when_it_changes_at_max_connections() -> None:
    server, _ = echo_server(max_connections=2)
    assert actions(server) == [START_ACCEPTING]
    first = accept(server)
    assert actions(server) == []
    accept(server)
    assert actions(server) == [STOP_ACCEPTING]
    first.connection_lost(None, NOW)
    assert actions(server) == [START_ACCEPTING]


def test_the_stop_sequence_is_the_same_actions_for_every_driver() -> None:
    server, _ = echo_server(shutdown_grace=10.0)
    assert actions(server) == [START_ACCEPTING]
    a, b = MemLink(server), MemLink(server)
    a.send(b"in flight\n")
    a.window = b.window = 0  # neither client reads: nothing finishes by itself
    assert server.accepting and not server.shutting_down
    server.request_stop(NOW)
    assert not server.accepting and server.shutting_down
    assert actions(server) == [
        CLOSE_LISTENERS,  # first, so that nothing new arrives
        Sync(a.conn),  # every connection was asked to finish: each is synced
        Sync(b.conn),
        SetTimer(NOW + 10.0),  # the end of the grace period
    ]
    server.on_deadline(NOW + 10.0)
    assert actions(server) == [Sync(a.conn), Sync(b.conn), SetTimer(NOW + 10.0)]
    for link in (a, b):
        assert link.conn.next_action() == CLOSE  # the grace period is over: cut
        link.conn.connection_lost(None, NOW + 10.0)
    assert actions(server) == [SetTimer(None), EXIT]
    assert actions(server) == [EXIT]  # and it stays so


def test_connection_ids_are_unique_and_registered() -> None:
    server, _ = echo_server()
    conns = [accept(server) for _ in range(3)]
    assert len({c.id for c in conns}) == 3
    assert server.connections == {c.id: c for c in conns}
    conns[1].connection_lost(None, NOW)
    assert accept(server).id not in {c.id for c in conns}


# -- graceful shutdown -------------------------------------------------------------------------


def test_shutdown_with_nothing_open_is_finished_at_once() -> None:
    server, _ = echo_server()
    assert not server.finished
    server.request_stop(NOW)
    assert server.finished and server.deadline is None


def test_shutdown_closes_idle_sessions_gracefully() -> None:
    server, closed = echo_server(shutdown_grace=10.0)
    link = MemLink(server)
    link.send(b"last\n")
    server.request_stop(NOW)
    assert server.deadline == NOW + 10.0
    woken = [a.conn for a in actions(server) if isinstance(a, Sync)]
    assert [c.id for c in woken] == [link.conn.id]
    link.pump()
    assert link.take() == b"last\r\n" and link.client_got_eof
    assert not server.finished  # waiting for the client's EOF (or the close timeout)
    link.client_close()
    assert closed == [link.conn.id] and server.finished and server.deadline is None


def test_shutdown_cuts_unfinished_handshakes_at_once(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, _ = echo_server(tls=server_tls)
    link = MemLink(server)
    link.send_raw(b"\x16\x03\x01")  # a ClientHello has begun
    server.request_stop(NOW)
    link.pump()
    assert link.closed and server.finished


def test_shutdown_waits_for_a_running_job_then_closes() -> None:
    server, closed = echo_server(blocking=True)
    link = MemLink(server, run_jobs=False)
    for job in link.take_jobs():  # start()
        job.run()
        link.conn.job_done(job, NOW)
    link.send(b"working\n")
    (job,) = link.take_jobs()
    server.request_stop(NOW)
    link.pump()
    assert not link.client_got_eof  # the job is in flight
    job.run()
    link.conn.job_done(job, NOW + 1)
    link.pump()
    assert link.take() == b"working\r\n" and link.client_got_eof
    link.client_close()
    assert server.finished and closed == [link.conn.id]


def test_grace_period_end_aborts_what_remains() -> None:
    server, closed = echo_server(blocking=True, shutdown_grace=5.0)
    stuck = MemLink(server, run_jobs=False)
    (job,) = stuck.take_jobs()  # start() does not come back in time
    idle = MemLink(server)
    server.request_stop(NOW)
    idle.pump()
    assert idle.client_got_eof and not stuck.client_got_eof
    server.on_deadline(NOW + 4.9)  # early: nothing happens
    assert not any(isinstance(a, Sync) for a in actions(server))
    assert stuck.conn.id in server.connections
    server.on_deadline(NOW + 5.0)
    assert stuck.conn.closing and not stuck.closed
    stuck.pump()  # syncs the woken connections: both are closed now
    assert stuck.closed and idle.closed
    assert server.finished and closed == [idle.conn.id]
    job.run()  # the driver hands every job back, even at its end: then the handler closes
    stuck.conn.job_done(job, NOW + 5.0)
    assert sorted(closed) == sorted([stuck.conn.id, idle.conn.id])


@pytest.mark.parametrize(
    ("error", "pause"),
    [
        pytest.param(OSError(errno.EMFILE, "Too many open files"), 0.5, id="out-of-descriptors"),
        pytest.param(ConnectionAbortedError(errno.ECONNABORTED, "aborted"), 0.01, id="one-peer"),
    ],
)
def test_a_failed_accept_pauses_accepting_until_the_deadline(error: OSError, pause: float) -> None:
    server, _ = echo_server(accept_pause=0.5)
    server.accept_failed(error, NOW)
    assert not server.accepting and server.stats.connections_refused == 1
    assert server.deadline == pytest.approx(NOW + pause)
    server.on_deadline(NOW + pause / 2)  # early: still paused
    assert not server.accepting
    server.on_deadline(NOW + pause)
    assert server.accepting and server.deadline is None


def test_shutdown_overrides_an_accept_pause() -> None:
    server, _ = echo_server(accept_pause=0.5)
    server.accept_failed(OSError(errno.ENFILE, "Too many open files in system"), NOW)
    server.request_stop(NOW)
    assert server.deadline is None and server.finished  # nothing to wait for: no connections


def test_a_second_stop_request_keeps_the_first_deadline() -> None:
    server, _ = echo_server(shutdown_grace=10.0)
    MemLink(server)
    server.request_stop(NOW)
    server.request_stop(NOW + 5)
    assert server.deadline == NOW + 10.0


# -- wake-ups ----------------------------------------------------------------------------------


def test_each_changed_connection_is_synced_once() -> None:
    server, _ = echo_server()
    a, b = accept(server), accept(server)
    actions(server)
    assert actions(server) == []
    server.hub.wake(a)
    server.hub.wake(b)
    server.hub.wake(a)
    assert actions(server) == [Sync(a), Sync(b)]
    assert actions(server) == []
    server.hub.wake(b)
    b.connection_lost(None, NOW)
    server.hub.wake(b)
    assert actions(server) == []


def test_a_broadcast_wakes_the_receivers_not_the_sender() -> None:
    class Relay(StreamHandler):
        def message(self, session: Session | object, message: bytes) -> None:
            session.broadcast(message)  # type: ignore[attr-defined]

    listener = stream_listener(Relay)
    server = Server([listener])
    a, b, c = accept(server), accept(server), accept(server)
    actions(server)
    a.receive_data(b"news\n", NOW)
    woken = [action.conn for action in actions(server) if isinstance(action, Sync)]
    assert woken == [b, c]  # a is synced after its own call anyway
    assert ByHand(b).take() == b"news\r\n"
    assert ByHand(a).take() == b""
    protocol = b.protocol
    assert isinstance(protocol, StreamProtocol)
    protocol.sessions[b.id].send(b"from outside any call")
    assert actions(server) == [Sync(b)]


# -- calls handed to the loop thread -----------------------------------------------------------


def test_without_a_driver_a_call_is_refused() -> None:
    server, _ = echo_server()
    assert server.call_soon_threadsafe(print, "never") is False
    assert accept(server).call_soon_threadsafe(print, "never") is False


def test_a_call_goes_to_the_attached_driver_and_runs_timed_as_its_own() -> None:
    server, _ = echo_server()
    posted: list[tuple[object, tuple[object, ...]]] = []

    def post(fn: object, *args: object) -> bool:
        posted.append((fn, args))
        return True

    server.attach(post)
    conn = accept(server)
    link = MemLink(server)
    assert conn.call_soon_threadsafe(link.conn.write, b"hello") is True
    assert server.call_soon_threadsafe(len, b"x") is True
    assert posted == [(link.conn.write, (b"hello",)), (len, (b"x",))]
    fn, args = posted[0]
    server.call(fn, args, NOW + 5)  # type: ignore[arg-type]  # the driver runs it, on its thread
    assert server.now == NOW + 5 and actions(server) == [Sync(link.conn)]
    link.pump()
    assert link.take() == b"hello"


def test_a_call_that_raises_is_logged_and_goes_no_further(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, _ = echo_server()

    def broken() -> None:
        raise RuntimeError("bug in a handed-over call")

    with caplog.at_level(logging.ERROR, logger="spcore.server"):
        server.call(broken, (), NOW)
    assert "a function handed to the loop thread failed" in caplog.text
    assert server.stats.errors == 1


# -- counters ----------------------------------------------------------------------------------


def test_stats_count_connections_handshakes_errors_and_bytes(
    monkeypatch: pytest.MonkeyPatch, server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    fed = 0
    receive = Connection.receive_data

    def counting(self: Connection, data: bytes, now: float) -> None:
        nonlocal fed
        fed += len(data)
        receive(self, data, now)

    monkeypatch.setattr(Connection, "receive_data", counting)
    server, _ = echo_server(tls=server_tls, handshake_timeout=10.0)
    stats = server.stats
    good = [MemLink(server, client=client_tls) for _ in range(2)]
    assert (stats.connections_total, stats.connections_open, stats.handshakes) == (2, 2, 2)
    good[0].send(b"hello\n")
    assert good[0].take() == b"hello\r\n"
    bad = MemLink(server)
    bad.send_raw(b"\x16\x03\x01\xff\xff")
    assert stats.tls_errors == 1
    slow = MemLink(server)
    slow.advance(10.0)
    assert stats.timeouts == 1 and slow.closed
    for link in (*good, bad):
        link.client_close()
    links = (*good, bad, slow)
    assert all(link.closed for link in links)
    assert (stats.connections_total, stats.connections_open) == (4, 0)
    assert stats.bytes_sent == sum(len(link.raw_received) for link in links)
    assert stats.bytes_received == fed > 0
    server.refused()
    assert stats.connections_refused == 1
    assert stats.as_dict()["handshakes"] == 2


# -- the wall clock ----------------------------------------------------------------------------


def test_wall_time_follows_the_offset_start_learnt() -> None:
    server, _ = echo_server()
    assert server.wall_time(NOW + 61) == WALL + 61
    server.start(NOW, WALL + 86_400)  # a driver restarting with another clock
    assert server.wall_time(NOW + 61) == WALL + 86_400 + 61


def test_http_date_is_made_once_per_second() -> None:
    date = DateCache()
    assert date(WALL) == (b"date", b"Tue, 14 Nov 2023 22:13:20 GMT")
    assert date(WALL + 0.999) is date(WALL)
    assert date(WALL + 61) == (b"date", b"Tue, 14 Nov 2023 22:14:21 GMT")
