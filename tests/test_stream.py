"""Stream handlers over every framing, sessions talking to each other, and blocking handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from errorlog import no_error_logs
from hypothesis import given, settings
from hypothesis import strategies as st
from memlink import LOCAL, PEER, ByHand, Clock, MemLink

from spcore.config import Limits
from spcore.errors import ProtocolError, RemoteProtocolError
from spcore.framing import (
    DotFraming,
    Framing,
    FramingError,
    LengthPrefixFraming,
    LineFraming,
    RawFraming,
)
from spcore.listeners import stream_listener
from spcore.server import Listener, Server
from spcore.stream import DeferredSession, Session, Sessions, StreamHandler, StreamProtocol
from spcore.tls import ClientTLS, ServerTLS

NOW = 1000.0
CHUNKS = pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
TLS = pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])

Event = tuple[str, object]
AnySession = Session | DeferredSession


class Journal(StreamHandler):
    """Records every call in ``events``; echoes, or obeys a few commands.

    ``QUIT`` replies and closes; ``ALL x``/``EVERYONE x`` broadcast x (without/with this
    session) and report the count; ``TO id x`` sends x to session id; ``FAIL`` raises.
    """

    def __init__(
        self,
        events: list[Event],
        framing: Callable[[], Framing] = LineFraming,
        *,
        blocking: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        self.events = events
        self._framing = framing
        self.blocking = blocking
        self.idle_timeout = idle_timeout

    def framing(self) -> Framing:
        return self._framing()

    def start(self, session: AnySession) -> None:
        self.events.append(("start", session.id))

    def message(self, session: AnySession, message: bytes) -> None:
        self.events.append(("message", message))
        command, _, arg = message.partition(b" ")
        if command == b"QUIT":
            session.send(b"BYE")
            session.close()
        elif command in (b"ALL", b"EVERYONE"):
            count = session.broadcast(arg, include_self=command == b"EVERYONE")
            session.send(b"sent to %d" % count)
        elif command == b"TO":
            target, _, text = arg.partition(b" ")
            session.send(b"ok" if session.send_to(int(target), text) else b"gone")
        elif command == b"FAIL":
            raise RuntimeError("handler bug")
        else:
            session.send(message)

    def timeout(self, session: AnySession) -> None:
        self.events.append(("timeout", session.id))
        super().timeout(session)

    def error(self, session: AnySession, error: ProtocolError) -> None:
        self.events.append(("error", error))

    def close(self, session: Session) -> None:
        self.events.append(("close", session.id))


def serve(
    events: list[Event],
    *,
    tls: ServerTLS | None = None,
    framing: Callable[[], Framing] = LineFraming,
    blocking: bool = False,
    idle_timeout: float | None = None,
    **limits: float,
) -> Server:
    def handler() -> Journal:
        return Journal(events, framing, blocking=blocking, idle_timeout=idle_timeout)

    listener = stream_listener(handler, tls=tls)
    server = Server([listener], Limits(**limits))  # type: ignore[arg-type]
    server.start(NOW, 1_700_000_000.0)
    return server


def sessions(server: Server) -> Sessions:
    """The registry the server's (first) listener gives its protocols."""
    protocol = server.listeners[0].protocol()
    assert isinstance(protocol, StreamProtocol)
    return protocol.sessions


def of(events: list[Event], kind: str) -> list[object]:
    return [arg for name, arg in events if name == kind]


def run_jobs(link: MemLink) -> int:
    """Play the driver's worker pool for a link made with ``run_jobs=False``."""
    count = 0
    while jobs := link.take_jobs():
        for job in jobs:
            job.run()
            link.conn.job_done(job, link.clock.now)
            count += 1
        link.pump()
    return count


# -- framings ----------------------------------------------------------------------------------

