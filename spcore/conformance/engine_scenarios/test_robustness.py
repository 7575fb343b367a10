"""Bad input: garbage and corrupted records only ever raise ``TLSError`` (and the session is
over afterwards), and what a peer sends after its close_notify is not kept in memory."""

from __future__ import annotations

import gc
import os
import random

import pytest

from spcore.conformance.enginekit import Endpoints, connect, move
from spcore.tls import CloseNotify, TLSClosedError, TLSEngine, TLSError

MiB = 1024 * 1024


def _mutated(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few bytes changed, cut short, or grown (what a broken peer sends)."""
    mutation = rng.randrange(4)
    if mutation == 0 and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if mutation == 1 and len(data) > 1:
        return data[: rng.randrange(1, len(data))]
    if mutation == 2:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]
    return rng.randbytes(rng.randint(1, 300))


def _feed_survives(engine: TLSEngine, data: bytes) -> None:
    """Only TLSError may come out; once failed, the engine stays quiet."""
    try:
        engine.receive_data(data)
        engine.receive_data(b"")
    except TLSError:
        assert engine.closed
        assert engine.receive_data(b"x") == [] or engine.closed
    except TLSClosedError:
        pass
    engine.data_to_send()  # an alert, or nothing; never an exception


@pytest.mark.parametrize("flight", ["client_hello", "server_flight", "client_finished", "data"])
def test_corrupted_flights_only_raise_tls_errors(ends: Endpoints, flight: str) -> None:
    rng = random.Random(f"{flight}")
    for _ in range(25):
        s, c = ends.server(), ends.client()
        c.start()
        wire = c.data_to_send()
        receiver = s
        if flight != "client_hello":
            s.receive_data(wire)
            wire, receiver = s.data_to_send(), c
        if flight in ("client_finished", "data"):
            c.receive_data(wire)
            c.send(b"request")
            wire, receiver = c.data_to_send(), s
        if flight == "data":
            s.receive_data(wire)
            s.send(b"response" * 100)
            wire, receiver = s.data_to_send(), c
        _feed_survives(receiver, _mutated(wire, rng))


def test_garbage_before_any_handshake_only_raises_tls_errors(ends: Endpoints) -> None:
    rng = random.Random(7)
    for size in (1, 5, 6, 100, 5000, 20000):
        for prefix in (b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x40\x01"):
            _feed_survives(ends.server(), prefix + rng.randbytes(size))


def _rss() -> int:
    """This process's resident memory, in bytes."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pytest.skip("measuring memory needs /proc (Linux)")


def test_bytes_after_close_notify_are_not_kept(ends: Endpoints) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    c.close()
    assert move(c, s) == [CloseNotify()]
    record = b"\x17\x03\x03\x40\x00" + bytes(16384)
    chunk = record * 64  # 1 MiB
    gc.collect()
    before = _rss()
    for _ in range(64):  # a peer streaming 64 MiB after its close cannot fill our memory
        assert s.receive_data(chunk) == []
    assert _rss() - before < 16 * MiB
