"""The connection stack in memory: sniffing, PROXY headers, TLS, and the driver contract."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import PKI
from memlink import LOCAL, PEER, ByHand, MemLink, Recorder

from spcore.actions import CLOSE, READ_OFF, READ_ON, SHUT_WRITE, RunJobs, Send, SetTimer
from spcore.config import Limits
from spcore.connection import Connection, Hub
from spcore.layer import ProtocolLayer
from spcore.lifecycle import TRANSITIONS, Event, LifecycleError, State, next_state
from spcore.server import Listener, Server
from spcore.tls import Alert, ClientContext, ClientTLS, ServerTLS
from spcore.tls.engine import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    TLSEvent,
    TLSInfo,
)
from spcore.tls.records import alert_record

NOW = 1000.0
CHUNKS = pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
ALERT = 21


def make_server(
    protocol: Callable[[], ProtocolLayer],
    *,
    tls: ServerTLS | None = None,
    proxy: bool = False,
    engine: Callable[[], Any] | None = None,
    **limits: float,
) -> Server:
    tls_engine = "openssl" if engine is None else MadeEngines(engine)
    listener = Listener(protocol, tls=tls, proxy_protocol=proxy, tls_engine=tls_engine)  # type: ignore[arg-type]
    server = Server([listener], Limits(**limits))  # type: ignore[arg-type]
    server.start(NOW, 1_700_000_000.0)
    return server


class MadeEngines:
    """An engine factory whose per-listener state makes each engine with ``make()``."""

    name = "made"
    features: frozenset[Any] = frozenset()

    def __init__(self, make: Callable[[], Any]) -> None:
        self.new_engine = make

    def library_version(self) -> str:
        return "none"

    def server(self, config: ServerTLS) -> MadeEngines:
        return self

    def client(self, config: ClientTLS) -> MadeEngines:
        raise NotImplementedError


def recording_server(**kwargs: object) -> tuple[Server, list[Recorder]]:
    """A server whose connections each get a new ``Recorder`` (kept in the returned list)."""
    made: list[Recorder] = []
    echo = bool(kwargs.pop("echo", False))
    close_on = kwargs.pop("close_on", None)

    def factory() -> Recorder:
        made.append(Recorder(echo=echo, close_on=close_on))  # type: ignore[arg-type]
        return made[-1]

    return make_server(factory, **kwargs), made  # type: ignore[arg-type]


def accept(server: Server) -> Connection:
    return server.accept(server.listeners[0], PEER, LOCAL, NOW)


def drain(conn: Connection, now: float = NOW) -> bytes:
    """Play a driver whose socket takes everything: write out all output."""
    return ByHand(conn, now).drain()


def client_hello(client_tls: ClientTLS) -> bytes:
    client = ClientContext(client_tls).new_engine("localhost")
    client.start()
    return client.data_to_send()


def alert_records(data: bytes) -> list[tuple[int, int]]:
    """Split plaintext alert records into (level, description); fail on anything else."""
    alerts = []
    while data:
        assert data[0] == ALERT, data
        length = int.from_bytes(data[3:5], "big")
        assert length == 2
        alerts.append((data[5], data[6]))
        data = data[5 + length :]
    return alerts


class PrefacedLink(MemLink):
    """A MemLink whose first bytes on the wire are ``preface`` (a PROXY header)."""

    def __init__(self, server: Server, preface: bytes, **kwargs: object) -> None:
        self._preface: bytes | None = preface
        super().__init__(server, **kwargs)  # type: ignore[arg-type]

    def pump(self, rounds: int = 10_000) -> None:
        if self._preface is not None:
            self.to_server[:0] = self._preface
            self._preface = None
        super().pump(rounds)


# -- plaintext, garbage and bad records on a TLS listener ------------------------------------


@CHUNKS
def test_plain_http_on_tls_port_is_answered_in_cleartext(
    server_tls: ServerTLS, chunk: int | None
) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server, chunk=chunk)
    link.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    reply = link.take()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in reply
    assert b"this port speaks HTTPS; you sent plain HTTP. Use https://" in reply
    assert link.client_got_eof and not link.closed  # write side shut, waiting for the peer
    assert made[0].conn is None  # the protocol never started
    link.client_close()
    assert link.closed
    assert server.stats.errors == 1 and server.stats.handshakes == 0


def test_plain_http_is_detected_from_the_method_alone(server_tls: ServerTLS) -> None:
    server, _ = recording_server(tls=server_tls)
    link = MemLink(server, chunk=1)
    link.send(b"POS")
    assert link.raw_received == b"" and not link.client_got_eof  # undecided yet
    link.send(b"T ")
    assert link.take().startswith(b"HTTP/1.1 400 ")
    assert link.client_got_eof


@CHUNKS
def test_client_hello_one_byte_at_a_time_still_handshakes(
    server_tls: ServerTLS, client_tls: ClientTLS, chunk: int | None
) -> None:
    server, made = recording_server(tls=server_tls, echo=True)
    link = MemLink(server, client=client_tls, chunk=chunk)
    assert link.client_info is not None and link.conn.tls_info is not None
    link.send(b"ping")
    assert link.take() == b"ping"
    assert made[0].made_after_handshake is True
    assert server.stats.handshakes == 1


@CHUNKS
@pytest.mark.parametrize(
    "garbage",
    [b"hello, this is not TLS\r\n", bytes(range(8)) * 4, b"\x16\x04\x00\x00\x10" + b"x" * 16],
    ids=["text", "binary", "bad-version"],
)
def test_garbage_on_tls_port_gets_the_engine_answer_and_close(
    server_tls: ServerTLS, garbage: bytes, chunk: int | None
) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server, chunk=chunk)
    link.send(garbage)
    alert_records(bytes(link.raw_received))  # nothing but alerts (OpenSSL may send none)
    assert link.client_got_eof and made[0].conn is None
    assert server.stats.tls_errors == 1
    link.advance(server.limits.close_timeout)
    assert link.closed


def test_engine_alert_is_flushed_before_closing(pki: PKI, server_tls: ServerTLS) -> None:
    # A TLS 1.2 client whose only cipher the server refuses: OpenSSL answers handshake_failure.
    client = ClientTLS(
        trust=pki.ca_file, max_version="1.2", engine_options={"openssl": {"ciphers": "AES128-SHA"}}
    )
    server, made = recording_server(tls=server_tls)
    link = MemLink(server, client=client)
    assert alert_records(bytes(link.raw_received)) == [(2, Alert.HANDSHAKE_FAILURE)]
    assert link.client_error is not None and made[0].conn is None
    assert server.stats.tls_errors == 1
    link.client_close(notify=False)
    assert link.closed


@CHUNKS
def test_oversized_record_header_gets_a_plaintext_alert(
    server_tls: ServerTLS, chunk: int | None
) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server, chunk=chunk)
    link.send(b"\x16\x03\x01\xff\xff" + b"\x01" * 64)
    raw = bytes(link.raw_received)
    assert raw[0] == ALERT
    assert raw == alert_record(Alert.RECORD_OVERFLOW)
    assert link.client_got_eof and made[0].conn is None
    assert server.stats.tls_errors == 1
    link.client_close()
    assert link.closed


def test_client_hello_and_tls_info_expose_sni_and_alpn(pki: PKI, server_tls: ServerTLS) -> None:
    client = ClientTLS(trust=pki.ca_file, alpn=("h2", "http/1.1"))
    server, _ = recording_server(tls=server_tls)
    link = MemLink(server, client=client)
    hello = link.conn.client_hello
    assert hello is not None
    assert hello.server_name == "localhost"
    assert hello.alpn_protocols == ("h2", "http/1.1")
    info = link.conn.tls_info
    assert info is not None and info.server_name == "localhost"
    assert info.alpn_protocol == "http/1.1"


# -- the PROXY protocol -----------------------------------------------------------------------

SOURCE = ("203.0.113.7", 56324)


def proxy_v1() -> bytes:
    return b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"


def proxy_v2(command: int = 1) -> bytes:
    addresses = (
        ipaddress.IPv4Address(SOURCE[0]).packed
        + ipaddress.IPv4Address("192.0.2.1").packed
        + SOURCE[1].to_bytes(2, "big")
        + (443).to_bytes(2, "big")
    )
    head = b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x20 | command, 0x11))
    return head + len(addresses).to_bytes(2, "big") + addresses


PROXY_HEADERS = pytest.mark.parametrize("header", [proxy_v1(), proxy_v2()], ids=["v1", "v2"])


@CHUNKS
@PROXY_HEADERS
def test_proxy_header_then_request_in_one_buffer_on_a_plain_listener(
    header: bytes, chunk: int | None
) -> None:
    server, made = recording_server(proxy=True, echo=True)
    link = MemLink(server, chunk=chunk)
    assert made[0].conn is None  # waiting for the header
    link.send(header + b"hello")
    assert link.take() == b"hello"
    assert link.conn.peer == SOURCE
    assert link.conn.proxy is not None and link.conn.proxy.destination == ("192.0.2.1", 443)


@CHUNKS
@PROXY_HEADERS
def test_proxy_header_then_client_hello_on_a_tls_listener(
    server_tls: ServerTLS, client_tls: ClientTLS, header: bytes, chunk: int | None
) -> None:
    server, _ = recording_server(tls=server_tls, proxy=True, echo=True)
    link = PrefacedLink(server, header, client=client_tls, chunk=chunk)
    assert link.client_info is not None
    assert link.conn.peer == SOURCE
    link.send(b"over TLS")
    assert link.take() == b"over TLS"


def test_proxy_local_command_keeps_the_socket_address() -> None:
    server, made = recording_server(proxy=True, echo=True)
    link = MemLink(server)
    link.send(proxy_v2(command=0) + b"x")
    assert link.take() == b"x" and link.conn.peer == PEER
    assert made[0].conn is not None


@CHUNKS
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_bad_proxy_header_closes_without_a_response(
    server_tls: ServerTLS, tls: bool, chunk: int | None
) -> None:
    server, made = recording_server(proxy=True, tls=server_tls if tls else None, echo=True)
    link = MemLink(server, chunk=chunk)
    link.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert link.closed and link.raw_received == b""
    assert made[0].conn is None
    assert server.stats.errors == 1
    assert not server.connections


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 1.2", proxy_v2()[:20]], ids=str)
def test_eof_before_the_proxy_header_closes(sent: bytes) -> None:
    server, made = recording_server(proxy=True)
    link = MemLink(server)
    link.send(sent)
    assert not link.closed
    link.client_close()
    assert link.closed and link.raw_received == b""
    assert made[0].conn is None and made[0].lost == [None]


def test_proxy_header_must_arrive_within_the_handshake_timeout() -> None:
    server, _ = recording_server(proxy=True, handshake_timeout=5.0)
    link = MemLink(server)
    link.send(b"PROXY ")
    link.advance(4.9)
    assert not link.closed
    link.advance(0.2)
    assert link.closed and server.stats.timeouts == 1


# -- the driver contract ----------------------------------------------------------------------

FLOW = {"write_high_water": 4096, "write_low_water": 1024}


def test_reading_stops_above_high_water_and_resumes_below_low_water() -> None:
    server, made = recording_server(echo=True, **FLOW)
    hand = ByHand(accept(server))
    assert hand.actions() == [READ_ON]
    hand.conn.receive_data(b"x" * 5000, NOW)
    assert hand.actions()[:2] == [Send((b"x" * 5000,), 5000), READ_OFF]
    assert hand.conn.output_size == 5000 and not hand.conn.writable
    hand.take(5000 - 1025)  # 1025 left: above low water
    assert not hand.reading and made[0].resumed == 0
    assert hand.sending is not None and hand.sending.nbytes == 1025  # the rest, next
    hand.take(2)  # 1023 left
    assert hand.reading and hand.conn.writable and made[0].resumed == 1
    assert hand.drain() == b"x" * 1023


def test_one_send_is_in_flight_at_a_time_and_new_output_follows_it() -> None:
    server, made = recording_server()
    hand = ByHand(accept(server))
    transport = made[0].conn
    assert transport is not None
    transport.write(b"one")
    (_send,) = [a for a in hand.actions() if isinstance(a, Send)]
    transport.write(b"two")
    assert hand.actions() == []  # no second Send while the first is in flight
    assert hand.take() == b"one"
    assert hand.sending == Send((b"two",), 3)
    with pytest.raises(ValueError, match="in flight"):
        hand.conn.sent(4, NOW)  # more than the Send had: a driver bug, said loudly


def test_a_send_the_kernel_took_nothing_of_comes_back_whole() -> None:
    server, _made = recording_server(echo=True)
    hand = ByHand(accept(server))
    hand.conn.receive_data(b"abc", NOW)
    hand.actions()
    assert hand.take(0) == b""
    assert hand.sending == Send((b"abc",), 3)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_peer_that_stops_reading_stops_our_reading(
    server_tls: ServerTLS, client_tls: ClientTLS, tls: bool
) -> None:
    server, made = recording_server(echo=True, tls=server_tls if tls else None, **FLOW)
    link = MemLink(server, client=client_tls if tls else None, chunk=500)
    link.window = 0
    payload = bytes(range(256)) * 80  # 20 KiB, sent in small TLS records
    for start in range(0, len(payload), 256):
        link.send(payload[start : start + 256])
    assert not link.conn.reading
    assert link.to_server  # the rest waits in the client's socket
    assert 4096 <= link.conn.output_size < 4096 + 2 * 500
    link.window = None
    link.pump()
    assert link.conn.reading and made[0].resumed >= 1
    assert link.take() == payload


def test_graceful_close_shuts_the_write_side_after_flushing() -> None:
    server, made = recording_server(close_on=b"bye")
    hand = ByHand(accept(server))
    hand.actions()
    hand.conn.receive_data(b"bye", NOW)
    assert hand.conn.closing and hand.conn.state is State.FLUSHING
    assert made[0].conn is not None
    made[0].conn.write(b"ignored")  # closing: writes are dropped
    deadline = NOW + server.limits.close_timeout
    # Nothing to send: the write side is shut; reading goes on, to discard until the EOF.
    assert hand.actions() == [SHUT_WRITE, SetTimer(deadline)]
    assert hand.conn.state is State.DRAINING and hand.reading
    hand.conn.receive_data(b"late", NOW + 1.5)
    assert made[0].data == b"bye" and hand.actions() == []
    hand.conn.receive_data(b"", NOW + 1.5)
    assert hand.actions() == [CLOSE] and hand.conn.state is State.CLOSE


def test_graceful_close_flushes_pending_output_first() -> None:
    server, _ = recording_server(echo=True, close_on=b"!")
    hand = ByHand(accept(server))
    hand.conn.receive_data(b"last words!", NOW)
    actions = hand.actions()
    assert SHUT_WRITE not in actions  # output still pending
    assert hand.take() == b"last words!"
    assert hand.shut


def test_close_timeout_ends_a_peer_that_never_closes() -> None:
    server, _ = recording_server(close_on=b"bye", close_timeout=2.0)
    hand = ByHand(accept(server))
    hand.conn.receive_data(b"bye", NOW)
    assert SHUT_WRITE in hand.actions() and hand.timer == NOW + 2.0
    hand.conn.on_deadline(NOW + 1.9)  # early
    assert hand.actions() == [SetTimer(NOW + 2.0)]  # a timer that fired is told again
    hand.conn.on_deadline(NOW + 2.0)
    assert hand.actions() == [CLOSE]


def test_zero_close_timeout_closes_right_after_flushing() -> None:
    server, _ = recording_server(echo=True, close_on=b"bye", close_timeout=0)
    hand = ByHand(accept(server))
    hand.conn.receive_data(b"bye", NOW)
    hand.take()
    assert hand.closed and not hand.shut


def test_peer_eof_first_then_our_close_closes_after_flushing() -> None:
    server, made = recording_server(echo=True)
    hand = ByHand(accept(server))
    hand.conn.receive_data(b"abc", NOW)
    hand.conn.receive_data(b"", NOW)
    hand.actions()
    assert made[0].eofs == [True] and not hand.reading
    assert made[0].conn is not None
    made[0].conn.close()
    assert not hand.closed
    assert hand.drain() == b"abc"
    assert hand.closed and not hand.shut


def test_abort_asks_to_close_at_once() -> None:
    server, made = recording_server()
    hand = ByHand(accept(server))
    assert made[0].conn is not None
    made[0].conn.write(b"dropped")
    made[0].conn.abort("test")
    assert hand.actions() == [CLOSE] and not hand.conn.reading
    hand.conn.connection_lost(None, NOW)
    assert made[0].lost == [None]


def test_an_abort_with_a_send_in_flight_closes_without_waiting_for_it() -> None:
    server, _made = recording_server(echo=True)
    hand = ByHand(accept(server))
    hand.conn.receive_data(b"abc", NOW)
    hand.actions()
    assert hand.sending is not None
    hand.conn.abort("test")
    assert hand.actions() == [CLOSE]
    hand.conn.sent(3, NOW)  # a completion arriving after the abort is ignored
    assert hand.conn.next_action() is CLOSE


def test_jobs_submitted_before_an_abort_are_still_handed_out() -> None:
    server, made = recording_server()
    hand = ByHand(accept(server))
    transport = made[0].conn
    assert transport is not None
    transport.submit_job(lambda: None, lambda job, now: None)
    transport.abort("test")
    first, second = hand.actions()
    assert isinstance(first, RunJobs) and len(first.jobs) == 1 and second is CLOSE


def test_connection_lost_is_idempotent_and_forgets_the_connection() -> None:
    server, made = recording_server()
    conn = accept(server)
    other = accept(server)
    assert server.stats.connections_open == 2
    error = ConnectionResetError("reset by peer")
    conn.connection_lost(error, NOW)
    conn.connection_lost(None, NOW)
    assert made[0].lost == [error]
    assert conn.closed and conn.next_action() is None
    assert conn.id not in server.connections and other.id in server.connections
    assert server.stats.connections_open == 1


def test_calls_after_connection_lost_are_no_ops() -> None:
    server, made = recording_server(echo=True)
    conn = accept(server)
    conn.receive_data(b"abc", NOW)
    conn.connection_lost(None, NOW)
    conn.receive_data(b"more", NOW)
    conn.receive_data(b"", NOW)
    conn.sent(3, NOW)
    conn.on_deadline(NOW + 10_000)
    conn.write(b"x")
    conn.close()
    conn.abort("late")
    assert made[0].data == b"abc" and made[0].eofs == [] and made[0].timers == 0
    assert conn.next_action() is None
    assert conn.deadline is None and not conn.reading and conn.closed
    assert made[0].lost == [None]
    assert not server.connections
    assert all(type(a).__name__ != "Sync" for a in iter(server.next_action, None))


def test_connection_lost_during_the_handshake_leaves_no_deadline(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, _ = recording_server(tls=server_tls)
    conn = accept(server)
    conn.receive_data(client_hello(client_tls), NOW)
    assert conn.deadline == NOW + server.limits.handshake_timeout
    conn.connection_lost(OSError("reset"), NOW)
    assert conn.deadline is None
    assert conn.next_action() is None  # the engine's ServerHello is not handed out any more


def test_handshake_timeout_aborts_an_unfinished_handshake(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, made = recording_server(tls=server_tls, handshake_timeout=10.0)
    link = MemLink(server)
    link.send_raw(client_hello(client_tls))  # and never the client's Finished
    assert link.raw_received  # ServerHello and friends went out
    link.advance(9.0)
    assert not link.closed
    link.advance(1.0)
    assert link.closed and made[0].conn is None
    assert server.stats.timeouts == 1 and not server.connections


def test_a_finished_handshake_is_not_cut_by_the_handshake_timeout(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, made = recording_server(tls=server_tls, handshake_timeout=10.0)
    link = MemLink(server, client=client_tls)
    assert link.conn.deadline is None
    link.advance(3600)
    assert not link.closed and made[0].timers == 0


def test_send_timeout_aborts_a_peer_that_never_reads() -> None:
    server, _ = recording_server(echo=True, send_timeout=30.0)
    link = MemLink(server)
    link.window = 0
    link.send(b"you will never read this")
    assert link.conn.deadline == NOW + 30.0
    link.advance(29.0)
    assert not link.closed
    link.advance(1.0)
    assert link.closed and server.stats.timeouts == 1


def test_send_progress_pushes_the_send_timeout_back() -> None:
    server, _ = recording_server(echo=True, send_timeout=30.0)
    link = MemLink(server)
    link.window = 0
    link.send(b"0123456789")
    link.advance(20.0)
    link.window = 4
    link.pump()
    assert link.conn.deadline == NOW + 20.0 + 30.0
    link.advance(29.0)
    assert not link.closed
    link.window = None
    link.pump()
    assert link.take() == b"0123456789" and link.conn.deadline is None


def test_send_timeout_covers_the_cleartext_rejection(server_tls: ServerTLS) -> None:
    server, _ = recording_server(tls=server_tls, send_timeout=30.0)
    link = MemLink(server)
    link.window = 0
    link.send(b"GET / HTTP/1.1\r\n\r\n")
    assert link.conn.deadline == NOW + 30.0
    link.advance(30.0)
    assert link.closed


def test_deadline_is_the_earliest_of_all_timers() -> None:
    server, made = recording_server(send_timeout=60.0)
    conn = accept(server)
    layer = made[0]
    assert conn.deadline is None
    layer.deadline = NOW + 5.0
    assert conn.deadline == NOW + 5.0
    assert layer.conn is not None
    layer.conn.write(b"pending")
    assert conn.deadline == NOW + 5.0
    layer.deadline = NOW + 100.0
    assert conn.deadline == NOW + 60.0
    conn.on_deadline(NOW + 60.0)
    assert conn.next_action() is CLOSE and layer.timers == 0  # the send timeout, not the protocol


def test_the_protocol_timer_does_not_run_while_our_output_holds_reading_back() -> None:
    server, made = recording_server(echo=True, send_timeout=60.0, **FLOW)
    conn = accept(server)
    layer = made[0]
    layer.deadline = NOW + 5.0
    conn.receive_data(b"x" * 5000, NOW)  # echoed: above high water, reading stops
    assert not conn.reading and conn.deadline == NOW + 60.0  # only the send timeout runs
    conn.on_deadline(NOW + 30.0)
    assert layer.timers == 0 and not conn.closing  # the client was not idle: we were
    ByHand(conn, NOW + 30.0).take(4000)
    assert conn.reading and layer.resumed == 1 and conn.deadline == NOW + 5.0
    conn.on_deadline(NOW + 30.0)
    assert layer.timers == 1  # the layer restarts its time in resume_writing (this one did not)


def test_early_and_stale_deadline_calls_are_harmless() -> None:
    server, made = recording_server()
    conn = accept(server)
    layer = made[0]
    conn.on_deadline(NOW)  # nothing is due
    layer.deadline = NOW + 5.0
    conn.on_deadline(NOW + 4.0)  # early
    assert layer.timers == 0
    conn.on_deadline(NOW + 5.0)
    assert layer.timers == 1 and layer.deadline is None
    conn.on_deadline(NOW + 6.0)  # stale: the timer was already handled
    assert layer.timers == 1 and not conn.closing


class Broken(Recorder):
    """Raises in the method named ``where``."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def _maybe_fail(self, method: str) -> None:
        if method == self.where:
            raise RuntimeError(f"broken {method}")

    def connection_made(self, conn: Connection, now: float) -> None:
        super().connection_made(conn, now)
        conn.write(b"x" * 10)  # above the tests' high water: resume_writing follows a drain
        self._maybe_fail("connection_made")

    def data_received(self, data: bytes, now: float) -> None:
        super().data_received(data, now)
        self._maybe_fail("data_received")

    def eof_received(self, clean: bool, now: float) -> None:
        self._maybe_fail("eof_received")

    def timer_expired(self, now: float) -> None:
        self._maybe_fail("timer_expired")

    def resume_writing(self, now: float) -> None:
        self._maybe_fail("resume_writing")

    def shutdown(self, now: float) -> None:
        self._maybe_fail("shutdown")

    def connection_lost(self, error: BaseException | None) -> None:
        super().connection_lost(error)
        self._maybe_fail("connection_lost")