FRAMINGS = pytest.mark.parametrize(
    ("framing", "wire", "messages"),
    [
        (LineFraming, b"hello\r\nworld\n\n", [b"hello", b"world", b""]),
        (DotFraming, b"a\r\n..b\r\n.\r\n.\r\n", [b"a\r\n.b", b""]),
        (LengthPrefixFraming, b"\0\0\0\5hello\0\0\0\0\0\0\0\1x", [b"hello", b"", b"x"]),
    ],
    ids=["line", "dot", "length"],
)


@CHUNKS
@FRAMINGS
def test_echo_over_each_framing(
    framing: Callable[[], Framing], wire: bytes, messages: list[bytes], chunk: int | None
) -> None:
    events: list[Event] = []
    link = MemLink(serve(events, framing=framing), chunk=chunk)
    link.send(wire)
    assert of(events, "message") == messages
    encoder = framing()
    assert link.take() == b"".join(encoder.frame(m) for m in messages)


@CHUNKS
def test_echo_with_raw_framing_keeps_the_bytes(chunk: int | None) -> None:
    events: list[Event] = []
    link = MemLink(serve(events, framing=RawFraming), chunk=chunk)
    link.send(b"no framing at all\n")
    assert b"".join(of(events, "message")) == b"no framing at all\n"  # type: ignore[arg-type]
    assert len(of(events, "message")) == (1 if chunk is None else 18)
    assert link.take() == b"no framing at all\n"


@CHUNKS
@TLS
def test_line_echo_like_spserver(
    server_tls: ServerTLS, client_tls: ClientTLS, tls: bool, chunk: int | None
) -> None:
    events: list[Event] = []
    server = serve(events, tls=server_tls if tls else None)
    link = MemLink(server, client=client_tls if tls else None, chunk=chunk)
    assert of(events, "start") == [link.conn.id]
    link.send(b"first\r\nsecond\n")
    assert link.take() == b"first\r\nsecond\r\n"
    link.send(b"thi")
    assert link.take() == b""
    link.send(b"rd\n")
    assert link.take() == b"third\r\n"


@CHUNKS
@TLS
def test_close_after_reply_flushes_then_ends(
    server_tls: ServerTLS, client_tls: ClientTLS, tls: bool, chunk: int | None
) -> None:
    events: list[Event] = []
    server = serve(events, tls=server_tls if tls else None)
    link = MemLink(server, client=client_tls if tls else None, chunk=chunk)
    link.send(b"QUIT\nignored after quit\n")
    assert link.take() == b"BYE\r\n"
    assert link.client_got_eof and not link.closed
    assert link.client_saw_close_notify == tls
    assert of(events, "message") == [b"QUIT"]  # nothing is handled after the close
    link.client_close()
    assert link.closed and of(events, "close") == [link.conn.id]
    assert not sessions(server) and not server.connections


# -- sessions talking to each other ----------------------------------------------------------


@TLS
@pytest.mark.parametrize("include_self", [False, True], ids=["others", "everyone"])
def test_broadcast_reaches_the_other_sessions(
    server_tls: ServerTLS, client_tls: ClientTLS, tls: bool, include_self: bool
) -> None:
    events: list[Event] = []
    server = serve(events, tls=server_tls if tls else None)
    a, b, c = (MemLink(server, client=client_tls if tls else None) for _ in range(3))
    a.send(b"EVERYONE hi\n" if include_self else b"ALL hi\n")
    assert b.take() == b"hi\r\n" and c.take() == b"hi\r\n"
    if include_self:
        assert a.take() == b"hi\r\nsent to 3\r\n"
    else:
        assert a.take() == b"sent to 2\r\n"


def test_broadcast_skips_sessions_that_are_closing() -> None:
    events: list[Event] = []
    server = serve(events)
    a, b, c = (MemLink(server) for _ in range(3))
    b.send(b"QUIT\n")
    assert b.take() == b"BYE\r\n"
    a.send(b"ALL hi\n")
    assert a.take() == b"sent to 1\r\n" and c.take() == b"hi\r\n" and b.take() == b""


