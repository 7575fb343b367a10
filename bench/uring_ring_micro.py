"""Micro-benchmark of the raw io_uring binding (run by hand: python3 bench/uring_ring_micro.py).

Prints µs per NOP round trip (prep + submit/wait + reap) at batch 1 and 32, the cost of one
prep and of reaping one CQE, and a socketpair send+recv round trip through the ring.
"""

from __future__ import annotations

import ctypes
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.uring import ring as uring


def nop_round_trip(r: uring.Ring, batch: int, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for i in range(batch):
            r.nop(i)
        r.submit(batch)
        r.reap()
    return (time.perf_counter() - start) / (rounds * batch) * 1e6


def prep_per_sqe(r: uring.Ring, rounds: int) -> float:
    spent = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(r.sq_entries):
            r.nop(i)
        spent += time.perf_counter() - start
        r.submit(r.sq_entries)
        r.reap()
    return spent / (rounds * r.sq_entries) * 1e6


def reap_per_cqe(r: uring.Ring, batch: int, rounds: int) -> float:
    spent = 0.0
    for _ in range(rounds):
        for i in range(batch):
            r.nop(i)
        r.submit(batch)
        start = time.perf_counter()
        got = r.reap()
        spent += time.perf_counter() - start
        assert len(got) == batch
    return spent / (rounds * batch) * 1e6


def socket_round_trip(r: uring.Ring, rounds: int) -> float:
    a, b = socket.socketpair()
    payload = b"x" * 64
    sink = ctypes.create_string_buffer(64)
    address, length, _owner = uring.buffer_address(payload)
    start = time.perf_counter()
    for _ in range(rounds):
        r.recv(b.fileno(), ctypes.addressof(sink), 64, 1)
        r.send(a.fileno(), address, length, 2)
        r.submit(2)
        done = r.reap()
        while len(done) < 2:
            r.submit(1)
            done += r.reap()
    elapsed = time.perf_counter() - start
    a.close()
    b.close()
    return elapsed / rounds * 1e6


def main() -> None:
    print(uring.probe()[1])
    with uring.Ring(256) as r:
        print(f"setup flags {r.setup_flags:#x}")
        cases: list[tuple[str, Callable[[], float]]] = [
            ("NOP round trip, batch 1  ", lambda: nop_round_trip(r, 1, 50_000)),
            ("NOP round trip, batch 32 ", lambda: nop_round_trip(r, 32, 5_000)),
            ("prep (pack_into) per SQE ", lambda: prep_per_sqe(r, 2_000)),
            ("reap per CQE, batch 32   ", lambda: reap_per_cqe(r, 32, 5_000)),
            ("reap per CQE, batch 256  ", lambda: reap_per_cqe(r, 256, 1_000)),
            ("send+recv on a socketpair", lambda: socket_round_trip(r, 20_000)),
        ]
        for name, case in cases:
            print(f"{name}: {min(case() for _ in range(3)):6.2f} µs")


if __name__ == "__main__":
    main()
