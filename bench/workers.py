"""wrk against ``spcore serve --workers N``: how throughput grows with worker processes.

Unlike bench/run.py (one server process pinned to one core, wrk on the other), the point here
is to use every core, so nothing is pinned: the workers and wrk share the machine's cores,
as they would on a small host. Plain HTTP keep-alive, the hello-world app of run.py, the
default driver. Each round starts every configuration afresh in a rotated order; the figure
is the median, and the ratio to one worker is the median of the ratios within each round.

CPU is accounted per run, in cores: the server's processes (supervisor and workers, from
/proc), wrk (its rusage), the whole machine's busy time (/proc/stat) and what is left of it,
the work of other processes during the run; and before each round an idle sample of what
other processes were using. On a shared machine that is the share the measurement did not
get.

    python bench/workers.py                      # --workers 1 and 2, 3 rounds of 10 s
    python bench/workers.py --workers 1 2 4 --rounds 5 --connections 64 --threads 2

This is not a test. The figures go to docs/benchmarks.md with the method.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from run import (
    HOST,
    BenchError,
    Processes,
    Running,
    Target,
    cpu_seconds,
    free_port,
    median,
    now,
    parse_wrk,
    progress,
    rotated,
    tail,
    wait_exit,
    wait_ready,
    workspace,
)

#: Seconds of idle sampling before each round, to see what others use of the machine.
IDLE_SAMPLE = 2.0


def machine_busy() -> float:
    """Seconds all cores together have spent running tasks (user, nice, system) since boot."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()  # the "cpu" line: every core
    return sum(int(n) for n in fields[1:4]) / os.sysconf("SC_CLK_TCK")


def command(workers: int, port: int, driver: str) -> list[str]:
    argv = [sys.executable, "-m", "spcore", "serve", "--workers", str(workers)]
    argv += ["--driver", driver, "--host", HOST, "--port", str(port), "--no-tls"]
    return [*argv, "--app", "spcore_hello:app", "--log-level", "warning"]


def wrk(
    procs: Processes, url: str, args: argparse.Namespace, seconds: float, log: Path
) -> tuple[str, float]:
    """wrk's output, and the CPU seconds it used (from its rusage when it is reaped)."""
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s", "--latency"]
    before = _children_cpu()
    with log.open("w") as out:
        proc = procs.start([*argv, "--timeout", "5s", url], out)
    try:
        if not wait_exit(proc, seconds + 60):
            raise BenchError(f"wrk did not finish: {tail(log)}")
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {tail(log)}")
    return log.read_text(errors="replace"), _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    procs: Processes, workers: int, args: argparse.Namespace, workdir: Path, cert: Any
) -> dict[str, Any]:
    port = free_port()
    log = workdir / f"spcore-{workers}.log"
    with log.open("w") as out:
        proc = procs.start(command(workers, port, args.driver), out)
    try:
        running = Running(Target("spcore", args.driver, False), proc, port, log)
        wait_ready(running, cert)
        url = f"http://{HOST}:{port}/hello"
        wrk(procs, url, args, args.warmup, workdir / "wrk.log")
        server_before, busy_before = cpu_seconds(proc.pid), machine_busy()
        started = time.monotonic()
        output, wrk_cpu = wrk(procs, url, args, args.duration, workdir / "wrk.log")
        elapsed = time.monotonic() - started
        result = parse_wrk(output)
        server = (cpu_seconds(proc.pid) - server_before) / elapsed
        busy = (machine_busy() - busy_before) / elapsed
        return {
            "workers": workers,
            "rps": result.rps,
            "p99_ms": result.p99_ms,
            "errors": result.errors,
            "server_cpu": round(server, 3),
            # Requests per CPU-second of the server: what scaling costs, whatever others took.
            "per_cpu_second": round(result.rps / server) if server > 0 else 0,
            "wrk_cpu": round(wrk_cpu / elapsed, 3),
            "machine_busy": round(busy, 3),
            # What neither the server nor wrk used of the busy time: other people's work.
            "others": round(max(0.0, busy - server - wrk_cpu / elapsed), 3),
        }
    finally:
        procs.stop(proc)


def idle_load() -> float:
    """Cores other processes keep busy while nothing of ours runs."""
    before = machine_busy()
    time.sleep(IDLE_SAMPLE)
    return (machine_busy() - before) / IDLE_SAMPLE


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in args.workers}
    with workspace("spcore-bench-workers-") as (procs, workdir, cert):
        for number in range(args.rounds):
            idle = idle_load()
            for workers in rotated(args.workers, number):
                try:
                    numbers = measure(procs, workers, args, workdir, cert)
                except BenchError as exc:
                    progress(f"round {number + 1} --workers {workers}: {exc}")
                    continue
                numbers.update(round=number + 1, idle_before=round(idle, 3))
                rounds[workers].append(numbers)
                progress(
                    f"round {number + 1}/{args.rounds} --workers {workers}: "
                    f"{numbers['rps']:,.0f} req/s, p99 {numbers['p99_ms']:.2f} ms, "
                    f"server {numbers['server_cpu']:.2f} cores, wrk {numbers['wrk_cpu']:.2f}, "
                    f"others {numbers['others']:.2f} (idle before: {idle:.2f})"
                )
    base = {r["round"]: r["rps"] for r in rounds[args.workers[0]]}
    rows = []
    for workers, done in rounds.items():
        ratios = [r["rps"] / base[r["round"]] for r in done if base.get(r["round"])]
        rows.append(
            {
                "workers": workers,
                "rps": median([r["rps"] for r in done]),
                "ratio": median(ratios),
                "p99_ms": median([r["p99_ms"] for r in done]),
                "server_cpu": median([r["server_cpu"] for r in done]),
                "per_cpu_second": median([r["per_cpu_second"] for r in done]),
                "wrk_cpu": median([r["wrk_cpu"] for r in done]),
                "machine_busy": median([r["machine_busy"] for r in done]),
                "others": median([r["others"] for r in done]),
                "idle_before": median([r["idle_before"] for r in done]),
                "errors": sum(r["errors"] for r in done),
                "rounds": len(done),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    first = args.workers[0]
    lines = [
        f"| workers | req/s | vs {first} worker{'s' if first > 1 else ''} | p99 "
        "| server CPU | req/CPU-s | wrk CPU | machine busy | others during | others idle |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["rps"] is None:
            lines.append(f"| {row['workers']} | failed | | | | | | | | |")
            continue
        lines.append(
            f"| {row['workers']} | {row['rps']:,.0f} | {row['ratio']:.2f}x "
            f"| {row['p99_ms']:.2f} ms | {row['server_cpu']:.2f} | {row['per_cpu_second']:,.0f} "
            f"| {row['wrk_cpu']:.2f} "
            f"| {row['machine_busy']:.2f} | {row['others']:.2f} | {row['idle_before']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="(1 2)")
    parser.add_argument("--driver", default="auto", help="spcore's --driver (auto)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk first (2)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive ones (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = now().isoformat(timespec="seconds")
    rows = run(args)
    print(
        f"{started}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration:g}s, nothing pinned, driver {args.driver}"
    )
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