def test_a_broadcast_times_its_send_deadline_by_the_sender_s_clock() -> None:
    clock = Clock()
    server = serve([], send_timeout=60.0)
    a, b = MemLink(server, clock=clock), MemLink(server, clock=clock)
    clock.now += 100.0  # b has been quiet for longer than the send timeout
    b.window = 0  # and its socket takes nothing for a moment
    a.send(b"ALL hello\n")
    assert b.conn.deadline == clock.now + 60.0  # not b's last call plus 60 s: long past
    b.advance(1.0)
    assert not b.closed
    b.let_client_read(None)
    assert b.take() == b"hello\r\n"


def test_send_to_a_gone_session_returns_false() -> None:
    events: list[Event] = []
    server = serve(events)
    a, b = MemLink(server), MemLink(server)
    a.send(b"TO %d psst\n" % b.conn.id)
    assert a.take() == b"ok\r\n" and b.take() == b"psst\r\n"
    b.client_close()
    assert b.closed and b.conn.id not in sessions(server)
    a.send(b"TO %d psst\n" % b.conn.id)
    assert a.take() == b"gone\r\n"
    a.send(b"TO 9999 nobody\n")
    assert a.take() == b"gone\r\n"


# -- timeouts and errors -----------------------------------------------------------------------


def test_idle_timeout_calls_timeout_which_closes_by_default() -> None:
    events: list[Event] = []
    link = MemLink(serve(events, idle_timeout=10.0))
    link.advance(6.0)
    link.send(b"still here\n")  # input restarts the idle timer
    link.advance(9.0)
    assert of(events, "timeout") == [] and not link.client_got_eof
    link.advance(1.0)
    assert of(events, "timeout") == [link.conn.id]
    assert link.client_got_eof
    link.client_close()
    assert of(events, "close") == [link.conn.id]


def test_idle_time_restarts_when_our_output_stops_holding_reading_back() -> None:
    events: list[Event] = []
    marks = {"write_high_water": 4096.0, "write_low_water": 1024.0}
    link = MemLink(serve(events, idle_timeout=10.0, **marks))
    link.window = 0  # the peer reads nothing for a while
    link.send(b"x" * 5000 + b"\n")  # the echo fills our output: we stop reading
    link.advance(30.0)
    assert of(events, "timeout") == []  # the peer was not idle: we were not listening
    link.let_client_read(None)
    link.advance(9.0)
    assert of(events, "timeout") == []
    link.advance(1.0)
    assert of(events, "timeout") == [link.conn.id]


def test_a_timeout_handler_may_keep_the_connection() -> None:
    class Patient(Journal):
        def timeout(self, session: AnySession) -> None:
            session.send(b"anyone there?")

    server = Server([Listener(lambda: StreamProtocol(Patient([], idle_timeout=5.0)))])
    link = MemLink(server)
    link.advance(5.0)
    assert link.take() == b"anyone there?\r\n" and not link.client_got_eof
    link.advance(60.0)  # one call per silence, not a loop
    assert link.take() == b""
    link.send(b"yes\n")
    link.advance(5.0)
    assert link.take() == b"yes\r\nanyone there?\r\n"


@CHUNKS
@TLS
def test_a_line_too_long_is_an_error_then_a_close(
    server_tls: ServerTLS, client_tls: ClientTLS, tls: bool, chunk: int | None
) -> None:
    events: list[Event] = []
    server = serve(events, tls=server_tls if tls else None, framing=lambda: LineFraming(16))
    link = MemLink(server, client=client_tls if tls else None, chunk=chunk)
    link.send(b"short\n")
    link.send(b"x" * 40 + b"\n")
    assert of(events, "message") == [b"short"]
    (error,) = of(events, "error")
    assert isinstance(error, FramingError) and "longer than 16" in str(error)
    assert link.take() == b"short\r\n" and link.client_got_eof
    assert server.stats.errors == 1
    link.client_close()
    assert link.closed and of(events, "close") == [link.conn.id]


