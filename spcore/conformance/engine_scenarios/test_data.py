"""Application data: zero-length and large writes, several records read as one event,
TLS 1.3 tickets after the handshake (never mistaken for data, never held back:
https://github.com/python-trio/trio/issues/819, https://github.com/openssl/openssl/issues/7948),
resumption."""

from __future__ import annotations

import random

import pytest

from spcore.conformance.enginekit import (
    VERSIONS,
    Endpoints,
    connect,
    data_of,
    der,
    feed,
    move,
    records,
)
from spcore.conformance.harness import PKI
from spcore.tls import ApplicationData, HandshakeComplete, TLSEngine, TLSEvent

MiB = 1024 * 1024


def test_zero_length_send_is_a_no_op(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    c.send(b"")
    assert c.pending_output == 0
    c.start()
    c.send(b"")
    hello = c.data_to_send()
    assert c.pending_output == 0
    feed(hello, s)
    connect(s, c)
    for engine in (s, c):
        engine.send(b"")
        assert engine.pending_output == 0 and engine.data_to_send() == b""
    c.send(b"x")
    assert feed(c.data_to_send(), s) == [ApplicationData(b"x")]


@VERSIONS
def test_one_mebibyte_send_arrives_whole_in_records(
    ends: Endpoints, maximum: str, version: str
) -> None:
    s, c = ends.server(), ends.client(max_version=maximum)
    connect(s, c)
    payload = random.Random(1).randbytes(MiB)
    s.send(payload)
    assert s.pending_output > MiB  # back-pressure must come from here: memory never refuses
    wire = s.data_to_send()
    assert s.pending_output == 0
    sizes = [length for kind, length in records(wire) if kind == 0x17]
    assert len(sizes) >= MiB // 16384 and max(sizes) <= 16384 + 256
    received = b""
    for start in range(0, len(wire), 10_000):  # arbitrary cuts through the records
        events = c.receive_data(wire[start : start + 10_000])
        assert all(isinstance(e, ApplicationData) for e in events)
        received += data_of(events)
    assert received == payload


def test_large_send_before_the_handshake_counts_as_pending(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    payload = random.Random(2).randbytes(MiB)
    c.send(payload)
    assert c.pending_output == MiB
    c.start()
    assert c.pending_output > MiB  # the ClientHello, and the queued plaintext
    events_s, _ = connect(s, c)
    assert data_of(events_s) == payload


@pytest.mark.parametrize("partial_tail", [False, True], ids=["whole_records", "partial_tail"])
def test_several_records_come_out_as_one_event(ends: Endpoints, partial_tail: bool) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    pieces = [b"record-%d;" % i for i in range(8)]
    wire = b""
    for piece in pieces:
        c.send(piece)
        wire += c.data_to_send()
    assert len(list(records(wire))) == 8
    tail = b""
    if partial_tail:
        c.send(b"late")
        tail = c.data_to_send()
        wire += tail[:7]
    assert s.receive_data(wire) == [ApplicationData(b"".join(pieces))]
    if partial_tail:
        assert s.receive_data(tail[7:]) == [ApplicationData(b"late")]


# --- TLS 1.3 tickets and resumption -------------------------------------------------------------


def _handshake_in_flights(s: TLSEngine, c: TLSEngine) -> list[TLSEvent]:
    """ClientHello, server flight, client Finished; the client's events for the server flight."""
    c.start()
    move(c, s)
    return move(s, c)


def test_tls13_tickets_yield_no_application_data(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    events_c = _handshake_in_flights(s, c)
    assert [type(e) for e in events_c] == [HandshakeComplete]
    assert [type(e) for e in move(c, s)] == [HandshakeComplete]
    tickets = s.data_to_send()  # whatever the server sends after the handshake: its tickets
    assert {kind for kind, _ in records(tickets)} <= {0x17}
    assert feed(tickets, c) == []  # consumed without an ApplicationData event
    assert c.data_to_send() == b""
    assert c.resumption is not None  # the tickets came, one way or the other


def test_tls13_tickets_are_not_held_back_in_lock_step(ends: Endpoints) -> None:
    """A client that sends a request and waits for the answer has its tickets by then.

    The deadlock of trio#819 / openssl#7948 happens when the tickets stay behind until the
    server writes; here the request rides with the client's Finished and the owner takes the
    output once, after answering.
    """
    s, c = ends.server(), ends.client()
    assert [type(e) for e in _handshake_in_flights(s, c)] == [HandshakeComplete]
    c.send(b"ping")
    events = move(c, s)  # Finished and the request in one delivery
    assert [type(e) for e in events] == [HandshakeComplete, ApplicationData]
    assert data_of(events) == b"ping"
    s.send(b"pong")
    assert feed(s.data_to_send(), c) == [ApplicationData(b"pong")]
    assert c.resumption is not None


@VERSIONS
def test_session_resumption(ends: Endpoints, pki: PKI, maximum: str, version: str) -> None:
    # A session belongs to its client state; the server state holds the ticket keys.
    server_state = ends.server_context()
    client_state = ends.client_context(max_version=maximum)

    def handshake(resume: object | None) -> tuple[TLSEngine, TLSEngine]:
        s, c = server_state.new_engine(), client_state.new_engine("localhost", resume)
        connect(s, c)
        return s, c

    s1, first = handshake(None)
    assert first.info is not None and s1.info is not None
    assert not first.info.resumed and not s1.info.resumed
    resumption = first.resumption
    assert resumption is not None
    s2, second = handshake(resumption)
    assert second.info is not None and s2.info is not None
    assert second.info.resumed and s2.info.resumed
    assert second.info.version == version
    # A resumed handshake carries no certificate; the client still knows whom it talks to.
    assert second.info.peer_certificate == der(pki.server)


def test_a_session_closed_both_ways_can_still_be_resumed(ends: Endpoints) -> None:
    client_state = ends.client_context()
    server_state = ends.server_context()
    s, c = server_state.new_engine(), client_state.new_engine("localhost")
    connect(s, c)
    c.close()
    s.close()
    move(c, s)
    move(s, c)
    assert c.closed and s.closed
    resumption = c.resumption  # taken after the end, as a client that reconnects later does
    assert resumption is not None
    s2, c2 = server_state.new_engine(), client_state.new_engine("localhost", resumption)
    connect(s2, c2)
    assert c2.info is not None and c2.info.resumed


def test_a_fresh_server_state_does_not_resume_another_ones_tickets(ends: Endpoints) -> None:
    client_state = ends.client_context()
    s, c = ends.server(), client_state.new_engine("localhost")
    connect(s, c)
    assert c.resumption is not None
    other, again = ends.server(), client_state.new_engine("localhost", c.resumption)
    connect(other, again)  # a full handshake: the new state has keys of its own
    assert again.info is not None and not again.info.resumed