@pytest.mark.parametrize(
    "where",
    [
        "connection_made",
        "data_received",
        "eof_received",
        "timer_expired",
        "resume_writing",
        "shutdown",
    ],
)
def test_an_exception_in_the_protocol_aborts_only_that_connection(
    caplog: pytest.LogCaptureFixture, where: str
) -> None:
    layers: list[Recorder] = []

    def factory() -> Recorder:  # the first connection is a healthy bystander
        layers.append(Broken(where) if layers else Recorder())
        return layers[-1]

    server = make_server(factory, write_high_water=8, write_low_water=4)
    bystander = accept(server)
    with caplog.at_level(logging.ERROR, logger="spcore.connection"):
        conn = accept(server)
        conn.receive_data(b"data", NOW)
        drain(conn)  # (no protocol timer runs while its output holds reading back)
        layers[1].deadline = NOW + 1
        conn.on_deadline(NOW + 1)
        server.request_stop(NOW + 2)
        conn.receive_data(b"", NOW + 2)
    assert conn.state is State.CLOSE
    assert any("internal error" in r.getMessage() for r in caplog.records)
    assert server.stats.errors == 1
    conn.connection_lost(None, NOW + 3)
    assert layers[1].lost == [None]
    assert bystander.id in server.connections and bystander.state is State.OPEN