@pytest.mark.parametrize(
    ("framing", "partial"),
    [(LineFraming, b"no newline"), (DotFraming, b"body\r\n."), (LengthPrefixFraming, b"\0\0")],
    ids=["line", "dot", "length"],
)
def test_eof_inside_a_message_is_reported_as_truncation(
    framing: Callable[[], Framing], partial: bytes
) -> None:
    events: list[Event] = []
    link = MemLink(serve(events, framing=framing))
    link.send(partial)
    link.client_close()
    (error,) = of(events, "error")
    assert isinstance(error, FramingError) and "incomplete" in str(error)
    assert link.closed and of(events, "close") == [link.conn.id]


def test_clean_eof_between_messages_is_no_error() -> None:
    events: list[Event] = []
    link = MemLink(serve(events))
    link.send(b"complete\n")
    link.client_close()
    assert of(events, "error") == [] and link.closed
    assert link.take() == b"complete\r\n"


@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "ragged"])
def test_ragged_tls_eof_is_reported(
    server_tls: ServerTLS, client_tls: ClientTLS, notify: bool
) -> None:
    events: list[Event] = []
    link = MemLink(serve(events, tls=server_tls), client=client_tls)
    link.send(b"complete\n")
    link.client_close(notify=notify)
    errors = of(events, "error")
    if notify:
        assert errors == []
    else:
        (error,) = errors
        assert isinstance(error, RemoteProtocolError) and "close_notify" in str(error)
    assert link.closed and of(events, "close") == [link.conn.id]


@pytest.mark.parametrize(
    "chunk",
    [None, 6],
    ids=["same-chunk", "separate-chunks"],
)
def test_messages_before_a_framing_error_are_delivered(chunk: int | None) -> None:
    events: list[Event] = []
    link = MemLink(serve(events, framing=lambda: LineFraming(16)), chunk=chunk)
    link.send(b"hello\n" + b"x" * 40)
    assert of(events, "message") == [b"hello"]
    assert len(of(events, "error")) == 1


def test_handler_exception_closes_the_connection_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Event] = []
    server = serve(events)
    link = MemLink(server)
    with caplog.at_level(logging.ERROR, logger="spcore.stream"):
        link.send(b"before\nFAIL\nafter\n")
    assert "handler.message failed" in caplog.text
    assert of(events, "message") == [b"before", b"FAIL"]
    assert link.take() == b"before\r\n" and link.client_got_eof
    assert server.stats.errors == 1


# -- blocking handlers -------------------------------------------------------------------------


def test_blocking_handler_calls_become_jobs_and_pause_reading() -> None:
    events: list[Event] = []
    link = MemLink(serve(events, blocking=True), run_jobs=False)
    assert run_jobs(link) == 1 and of(events, "start") == [link.conn.id]  # start is a job too
    link.send(b"one\n")
    (job,) = link.take_jobs()
    assert not link.conn.reading
    link.send(b"two\n")
    assert link.to_server == b"two\n"  # not read while the job runs
    job.run()
    assert of(events, "message") == [b"one"] and link.take() == b""  # recorded, not applied
    link.conn.job_done(job, link.clock.now)
    link.pump()
    assert link.take() == b"one\r\n" and not link.to_server
    assert run_jobs(link) == 1
    assert link.take() == b"two\r\n" and link.conn.reading


def test_deferred_session_applies_recorded_actions_in_order() -> None:
    class Scripted(Journal):
        def message(self, session: AnySession, message: bytes) -> None:
            assert isinstance(session, DeferredSession)
            session.send(b"1")
            assert session.broadcast(b"2") == 1
            session.send(b"3")
            session.close()
            assert session.closed
            session.send(b"4: after close, dropped")

    server = Server([stream_listener(lambda: Scripted([], blocking=True))])
    other = MemLink(server)
    link = MemLink(server)
    assert other.take() == b""
    link.send(b"go\n")
    assert link.take() == b"1\r\n3\r\n" and link.client_got_eof
    assert other.take() == b"2\r\n"


