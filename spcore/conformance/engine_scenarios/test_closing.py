"""Closing: close_notify both ways and half-closed sessions, nothing read after the peer's
close_notify (the class of bug of CVE-2023-40217), a ragged EOF told apart from a clean close
(trio's ``https_compatible``), EOF or close during the handshake (which aborts:
https://bugs.python.org/issue29743)."""

from __future__ import annotations

import pytest

from spcore.conformance.enginekit import VERSIONS, Endpoints, connect, expect_error, feed, move
from spcore.errors import LocalProtocolError
from spcore.tls import ApplicationData, CloseNotify, RaggedEOF, TLSClosedError


@VERSIONS
@pytest.mark.parametrize("closer", ["server", "client"])
def test_close_notify_reaches_the_peer(
    ends: Endpoints, bytewise: bool, maximum: str, version: str, closer: str
) -> None:
    s, c = ends.server(), ends.client(max_version=maximum)
    connect(s, c, bytewise)
    closing, peer = (s, c) if closer == "server" else (c, s)
    closing.send(b"last words")
    closing.close()
    assert closing.closed
    events = feed(closing.data_to_send(), peer, bytewise)
    assert b"".join(e.data for e in events if isinstance(e, ApplicationData)) == b"last words"
    assert events[-1] == CloseNotify() and events.count(CloseNotify()) == 1
    assert not peer.closed  # receiving close_notify does not close our side


@VERSIONS
def test_half_close_the_peer_may_keep_sending_after_our_close_notify(
    ends: Endpoints, maximum: str, version: str
) -> None:
    """Our close_notify ends only *our* direction (TLS 1.3 says so explicitly; both engines
    behave the same under TLS 1.2). The server's own close_notify ends the other one."""
    s, c = ends.server(), ends.client(max_version=maximum)
    connect(s, c)
    c.send(b"request")
    c.close()
    with pytest.raises(TLSClosedError):
        c.send(b"more")
    assert move(c, s) == [ApplicationData(b"request"), CloseNotify()]
    s.send(b"response")
    assert move(s, c) == [ApplicationData(b"response")]
    s.close()
    assert move(s, c) == [CloseNotify()]
    assert s.closed and c.closed
    assert s.data_to_send() == c.data_to_send() == b""


@pytest.mark.parametrize(
    "late",
    [b"\x17\x03\x03\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n", b"\x15\x03\x03\x00\x02\x02\x28"],
    ids=["record", "plaintext", "alert"],
)
@pytest.mark.parametrize("together", [True, False], ids=["same_feed", "later_feed"])
def test_nothing_after_close_notify_becomes_application_data(
    ends: Endpoints, late: bytes, together: bool
) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    c.send(b"genuine")
    c.close()
    wire = c.data_to_send()
    if together:
        events = s.receive_data(wire + late)
    else:
        events = s.receive_data(wire) + s.receive_data(late)
    assert events == [ApplicationData(b"genuine"), CloseNotify()]
    assert s.receive_data(late) == [] and s.receive_data(b"") == []
    assert not s.closed  # the peer's close; ours is still to send
    s.close()
    assert s.data_to_send()  # our close_notify


@VERSIONS
def test_ragged_eof_is_not_a_close_notify(ends: Endpoints, maximum: str, version: str) -> None:
    s, c = ends.server(), ends.client(max_version=maximum)
    connect(s, c)
    c.send(b"maybe truncated")
    assert move(c, s) == [ApplicationData(b"maybe truncated")]
    assert s.receive_data(b"") == [RaggedEOF()]
    assert s.closed  # the session is over both ways
    with pytest.raises(TLSClosedError):
        s.send(b"answer")
    assert s.receive_data(b"") == []
    s.close()  # nothing left to close, and no exception


def test_eof_inside_a_record_is_a_ragged_eof(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    c.send(b"abc")
    s.receive_data(c.data_to_send())  # a complete record
    c.send(b"def")
    wire = c.data_to_send()
    assert s.receive_data(wire[:-3]) == []  # most of a record
    assert s.receive_data(b"") == [RaggedEOF()]  # the record never completes


@pytest.mark.parametrize("side", ["server", "client"])
def test_eof_during_the_handshake_is_an_error_not_a_close(ends: Endpoints, side: str) -> None:
    s, c = ends.server(), ends.client()
    c.start()
    hello = c.data_to_send()
    engine = s if side == "server" else c
    if side == "server":
        s.receive_data(hello[:50])
    error = expect_error(lambda: engine.receive_data(b""))
    assert error.during_handshake and error.alert is None
    assert "during the TLS handshake" in str(error)
    assert engine.closed and not engine.handshake_complete
    assert engine.receive_data(b"") == []


def test_data_after_eof_is_refused_as_a_local_error(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    c.close()
    assert s.receive_data(c.data_to_send()) == [CloseNotify()]
    assert s.receive_data(b"") == []
    with pytest.raises(TLSClosedError):
        s.receive_data(b"after the end")


@pytest.mark.parametrize("how", ["close", "failure"])
def test_send_after_close_or_failure_raises_tls_closed_error(ends: Endpoints, how: str) -> None:
    s, c = ends.server(), ends.client()
    if how == "close":
        connect(s, c)
        s.close()
    else:
        expect_error(lambda: s.receive_data(b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(TLSClosedError) as info:
        s.send(b"data")
    assert isinstance(info.value, LocalProtocolError)  # our misuse, not the library's error


def test_close_is_idempotent(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    s.close()
    first = s.data_to_send()
    s.close()
    s.close()
    assert s.data_to_send() == b""
    assert feed(first, c) == [CloseNotify()]


@pytest.mark.parametrize("side", ["client", "server"])
def test_close_during_the_handshake_aborts(ends: Endpoints, side: str) -> None:
    s, c = ends.server(), ends.client()
    c.start()
    hello = c.data_to_send()
    c.send(b"queued")
    s.receive_data(hello)
    if side == "client":
        engine, incoming = c, s.data_to_send()  # the server's flight, arriving too late
    else:
        move(s, c)
        engine, incoming = s, c.data_to_send()  # the client's Finished, arriving too late
    assert engine.data_to_send() == b""  # the owner took everything produced so far
    engine.close()
    assert engine.closed and not engine.handshake_complete
    assert engine.data_to_send() == b"" and engine.pending_output == 0
    assert incoming and engine.receive_data(incoming) == []
    assert engine.data_to_send() == b""  # no Finished, no close_notify: nothing at all
    engine.close()
    with pytest.raises(TLSClosedError):
        engine.send(b"x")