def test_an_exception_in_connection_lost_is_logged_and_the_registry_still_cleaned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(lambda: Broken("connection_lost"))
    conn = accept(server)
    with caplog.at_level(logging.ERROR, logger="spcore.connection"):
        conn.connection_lost(None, NOW)
    assert "protocol failed while closing" in caplog.text
    assert not server.connections and conn.closed


def test_an_exception_in_connection_made_on_tls_aborts(
    caplog: pytest.LogCaptureFixture, server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server = make_server(lambda: Broken("connection_made"), tls=server_tls)
    with caplog.at_level(logging.ERROR, logger="spcore.connection"):
        link = MemLink(server, client=client_tls)
    assert link.closed and "internal error" in caplog.text
    assert link.received == b""  # the write before the failure is dropped


# -- TLS through the connection ---------------------------------------------------------------


@CHUNKS
def test_protocol_close_sends_close_notify(
    server_tls: ServerTLS, client_tls: ClientTLS, chunk: int | None
) -> None:
    server, _ = recording_server(tls=server_tls, echo=True, close_on=b"bye")
    link = MemLink(server, client=client_tls, chunk=chunk)
    link.send(b"bye")
    assert link.take() == b"bye"
    assert link.client_saw_close_notify and link.client_got_eof
    assert not link.closed
    link.client_close()
    assert link.closed


@CHUNKS
@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "ragged"])
def test_peer_eof_is_reported_clean_or_ragged(
    server_tls: ServerTLS, client_tls: ClientTLS, notify: bool, chunk: int | None
) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server, client=client_tls, chunk=chunk)
    link.send(b"data")
    link.client_close(notify=notify)
    assert made[0].data == b"data"
    assert made[0].eofs == [notify]