def test_blocking_handler_exception_closes_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Event] = []
    server = serve(events, blocking=True)
    link = MemLink(server)
    with caplog.at_level(logging.ERROR, logger="spcore.stream"):
        link.send(b"before\nFAIL\n")
    assert "blocking handler failed" in caplog.text
    assert "handler bug" in caplog.text
    assert link.take() == b"before\r\n" and link.client_got_eof
    assert server.stats.errors == 1
    link.client_close()
    assert of(events, "close") == [link.conn.id]


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "blocking"])
def test_nothing_is_handled_after_the_handler_closed(blocking: bool) -> None:
    events: list[Event] = []
    link = MemLink(serve(events, blocking=blocking))
    link.send(b"QUIT\nmore\nand more\n")
    assert of(events, "message") == [b"QUIT"]
    assert link.take() == b"BYE\r\n" and link.client_got_eof


def test_idle_timer_does_not_run_while_a_blocking_job_runs() -> None:
    events: list[Event] = []
    link = MemLink(serve(events, blocking=True, idle_timeout=10.0), run_jobs=False)
    run_jobs(link)
    link.send(b"slow\n")
    (job,) = link.take_jobs()
    link.advance(30.0)  # the job takes longer than the idle timeout
    job.run()
    link.conn.job_done(job, link.clock.now)
    link.pump()
    assert link.take() == b"slow\r\n"
    assert link.take_jobs() == [] and of(events, "timeout") == []
    assert not link.client_got_eof
    link.advance(10.0)  # idle again from the end of the job
    run_jobs(link)
    assert of(events, "timeout") == [link.conn.id] and link.client_got_eof


def test_a_blocking_handler_is_closed_after_the_job_it_was_running() -> None:
    events: list[Event] = []
    server = serve(events, blocking=True)
    other = MemLink(server)
    run_jobs(other)
    link = MemLink(server, run_jobs=False)
    run_jobs(link)
    link.send(b"ALL last words\n")
    (job,) = link.take_jobs()
    link.conn.connection_lost(ConnectionResetError(), link.clock.now)
    assert of(events, "close") == []  # not while message() may still be running
    job.run()
    link.conn.job_done(job, link.clock.now)
    assert link.conn.next_action() is None and link.take_jobs() == []
    assert [name for name, _ in events][-2:] == ["message", "close"]
    assert of(events, "close") == [link.conn.id]
    other.pump()
    assert other.take() == b"last words\r\n"  # what the handler did still reaches the others


# -- the one exit path -------------------------------------------------------------------------


def _graceful(link: MemLink) -> None:
    link.send(b"QUIT\n")
    link.client_close()


def _reset(link: MemLink) -> None:
    link.conn.connection_lost(ConnectionResetError("reset"), link.clock.now)
    link.closed = True


def _abort(link: MemLink) -> None:
    link.conn.abort("test")
    link.pump()


def _timeout(link: MemLink) -> None:
    link.advance(10.0)
    link.client_close()


def _shutdown(link: MemLink) -> None:
    link.server.request_stop(link.clock.now)
    link.pump()
    link.client_close()


@pytest.mark.parametrize(
    "end", [_graceful, _reset, _abort, _timeout, _shutdown], ids=lambda f: f.__name__[1:]
)
def test_handler_close_is_called_exactly_once_whatever_the_cause(
    end: Callable[[MemLink], None],
) -> None:
    events: list[Event] = []
    server = serve(events, idle_timeout=10.0)
    bystander = MemLink(server)
    link = MemLink(server)
    assert set(sessions(server)) == {bystander.conn.id, link.conn.id}
    end(link)
    assert link.closed
    link.conn.connection_lost(None, link.clock.now)  # a second report changes nothing
    assert of(events, "close") == [link.conn.id]
    assert link.conn.id not in sessions(server) and link.conn.id not in server.connections
    assert server.stats.connections_open == len(server.connections)


