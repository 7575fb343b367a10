"""In-memory benchmark of the TLS engines (by hand: ``python3 bench/tls_engines.py``).

Each engine serves the same client (the OpenSSL engine, so only the server side differs),
joined to it by memory: no sockets, no driver, no scheduler in the way, which makes the
figures repeatable on a shared machine. Only the server engine's calls are timed, in CPU
time (``time.process_time``), and each figure is the median of ``--rounds`` interleaved
rounds:

* full handshakes per CPU-second, ECDSA P-256, TLS 1.3 and TLS 1.2 (no resumption);
* keep-alive request cycles per CPU-second: a 100-byte request record in, a 200-byte
  response record out, the shape of an HTTPS keep-alive exchange without HTTP;
* bulk throughput, MB per CPU-second: 1 MiB sent (encrypt) and received (decrypt) in 16 KiB
  writes.

This is not a test (tests/ asserts behaviour, not speed); docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spcore.conformance.enginekit import Endpoints
from spcore.conformance.harness import PKI, make_pki
from spcore.tls import TLSEngine, resolve
from spcore.tls.engines import ENGINES

MiB = 1024 * 1024


class Timer:
    """CPU seconds spent inside the server's calls only."""

    def __init__(self) -> None:
        self.spent = 0.0

    def __call__(self, call: Callable[[], object]) -> object:
        start = time.process_time()
        try:
            return call()
        finally:
            self.spent += time.process_time() - start


def _handshake(server: TLSEngine, client: TLSEngine, timer: Timer) -> None:
    client.start()
    for _ in range(10):
        out = client.data_to_send()
        if out:
            timer(lambda data=out: server.receive_data(data))  # type: ignore[misc]
        back = timer(server.data_to_send)
        if back:
            client.receive_data(back)  # type: ignore[arg-type]
        if server.handshake_complete and client.handshake_complete and not out and not back:
            return
    raise RuntimeError("the handshake did not finish")


def handshakes(ends: Endpoints, version: str, count: int) -> float:
    context = ends.server_context()
    client_state = ends.client_context(max_version=version)
    timer = Timer()
    for _ in range(count):
        server = timer(context.new_engine)
        _handshake(server, client_state.new_engine("localhost"), timer)  # type: ignore[arg-type]
    return count / timer.spent


def _connected(ends: Endpoints) -> tuple[TLSEngine, TLSEngine]:
    server, client = ends.server(), ends.client()
    _handshake(server, client, Timer())
    return server, client


def request_cycles(ends: Endpoints, count: int) -> float:
    server, client = _connected(ends)
    request, response = b"q" * 100, b"r" * 200
    timer = Timer()
    for _ in range(count):
        client.send(request)
        wire = client.data_to_send()
        timer(lambda wire=wire: server.receive_data(wire))  # type: ignore[misc]
        timer(lambda: server.send(response))
        client.receive_data(timer(server.data_to_send))  # type: ignore[arg-type]
    return count / timer.spent


def bulk(ends: Endpoints, megabytes: int) -> tuple[float, float]:
    """(MB per CPU-second sending, receiving), 16 KiB writes."""
    server, client = _connected(ends)
    chunk = b"x" * 16384
    writes = megabytes * MiB // len(chunk)
    sending = Timer()
    for _ in range(writes):
        sending(lambda: server.send(chunk))
        client.receive_data(sending(server.data_to_send))  # type: ignore[arg-type]
    receiving = Timer()
    for _ in range(writes):
        client.send(chunk)
        wire = client.data_to_send()
        receiving(lambda wire=wire: server.receive_data(wire))  # type: ignore[misc]
    return megabytes / sending.spent, megabytes / receiving.spent


def measure(
    engines: Sequence[str], pki: PKI, rounds: int, scale: float
) -> dict[str, dict[str, float]]:
    """Every metric for every engine, ``rounds`` times in a rotating order; the medians."""
    client = resolve("openssl")
    samples: dict[str, dict[str, list[float]]] = {e: {} for e in engines}
    for number in range(rounds):
        shift = number % len(engines)
        for name in [*engines[shift:], *engines[:shift]]:
            ends = Endpoints(resolve(name), client, pki)
            send, receive = bulk(ends, max(1, int(64 * scale)))
            figures = {
                "handshakes/s TLS 1.3": handshakes(ends, "1.3", int(300 * scale)),
                "handshakes/s TLS 1.2": handshakes(ends, "1.2", int(300 * scale)),
                "request cycles/s": request_cycles(ends, int(20000 * scale)),
                "send MB/s": send,
                "receive MB/s": receive,
            }
            for metric, value in figures.items():
                samples[name].setdefault(metric, []).append(value)
    return {e: {k: statistics.median(v) for k, v in row.items()} for e, row in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--scale", type=float, default=1.0, help="work per round (1.0)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    engines = [name for name, spec in ENGINES.items() if spec.probe()[0]]
    with tempfile.TemporaryDirectory() as directory:
        pki = make_pki(Path(directory))
        results = measure(engines, pki, args.rounds, args.scale)
    metrics = list(next(iter(results.values())))
    versions = {name: ENGINES[name].load().library_version() for name in engines}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    print(f"# in-memory TLS engines, median of {args.rounds} rounds, {when}")
    if args.markdown:
        print("| engine | " + " | ".join(metrics) + " |")
        print("| --- |" + " ---: |" * len(metrics))
        for name, row in results.items():
            cells = " | ".join(f"{row[m]:,.0f}" for m in metrics)
            print(f"| {name} ({versions[name]}) | {cells} |")
    else:
        for name, row in results.items():
            print(f"{name} ({versions[name]})")
            for metric in metrics:
                print(f"  {metric:<22} {row[metric]:>12,.0f}")
    if len(engines) == 2:
        first, second = engines
        print(f"\nratios {second}/{first}:")
        for metric in metrics:
            print(f"  {metric:<22} {results[second][metric] / results[first][metric]:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