def test_eof_after_the_client_hello_aborts_the_handshake(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server)
    link.send_raw(client_hello(client_tls))
    link.client_close()
    assert link.closed and made[0].conn is None and made[0].eofs == []


@pytest.mark.parametrize("sent", [b"", b"\x16\x03", b"\x16\x03\x01\x00\x40\x01"], ids=str)
def test_eof_before_the_client_hello_is_complete_aborts(server_tls: ServerTLS, sent: bytes) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server)
    link.send_raw(sent)
    link.client_close()
    assert link.closed and link.raw_received == b"" and made[0].conn is None


def test_junk_after_close_notify_is_not_delivered(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, made = recording_server(tls=server_tls)
    link = MemLink(server, client=client_tls)
    assert link.client is not None
    link.client.send(b"before")
    link.client.close()
    link.send_raw(link.client.data_to_send() + b"\x17\x03\x03\x00\x05hello")
    assert made[0].data == b"before" and made[0].eofs == [True]


class ScriptedEngine:
    """A TLSEngine that handshakes on the first bytes, then plays scripted events."""

    def __init__(self, script: list[list[TLSEvent]]) -> None:
        self.script = script
        self.info: TLSInfo | None = None
        self.closed = False
        self.pending_output = 0
        self.sent = bytearray()

    @property
    def handshake_complete(self) -> bool:
        return self.info is not None

    def start(self) -> None:
        pass

    def receive_data(self, data: bytes) -> list[TLSEvent]:
        if self.info is None:
            self.info = TLSInfo("TLSv1.3", "TEST", None, None, None)
            return [HandshakeComplete(self.info)]
        return self.script.pop(0) if self.script else []

    def send(self, data: bytes) -> None:
        self.sent += data

    def data_to_send(self) -> bytes:
        return b""

    def close(self) -> None:
        self.closed = True


def test_application_data_after_close_notify_never_reaches_the_protocol(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    script: list[list[TLSEvent]] = [
        [ApplicationData(b"one"), CloseNotify(), ApplicationData(b"two")],
        [ApplicationData(b"three")],
    ]
    server, made = recording_server(tls=server_tls, engine=lambda: ScriptedEngine(script))
    conn = accept(server)
    conn.receive_data(client_hello(client_tls), NOW)
    assert made[0].conn is conn
    conn.receive_data(b"records", NOW)
    conn.receive_data(b"more records", NOW)
    assert made[0].data == b"one" and made[0].eofs == [True]


class Answering(ScriptedEngine):
    """An engine that answers every record by itself (as TLS does a KeyUpdate request)."""

    ANSWER = b"k" * 100

    def receive_data(self, data: bytes) -> list[TLSEvent]:
        events = super().receive_data(data)
        self.pending_output += len(self.ANSWER)
        return events

    def data_to_send(self) -> bytes:
        out, self.pending_output = self.ANSWER * (self.pending_output // 100), 0
        return out


def test_output_the_engine_makes_by_itself_stops_reading_too(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    server, _ = recording_server(tls=server_tls, engine=lambda: Answering([]), **FLOW)
    conn = accept(server)
    conn.receive_data(client_hello(client_tls), NOW)
    for _ in range(100):  # a peer that floods KeyUpdate requests and reads nothing
        if not conn.reading:
            break
        conn.receive_data(b"record", NOW)
    assert not conn.reading and conn.output_size < 4096 + 100
    drain(conn)
    assert conn.reading


@CHUNKS
def test_the_protocol_starts_only_after_the_handshake(
    server_tls: ServerTLS, client_tls: ClientTLS, chunk: int | None
) -> None:
    server, made = recording_server(tls=server_tls)
    conn = accept(server)
    hello = client_hello(client_tls)
    step = chunk or len(hello)
    for start in range(0, len(hello), step):
        conn.receive_data(hello[start : start + step], NOW)
        assert made[0].conn is None and conn.tls_info is None
        assert conn.state in (State.SNIFF, State.HELLO, State.HANDSHAKE)
    link = MemLink(server, client=client_tls, chunk=chunk)
    assert made[1].made_after_handshake is True and link.conn.state is State.OPEN


def test_a_protocol_factory_that_raises_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> ProtocolLayer:
        raise RuntimeError("factory bug")

    server = Server([Listener(protocol=broken)])
    with caplog.at_level(logging.ERROR, logger="spcore.connection"):
        conn = server.accept(server.listeners[0], ("127.0.0.1", 1), ("127.0.0.1", 2), 0.0)
    assert conn.next_action() is CLOSE
    assert "could not build" in caplog.text
    conn.connection_lost(None, 0.0)
    assert server.connections == {}


# -- the lifecycle table and a connection without a server ----------------------------------


def test_the_lifecycle_table_is_closed_and_every_state_can_end() -> None:
    assert set(TRANSITIONS) == set(State)
    used = {event for moves in TRANSITIONS.values() for event in moves}
    assert used == set(Event)  # every event happens somewhere
    assert TRANSITIONS[State.CLOSED] == {}  # the end is the end
    for state in set(State) - {State.CLOSED}:
        assert TRANSITIONS[state][Event.LOST] is State.CLOSED  # a reset may come at any time
        if state is not State.CLOSE:
            assert TRANSITIONS[state][Event.ABORT] is State.CLOSE


def test_an_event_the_table_does_not_allow_is_a_bug_said_loudly() -> None:
    with pytest.raises(LifecycleError, match="HELLO_READ cannot happen in state OPEN"):
        next_state(State.OPEN, Event.HELLO_READ)


def test_a_connection_needs_no_server() -> None:
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder(echo=True))
        return made[-1]

    conn = Connection(Listener(factory), peer=PEER, local=LOCAL, now=NOW)
    hand = ByHand(conn)
    assert hand.actions() == [READ_ON] and conn.state is State.OPEN
    conn.receive_data(b"ping", NOW)
    assert hand.take() == b"ping"
    assert conn.call_soon_threadsafe(print, "no loop to run it") is False
    assert conn.stats.bytes_sent == 4 and conn.limits == Limits()
    conn.receive_data(b"", NOW)
    assert made[0].eofs == [True]


def test_connections_of_one_hub_wake_each_other() -> None:
    hub = Hub()
    a, b = (Connection(Listener(Recorder), hub, now=NOW) for _ in range(2))
    assert a.id != b.id and hub.connections == {a.id: a, b.id: b}
    b.write(b"from outside any call of b")
    assert hub.pop_woken() is b and hub.pop_woken() is None
    b.connection_lost(None, NOW)
    assert hub.connections == {a.id: a}


def test_a_failed_handshake_logs_what_the_client_offered(
    pki: PKI, server_tls: ServerTLS, caplog: pytest.LogCaptureFixture
) -> None:
    client = ClientTLS(
        trust=pki.ca_file,
        max_version="1.2",
        alpn=("h2",),
        engine_options={"openssl": {"ciphers": "AES128-SHA"}},  # a cipher the server refuses
    )
    server, _ = recording_server(tls=server_tls)
    with caplog.at_level(logging.INFO, logger="spcore.connection"):
        MemLink(server, client=client)
    assert "the client offered up to TLS 1.2; SNI localhost; ALPN h2" in caplog.text