# -- property: arbitrary input never escapes, memory stays bounded ---------------------------

MAX_LINE = 64
LIMITS = {"write_high_water": 512, "write_low_water": 128}
steps = st.lists(st.tuples(st.binary(min_size=1, max_size=48), st.booleans()), max_size=40)


class Echo(StreamHandler):
    def __init__(self, framings: list[LineFraming]) -> None:
        self.framings = framings

    def framing(self) -> Framing:
        self.framings.append(LineFraming(MAX_LINE))
        return self.framings[-1]

    def message(self, session: AnySession, message: bytes) -> None:
        session.send(message)


def bounded_server(framings: list[LineFraming], tls: ServerTLS | None) -> Server:
    listener = stream_listener(lambda: Echo(framings), tls=tls)
    return Server([listener], Limits(**LIMITS))  # type: ignore[arg-type]


def check_bounded(framings: list[LineFraming], server: Server) -> None:
    for framing in framings:
        assert framing.buffered <= MAX_LINE + 1  # a trailing CR may still start the CRLF
    for conn in server.connections.values():
        assert conn.output_size <= LIMITS["write_high_water"] + 2 * 48 + 64


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@settings(max_examples=60, deadline=None)
@given(steps=steps)
def test_arbitrary_bytes_never_escape_and_memory_stays_bounded(
    server_tls: ServerTLS, tls: bool, steps: list[tuple[bytes, bool]]
) -> None:
    framings: list[LineFraming] = []
    server = bounded_server(framings, server_tls if tls else None)
    hand = ByHand(server.accept(server.listeners[0], PEER, LOCAL, NOW))
    conn = hand.conn
    with no_error_logs():
        for data, peer_reads in steps:
            hand.actions()
            if hand.closed:
                break
            if peer_reads:
                hand.take()
            if hand.reading:
                conn.receive_data(data, NOW)
            check_bounded(framings, server)
        conn.receive_data(b"", NOW)
        conn.connection_lost(None, NOW)
    assert not server.connections and not sessions(server)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=400), chunk=st.integers(1, 64), cut=st.integers(1, 200))
def test_tls_line_echo_survives_any_plaintext_and_chunking(
    server_tls: ServerTLS, client_tls: ClientTLS, data: bytes, chunk: int, cut: int
) -> None:
    framings: list[LineFraming] = []
    server = bounded_server(framings, server_tls)
    with no_error_logs():
        link = MemLink(server, client=client_tls, chunk=chunk)
        for start in range(0, len(data), cut):
            link.send(data[start : start + cut])
            check_bounded(framings, server)
        link.client_close()
    assert link.closed
    # Echoes of the complete lines, in order, up to the first one too long (which closes).
    *complete, rest = data.split(b"\n")
    expected = bytearray()
    for line in complete:
        body = line[:-1] if line.endswith(b"\r") else line
        if len(body) > MAX_LINE:
            break
        expected += body + b"\r\n"
    assert expected.startswith(link.received)
    if all(len(line) <= MAX_LINE for line in [*complete, rest]):
        assert link.received == expected


def test_a_slow_consumer_is_disconnected_instead_of_growing_without_end() -> None:
    events: list[Event] = []
    server = serve(events, max_session_backlog=4096)
    sender, reader = MemLink(server), MemLink(server)
    reader.window = 0  # this client never reads
    for _ in range(200):
        sender.send(b"ALL " + b"x" * 100 + b"\n")
    assert reader.closed
    assert reader.conn.output_size == 0  # dropped with the connection, not kept
    assert not sender.closed
    assert server.stats.errors >= 1
