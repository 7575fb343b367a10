"""``spcore tunnel`` against stunnel (Debian's ``stunnel4``), side by side in one run: both
terminate TLS in front of the same plaintext backend, pinned to one core (by hand; not a test).

Each tunnel runs on core 0 (``taskset -c 0``); the backend, the clients and this script on
core 1. Three measurements per tunnel and round, each against a freshly started tunnel:

* **download**: the backend sends 1 GiB through the tunnel, which encrypts it; the client
  (Python's ``ssl``) reads it all. MB/s from the client's first request byte to its last byte.
* **upload**: the client sends 1 GiB, the tunnel decrypts it, the backend acknowledges the
  last byte.
* **new connections**: ``openssl s_time -new`` (a full TLS 1.3 handshake per connection,
  nothing resumed), several at once, for ``--seconds``; connections per second is their sum
  over the time, and each tunnel then connects to the backend too, as for any client.

Each measurement also reads the tunnel's CPU time (user + system, from ``/proc``), so the
tables give what a GiB or a connection costs it, and the share of core 0 others used
meanwhile (the machine is shared). Rounds alternate the two tunnels (in an order rotated each
round) and the ratios are the medians of the per-round ratios spcore/stunnel.

    python bench/tunnel.py --rounds 5 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from run import (
    HOST,
    RESULTS,
    SERVER_CPU,
    WRK_CPU,
    Processes,
    core_busy,
    cpu_seconds,
    exited,
    free_port,
    machine,
    median,
    now,
    pinned,
    progress,
    rotated,
    tail,
    workspace,
)

from spcore.certs import CertPair

GIB = 1 << 30
BLOCK = 1 << 20
READY_TIMEOUT = 20.0
_S_TIME = re.compile(r"(\d+) connections in (\d+(?:\.\d+)?) real seconds")


# -- the plaintext backend (in this process, on core 1) -------------------------------------------


class _Backend(socketserver.BaseRequestHandler):
    """``D`` + size: send that many bytes; ``U`` + size: read that many, answer ``ok``;
    anything else (a handshake-only client's tunnel): read until the end."""

    payload = memoryview(os.urandom(BLOCK))

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = _recv_exactly(sock, 9)
        if head is None:
            return
        size = struct.unpack("!Q", head[1:])[0]
        if head[:1] == b"D":
            while size:
                sent = sock.send(self.payload[: min(size, BLOCK)])
                size -= sent
        elif head[:1] == b"U":
            buffer = bytearray(BLOCK)
            while size:
                got = sock.recv_into(buffer, min(size, BLOCK))
                if not got:
                    return
                size -= got
            sock.sendall(b"ok")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@contextmanager
def backend() -> Iterator[int]:
    server = _Server((HOST, 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# -- the tunnels ----------------------------------------------------------------------------------


def spcore_command(driver: str) -> Callable[[int, int, CertPair, Path], list[str]]:
    def command(port: int, backend_port: int, cert: CertPair, workdir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "spcore",
            "tunnel",
            "--accept",
            f"{HOST}:{port}",
            "--connect",
            f"{HOST}:{backend_port}",
            "--cert",
            str(cert.certfile),
            "--key",
            str(cert.keyfile),
            "--driver",
            driver,
            "--log-level",
            "error",
        ]

    return command


def stunnel_command(port: int, backend_port: int, cert: CertPair, workdir: Path) -> list[str]:
    config = workdir / "stunnel.conf"
    config.write_text(
        "foreground = yes\n"
        "pid =\n"
        "debug = err\n"
        "[bench]\n"
        f"accept = {HOST}:{port}\n"
        f"connect = {HOST}:{backend_port}\n"
        f"cert = {cert.certfile}\n"
        f"key = {cert.keyfile}\n"
    )
    return ["stunnel4", str(config)]


@contextmanager
def running(
    procs: Processes,
    command: Callable[[int, int, CertPair, Path], list[str]],
    backend_port: int,
    cert: CertPair,
    workdir: Path,
    name: str,
) -> Iterator[tuple[int, int]]:
    """A fresh tunnel on core 0: (its port, its session id for CPU accounting)."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("w") as out:
        proc = procs.start(
            pinned(command(port, backend_port, cert, workdir), SERVER_CPU, True), out
        )
    try:
        _wait_ready(port, cert, lambda: exited(proc), log)
        yield port, proc.pid
    finally:
        procs.stop(proc)


def _wait_ready(port: int, cert: CertPair, died: Callable[[], bool], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(cert.certfile))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if died():
            raise RuntimeError(f"the tunnel exited at start: {tail(log)}")
        try:
            with (
                socket.create_connection((HOST, port), 2) as raw,
                context.wrap_socket(raw, server_hostname=HOST),
            ):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the tunnel is not ready after {READY_TIMEOUT:.0f} s: {tail(log)}")


# -- the measurements -----------------------------------------------------------------------------


def measured(session: int, fn: Callable[[], float]) -> dict[str, float]:
    """Run ``fn`` (it returns its own figure); what it took of the tunnel's CPU and others'
    of core 0."""
    cpu, busy, started = cpu_seconds(session), core_busy(SERVER_CPU), time.monotonic()
    value = fn()
    elapsed = time.monotonic() - started
    used = cpu_seconds(session) - cpu
    others = max(0.0, core_busy(SERVER_CPU) - busy - used) / elapsed
    return {"value": value, "cpu": used, "seconds": elapsed, "others": others}


def _client(port: int, cert: CertPair) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert.certfile))
    raw = socket.create_connection((HOST, port), 10)
    raw.settimeout(120)
    return context.wrap_socket(raw, server_hostname=HOST)


def download(port: int, cert: CertPair, size: int) -> float:
    with _client(port, cert) as client:
        started = time.monotonic()
        client.sendall(b"D" + struct.pack("!Q", size))
        buffer = bytearray(BLOCK)
        left = size
        while left:
            got = client.recv_into(buffer)
            if not got:
                raise RuntimeError(f"the download ended {left} bytes short")
            left -= got
        return size / (time.monotonic() - started) / 1e6


def upload(port: int, cert: CertPair, size: int) -> float:
    block = memoryview(os.urandom(BLOCK))
    with _client(port, cert) as client:
        started = time.monotonic()
        client.sendall(b"U" + struct.pack("!Q", size))
        left = size
        while left:
            client.sendall(block[: min(left, BLOCK)])
            left -= min(left, BLOCK)
        if client.recv(2) != b"ok":
            raise RuntimeError("the upload was not acknowledged")
        return size / (time.monotonic() - started) / 1e6


def new_connections(port: int, seconds: int, clients: int) -> float:
    argv = ["openssl", "s_time", "-connect", f"{HOST}:{port}", "-new", "-time", str(seconds)]
    procs = [
        subprocess.Popen(
            pinned(argv, WRK_CPU, True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(clients)
    ]
    total = 0.0
    for proc in procs:
        output = proc.communicate(timeout=seconds + 60)[0].decode(errors="replace")
        match = _S_TIME.search(output)
        if match is None:
            raise RuntimeError(f"openssl s_time said: {output[-300:]}")
        total += int(match[1]) / float(match[2])
    return total


# -- the run --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=GIB, help="bytes each way (1 GiB)")
    parser.add_argument("--seconds", type=int, default=5, help="of s_time per round")
    parser.add_argument("--clients", type=int, default=4, help="s_time processes at once")
    parser.add_argument("--driver", action="append", help="spcore driver(s) (default: auto)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    for tool in ("stunnel4", "openssl", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    os.sched_setaffinity(0, {int(WRK_CPU)})  # the clients and the backend: core 1
    tunnels = {f"spcore {d}": spcore_command(d) for d in (args.driver or ["auto"])}
    tunnels["stunnel"] = stunnel_command
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    load_before = os.getloadavg()
    with workspace("spcore-tunnel-bench-") as (procs, workdir, cert), backend() as backend_port:
        for number in range(args.rounds):
            results: dict[str, dict[str, dict[str, float]]] = {}
            for name in rotated(list(tunnels), number):
                with running(
                    procs, tunnels[name], backend_port, cert, workdir, name.replace(" ", "-")
                ) as (
                    port,
                    session,
                ):
                    results[name] = {
                        "download": measured(session, lambda: download(port, cert, args.size)),
                        "upload": measured(session, lambda: upload(port, cert, args.size)),
                        "connections": measured(
                            session, lambda: new_connections(port, args.seconds, args.clients)
                        ),
                    }
                progress(f"round {number + 1} {name}: " + _one_line(results[name]))
            rounds.append(results)
    report = _report(rounds, list(tunnels), args, load_before)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tunnel-{now():%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    print(_markdown(report) if args.markdown else json.dumps(report["medians"], indent=2))
    progress(f"written to {path}")
    return 0


def _one_line(result: dict[str, dict[str, float]]) -> str:
    return (
        f"down {result['download']['value']:.0f} MB/s, up {result['upload']['value']:.0f} MB/s, "
        f"{result['connections']['value']:.0f} conn/s"
    )


def _report(
    rounds: list[dict[str, dict[str, dict[str, float]]]],
    names: list[str],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    size_gib = args.size / GIB
    medians: dict[str, dict[str, float | None]] = {}
    for name in names:
        row: dict[str, float | None] = {}
        for kind in ("download", "upload", "connections"):
            runs = [r[name][kind] for r in rounds]
            row[kind] = median([m["value"] for m in runs])
            if kind == "connections":
                count = [m["value"] * m["seconds"] for m in runs]
                row["cpu ms/connection"] = median(
                    [1000 * m["cpu"] / c for m, c in zip(runs, count, strict=True) if c]
                )
            else:
                row[f"{kind} CPU s/GiB"] = median([m["cpu"] / size_gib for m in runs])
            row[f"{kind} others"] = median([m["others"] for m in runs])
        if name != "stunnel":
            for kind in ("download", "upload", "connections"):
                row[f"{kind} vs stunnel"] = median(
                    [r[name][kind]["value"] / r["stunnel"][kind]["value"] for r in rounds]
                )
        medians[name] = row
    return {
        "when": now().isoformat(),
        "machine": machine(),
        "stunnel": subprocess.run(
            ["stunnel4", "-version"], capture_output=True, text=True
        ).stderr.splitlines()[1:2],
        "load before": load_before,
        "load after": os.getloadavg(),
        "settings": vars(args),
        "rounds": rounds,
        "medians": medians,
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "| tunnel | download MB/s | upload MB/s | new TLS conn/s | CPU s/GiB down / up "
        "| CPU ms/conn | vs stunnel (down / up / conn) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, row in report["medians"].items():
        ratio = "—"
        if name != "stunnel":
            ratio = " / ".join(
                f"{row[f'{kind} vs stunnel']:.2f}x"
                for kind in ("download", "upload", "connections")
            )
        lines.append(
            f"| {name} | {row['download']:.0f} | {row['upload']:.0f} | {row['connections']:.0f} "
            f"| {row['download CPU s/GiB']:.2f} / {row['upload CPU s/GiB']:.2f} "
            f"| {row['cpu ms/connection']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
