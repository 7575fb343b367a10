"""wrk benchmark of spcore's drivers and HTTP codecs against uvicorn (h11 + asyncio, and
httptools + uvloop), hypercorn and granian, and of spcore hosting ASGI and WSGI apps against
them and gunicorn (by hand, or ``tox -e bench``).

Every server runs the same hello-world app (``spcore_hello.py``, ``asgi_hello.py``,
``wsgi_hello.py``: the same response) pinned to one core (``taskset -c 0``) while wrk loads it
from the other (``taskset -c 1``), over plain HTTP and over HTTPS with one throwaway ECDSA
P-256 certificate, keep-alive. Three kinds of target: spcore's own app (``native``), ASGI
(spcore hosting ``asgi_hello`` on each driver, uvicorn, hypercorn, granian) and WSGI (spcore
hosting ``wsgi_hello`` with ``--threads``, gunicorn's gthread worker with as many threads,
granian ``--interface wsgi``). The machine is shared and noisy, so the rounds are interleaved
(each round starts every server afresh, in a rotated order) and the median is reported; each
target's ratio to its kind's baseline (native: uvicorn with h11; ASGI: uvicorn with httptools
and uvloop; WSGI: gunicorn gthread) is the median of the ratios taken within each round, where
both ran under the same conditions. A separate, shorter wrk run under ``strace -c -f -p``
counts the server's syscalls per request.

Prints a table, writes the same as JSON to ``bench/results/<timestamp>.json`` and, with
``--markdown``, prints a markdown table for ``docs/benchmarks.md``. This is not a test.

spcore's HTTPS targets run once per TLS engine available here (``spcore
selectors+httptools https gnutls``). ``--path /mib`` loads a 1 MiB body instead of the hello
(spcore only, with ``--only spcore``); ``--close`` makes every request a new connection and
so a new full TLS handshake (req/CPU-s is then handshakes per CPU-second).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

from spcore.certs import CertPair, dev_certificate
from spcore.drivers import probe_all
from spcore.http.codecs import available_codecs
from spcore.tls.engines import ENGINES

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"
PATH = "/hello"
BODY = b"Hello, world!"
SERVER_CPU, WRK_CPU = "0", "1"
#: What each kind of target is compared with (server, stack, kind).
BASELINES = {
    "native": ("uvicorn", "h11+asyncio", "asgi"),
    "asgi": ("uvicorn", "httptools+uvloop", "asgi"),
    "wsgi": ("gunicorn", "gthread", "wsgi"),
}
#: The optional peers and what they need.
PEERS = ("httptools", "uvloop", "granian", "gunicorn")
#: Worker threads of the WSGI servers (spcore's --threads, gunicorn's --threads).
WSGI_THREADS = 4
#: The app module each kind serves.
APPS = {"native": "spcore_hello:app", "asgi": "asgi_hello:app", "wsgi": "wsgi_hello:app"}
#: The share of the server's core that others may take before the run is called noisy.
NOISY = 0.05
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class BenchError(Exception):
    """One measurement failed (a server did not start, wrk failed): reported, not fatal."""


# -- what runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server configuration: a server, its stack (spcore: driver+codec; uvicorn: its HTTP
    implementation+loop), a transport, the kind of app it serves (``native``: spcore's own;
    ``asgi``, ``wsgi``), and for spcore over TLS the TLS engine."""

    server: str
    driver: str
    tls: bool
    kind: str = "native"
    engine: str = "openssl"

    @property
    def transport(self) -> str:
        return "https" if self.tls else "http"

    @property
    def label(self) -> str:
        hosted = f" {self.kind}" if self.server == "spcore" and self.kind != "native" else ""
        engine = f" {self.engine}" if self.engine != "openssl" else ""
        return f"{self.server}{hosted} {self.driver} {self.transport}{engine}"

    @property
    def baseline(self) -> Target:
        server, driver, kind = BASELINES[self.kind]
        return Target(server, driver, self.tls, kind)

    @property
    def traceable(self) -> bool:
        """Whether one process does all the work (hypercorn, granian and gunicorn serve from
        a child)."""
        return self.server not in ("hypercorn", "granian", "gunicorn")

    def command(self, port: int, cert: CertPair) -> list[str]:
        python = sys.executable
        if self.server == "spcore":
            driver, _, codec = self.driver.partition("+")
            argv = [python, "-m", "spcore", "serve", "--driver", driver, "--http", codec]
            argv += ["--host", HOST, "--port", str(port), "--app", APPS[self.kind]]
            argv += ["--log-level", "warning"]
            if self.kind == "wsgi":
                argv += ["--threads", str(WSGI_THREADS)]
            tls = ["--cert", str(cert.certfile), "--key", str(cert.keyfile)]
            tls += ["--tls-engine", self.engine]
            return argv + (tls if self.tls else ["--no-tls"])
        if self.server == "uvicorn":
            http, _, loop = self.driver.partition("+")
            argv = [python, "-m", "uvicorn", "asgi_hello:app", "--host", HOST, "--port", str(port)]
            argv += ["--http", http, "--loop", loop, "--workers", "1", "--lifespan", "on"]
            argv += ["--no-access-log", "--log-level", "warning"]
            tls = ["--ssl-certfile", str(cert.certfile), "--ssl-keyfile", str(cert.keyfile)]
            return argv + (tls if self.tls else [])
        if self.server == "granian":
            interface = self.driver.partition("+")[2]
            argv = [python, "-m", "granian", "--interface", interface, "--http", "1"]
            threads = ["--blocking-threads", str(WSGI_THREADS)]
            argv += ["--no-ws"] if interface == "asgi" else threads
            argv += ["--workers", "1", "--host", HOST, "--port", str(port)]
            argv += ["--log-level", "warning", APPS[interface]]
            tls = ["--ssl-certificate", str(cert.certfile), "--ssl-keyfile", str(cert.keyfile)]
            return argv + (tls if self.tls else [])
        if self.server == "gunicorn":
            argv = [python, "-m", "gunicorn", "wsgi_hello:app", "-b", f"{HOST}:{port}"]
            argv += ["-k", "gthread", "--threads", str(WSGI_THREADS), "-w", "1"]
            argv += ["--log-level", "warning"]
            tls = ["--certfile", str(cert.certfile), "--keyfile", str(cert.keyfile)]
            return argv + (tls if self.tls else [])
        argv = [python, "-m", "hypercorn", "asgi_hello:app", "--bind", f"{HOST}:{port}"]
        argv += ["--workers", "1", "--worker-class", "asyncio", "--log-level", "warning"]
        tls = ["--certfile", str(cert.certfile), "--keyfile", str(cert.keyfile)]
        return argv + (tls if self.tls else [])


def targets(only: Sequence[str]) -> list[Target]:
    """Every spcore driver available here with each codec (spcore's app), and with httptools
    hosting the ASGI and the WSGI app; uvicorn (h11 + asyncio, httptools + uvloop), hypercorn
    and granian (ASGI), gunicorn gthread and granian (WSGI) where installed; plain, then TLS."""
    installed = {name: importlib.util.find_spec(name) is not None for name in PEERS}
    drivers = [spec.name for spec, ok, _why in probe_all() if ok]  # uvloop is one
    codec = "httptools" if "httptools" in available_codecs() else "h11"
    stacks = [("spcore", f"{name}+{c}", "native") for name in drivers for c in available_codecs()]
    stacks.append(("uvicorn", "h11+asyncio", "asgi"))
    if installed["httptools"] and installed["uvloop"]:
        stacks.append(("uvicorn", "httptools+uvloop", "asgi"))
    stacks += [("spcore", f"{name}+{codec}", "asgi") for name in drivers]
    stacks.append(("hypercorn", "h11+asyncio", "asgi"))
    if installed["granian"]:
        stacks.append(("granian", "rust+asgi", "asgi"))
    if installed["gunicorn"]:
        stacks.append(("gunicorn", "gthread", "wsgi"))
    stacks += [("spcore", f"{name}+{codec}", "wsgi") for name in drivers]
    if installed["granian"]:
        stacks.append(("granian", "rust+wsgi", "wsgi"))
    chosen = [
        Target(server, stack, tls, kind) for tls in (False, True) for server, stack, kind in stacks
    ]
    # spcore's own app over TLS once more per other engine (the engines' comparison).
    engines = [name for name, spec in ENGINES.items() if name != "openssl" and spec.probe()[0]]
    chosen += [
        Target(server, stack, True, kind, engine)
        for engine in engines
        for server, stack, kind in stacks
        if server == "spcore" and kind == "native"
    ]
    if only:
        chosen = [t for t in chosen if any(word in f"{t.kind} {t.label}" for word in only)]
    return chosen


# -- processes -----------------------------------------------------------------------------------


class Processes:
    """Every process the benchmark starts, each in its own process group, so all get stopped.

    A leader is never reaped before its group is gone: the unreaped (possibly zombie) leader
    keeps the group id ours, so signalling the group can never reach someone else's processes.
    """

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: TextIO | int, cwd: Path = HERE
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Signal the group, wait until it is empty (SIGKILL after a while), then reap."""
        if proc not in self._running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._running)):
            self.stop(proc)


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[tuple[Processes, Path, CertPair]]:
    """What a benchmark run needs: its processes (every one stopped at the end, even on a
    second Ctrl-C), a scratch directory and a throwaway certificate."""
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            workdir = Path(tmp)
            yield procs, workdir, dev_certificate(now(), workdir / "cert")
    finally:
        with signals_ignored():  # a second Ctrl-C must not leave servers behind
            procs.stop_all()


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` ended, without reaping it (see `Processes`)."""
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to end, without reaping it."""
    deadline = time.monotonic() + timeout
    while not exited(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) for every process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            yield int(entry.name), stat.rpartition(")")[2].split()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    return [pid for pid, f in _proc_stats() if int(f[2]) == pgid and f[0] != "Z"]


def cpu_seconds(session: int) -> float:
    """User plus system CPU time of every live process in ``session`` (the server's)."""
    ticks = sum(int(f[11]) + int(f[12]) for _pid, f in _proc_stats() if int(f[3]) == session)
    return ticks / _TICK


def core_busy(cpu: str) -> float:
    """Seconds core ``cpu`` has spent running tasks (user, nice, system) since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            return sum(int(n) for n in fields[1:4]) / _TICK
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(argv: list[str], cpu: str, pin: bool) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if pin else argv


# -- one server ----------------------------------------------------------------------------------


@dataclass
class Running:
    """A started server: its process, its URL and the log its output goes to."""

    target: Target
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    headers: list[str] = field(default_factory=list)

    path: str = PATH

    @property
    def url(self) -> str:
        return f"{self.target.transport}://{HOST}:{self.port}{self.path}"


@contextlib.contextmanager
def serve(
    procs: Processes, target: Target, cert: CertPair, workdir: Path, s: Settings
) -> Iterator[Running]:
    port = free_port()
    log = workdir / f"{target.label.replace(' ', '-')}.log"
    with log.open("w") as out:
        proc = procs.start(pinned(target.command(port, cert), SERVER_CPU, s.pin), out)
    running = Running(target, proc, port, log, path=s.path)
    try:
        running.headers = wait_ready(running, cert)
        yield running
    finally:
        procs.stop(proc)


def wait_ready(running: Running, cert: CertPair) -> list[str]:
    """Poll until the server answers ``Hello, world!``; the response's header names."""
    port = running.port
    context = ssl.create_default_context(cafile=str(cert.certfile))
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if exited(running.proc):
            raise BenchError(f"{running.target.label} exited at start: {tail(running.log)}")
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(HOST, port, timeout=2, context=context)
            if running.target.tls
            else http.client.HTTPConnection(HOST, port, timeout=2)
        )
        try:
            conn.request("GET", running.path)
            response = conn.getresponse()
            body = response.read()
            expected = BODY if running.path == PATH else None  # /mib: any 200 with a body
            if response.status == 200 and (body == expected or (expected is None and body)):
                return sorted(name.lower() for name in response.headers)
            last = f"answered {response.status} {body[:60]!r}"
        except OSError as exc:  # not listening yet
            last = str(exc)
        finally:
            conn.close()
        time.sleep(0.1)
    raise BenchError(f"{running.target.label} not ready after {READY_TIMEOUT:.0f} s: {last}")


def tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(text) or "(no output)"


# -- wrk -----------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p99_ms: float
    errors: int
    output: str


def run_wrk(procs: Processes, url: str, duration: float, s: Settings, workdir: Path) -> WrkResult:
    connections, pin = s.connections, s.pin
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if s.close:
        argv += ["-H", "Connection: close"]
    log = workdir / "wrk.log"
    with log.open("w") as out:
        proc = procs.start(pinned([*argv, url], WRK_CPU, pin), out)
    try:
        if not wait_exit(proc, duration + 60):
            raise BenchError(f"wrk did not finish: {tail(log)}")
    finally:
        procs.stop(proc)
    output = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {tail(log)}")
    return parse_wrk(output)


def parse_wrk(output: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    if not (done and rate and p99):
        raise BenchError(f"cannot read wrk's output: {output[-300:]!r}")
    errors = 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS[done.group(3)] / 1e3,
        rps=float(rate.group(1)),
        p99_ms=float(p99.group(1)) * _UNITS[p99.group(2)],
        errors=errors,
        output=output,
    )


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float
    warmup: float
    connections: int
    rounds: int
    strace_duration: float
    pin: bool
    strace: bool
    path: str = PATH
    close: bool = False


def measure(
    procs: Processes, target: Target, cert: CertPair, workdir: Path, s: Settings
) -> dict[str, Any]:
    """Start the server, warm it up, load it for ``s.duration``; one round's numbers."""
    with serve(procs, target, cert, workdir, s) as running:
        run_wrk(procs, running.url, s.warmup, s, workdir)
        cpu_before, core_before = cpu_seconds(running.proc.pid), core_busy(SERVER_CPU)
        started = time.monotonic()
        result = run_wrk(procs, running.url, s.duration, s, workdir)
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(running.proc.pid) - cpu_before) / elapsed
        # What other processes took of the server's core: the noise this round suffered.
        others = max(0.0, (core_busy(SERVER_CPU) - core_before) / elapsed - cpu)
        # Requests per CPU-second of the server: what it costs, whether or not others' processes
        # took part of its core meanwhile (the requests per second then drop, this does not).
        per_cpu = result.rps / cpu if cpu > 0 else 0.0
        return {
            "rps": result.rps,
            "p99_ms": result.p99_ms,
            "requests": result.requests,
            "seconds": result.seconds,
            "errors": result.errors,
            "server_cpu": round(cpu, 3),
            "per_cpu_second": round(per_cpu),
            "others_on_server_core": round(others, 3) if s.pin else None,
            "response_headers": running.headers,
            "load": os.getloadavg()[0],
        }


def count_syscalls(
    procs: Processes, target: Target, cert: CertPair, workdir: Path, s: Settings
) -> dict[str, Any]:
    """Syscalls per request of the server's process (all its threads) under a short wrk run."""
    with serve(procs, target, cert, workdir, s) as running:
        run_wrk(procs, running.url, s.warmup, s, workdir)
        log = workdir / "strace.log"
        with log.open("w") as out:
            tracer = procs.start(["strace", "-c", "-f", "-p", str(running.proc.pid)], out)
        try:
            deadline = time.monotonic() + 10
            while "attached" not in log.read_text(errors="replace"):
                if exited(tracer) or time.monotonic() > deadline:
                    raise BenchError(f"strace cannot attach: {tail(log)}")
                time.sleep(0.05)
            time.sleep(0.3)  # let strace attach every thread
            result = run_wrk(procs, running.url, s.strace_duration, s, workdir)
        finally:
            procs.stop(tracer, signal.SIGINT)  # SIGINT: detach and print the summary
    calls = parse_strace(log.read_text(errors="replace"))
    total = calls.pop("total", None)
    if total is None or result.requests == 0:
        raise BenchError(f"no strace summary: {tail(log)}")
    top = sorted(calls.items(), key=lambda item: -item[1])[:6]
    return {
        "per_request": round(total / result.requests, 2),
        "calls": total,
        "requests": result.requests,
        "top": {name: round(count / result.requests, 2) for name, count in top},
    }


def parse_strace(text: str) -> dict[str, int]:
    """``strace -c``'s table as {syscall: calls}, with the ``total`` row."""
    calls: dict[str, int] = {}
    row = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")
    for line in text.splitlines():
        match = row.match(line)
        if match:
            calls[match.group(2)] = int(match.group(1))
    return calls


# -- the run -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("spcore", "h11", "httptools", "uvicorn", "hypercorn", "uvloop", "granian"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "wrk": (wrk.stdout or wrk.stderr).split(" Copyright")[0].strip(),
        "versions": versions,
        "commit": commit.stdout.strip() or None,
    }


def run(args: argparse.Namespace, s: Settings, notes: list[str]) -> dict[str, Any]:
    chosen = targets(args.only)
    if not chosen:
        raise SystemExit(f"bench: no server matches --only {' '.join(args.only)}")
    report: dict[str, Any] = {
        "started": now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": vars(s),
        "wrk": f"wrk -t1 -c{s.connections} -d{s.duration:g}s --latency",
        "load_before": os.getloadavg(),
        "notes": notes,
    }
    rounds: dict[str, list[dict[str, Any]]] = {t.label: [] for t in chosen}
    errors: dict[str, list[str]] = {t.label: [] for t in chosen}
    syscalls: dict[str, dict[str, Any]] = {}
    with workspace("spcore-bench-") as (procs, workdir, cert):
        for number in range(s.rounds):
            for target in rotated(chosen, number):
                try:
                    numbers = measure(procs, target, cert, workdir, s)
                except BenchError as exc:
                    errors[target.label].append(str(exc))
                    progress(f"round {number + 1}/{s.rounds} {target.label}: {exc}")
                    continue
                numbers["round"] = number + 1
                rounds[target.label].append(numbers)
                progress(
                    f"round {number + 1}/{s.rounds} {target.label}: "
                    f"{numbers['rps']:,.0f} req/s, p99 {numbers['p99_ms']:.2f} ms, "
                    f"server CPU {numbers['server_cpu']:.0%} "
                    f"({numbers['per_cpu_second']:,} req/CPU-s), "
                    f"others {numbers['others_on_server_core'] or 0:.0%} of its core, "
                    f"load {numbers['load']:.2f}"
                )
        if s.strace:
            for target in chosen:
                if not target.traceable:
                    continue
                try:
                    syscalls[target.label] = count_syscalls(procs, target, cert, workdir, s)
                except BenchError as exc:
                    notes.append(f"syscalls not counted ({target.label}): {exc}")
                    progress(notes[-1])
                    if "cannot attach" in str(exc):
                        break
                    continue
                progress(
                    f"syscalls {target.label}: {syscalls[target.label]['per_request']} per request"
                )
    report["load_after"] = os.getloadavg()
    report["finished"] = now().isoformat(timespec="seconds")
    report["results"] = summarise(chosen, rounds, errors, syscalls)
    shares = [r["others_on_server_core"] for rs in rounds.values() for r in rs]
    report["others_on_server_core"] = median([x for x in shares if x is not None])
    if (report["others_on_server_core"] or 0) > NOISY:
        notes.append(
            f"other processes took {report['others_on_server_core']:.0%} of the server's core "
            "(median): not a quiet measurement; compare req/CPU-s, or rerun when idle"
        )
    return report


def summarise(
    chosen: list[Target],
    rounds: dict[str, list[dict[str, Any]]],
    errors: dict[str, list[str]],
    syscalls: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Medians per target, and the medians of its per-round ratios to the baseline."""
    rows = []
    for target in chosen:
        done = rounds[target.label]
        base = {r["round"]: r for r in rounds.get(target.baseline.label, [])}
        rows.append(
            {
                "server": target.server,
                "kind": target.kind,
                "baseline": target.baseline.label,
                "driver": target.driver + (f" ({target.engine})" if target.tls else ""),
                "transport": target.transport,
                "rps": median([r["rps"] for r in done]),
                "p99_ms": median([r["p99_ms"] for r in done]),
                "ratio": median(paired_ratios(done, base, "rps")),
                "server_cpu": median([r["server_cpu"] for r in done]),
                "per_cpu_second": median([r["per_cpu_second"] for r in done]),
                "per_cpu_ratio": median(paired_ratios(done, base, "per_cpu_second")),
                "syscalls_per_request": syscalls.get(target.label, {}).get("per_request"),
                "syscalls": syscalls.get(target.label),
                "wrk_errors": sum(r["errors"] for r in done),
                "rounds": done,
                "failures": errors[target.label],
            }
        )
    return rows


def paired_ratios(
    done: list[dict[str, Any]], base: dict[int, dict[str, Any]], key: str
) -> list[float]:
    """``key`` of each round divided by the baseline's ``key`` in the same round."""
    pairs = [(r, base[r["round"]]) for r in done if r["round"] in base]
    return [r[key] / b[key] for r, b in pairs if b[key]]


def rotated(items: list[T], number: int) -> list[T]:
    """``items`` in the order of round ``number``: each round starts one further along."""
    shift = number % len(items)
    return items[shift:] + items[:shift]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- output --------------------------------------------------------------------------------------

COLUMNS = (
    "server",
    "app",
    "driver",
    "transport",
    "requests/s",
    "p99",
    "vs base",
    "server CPU",
    "req/CPU-s",
    "vs base",
    "syscalls/req",
)
#: The columns aligned right (the numbers).
_NUMBERS = range(4, len(COLUMNS))


def cells(row: dict[str, Any]) -> list[str]:
    def number(value: float | None, spec: str, suffix: str = "") -> str:
        return "—" if value is None else f"{value:{spec}}{suffix}"

    return [
        row["server"],
        row["kind"],
        row["driver"],
        row["transport"].upper(),
        number(row["rps"], ",.0f"),
        number(row["p99_ms"], ".2f", " ms"),
        number(row["ratio"], ".2f", "x"),
        number(row["server_cpu"], ".0%"),
        number(row["per_cpu_second"], ",.0f"),
        number(row["per_cpu_ratio"], ".2f", "x"),
        number(row["syscalls_per_request"], ".2f"),
    ]


def table(report: dict[str, Any]) -> str:
    lines = [list(COLUMNS), *(cells(row) for row in report["results"])]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    right = _NUMBERS
    text = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join(text)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "| --- | --- | --- | --- |" + " ---: |" * len(_NUMBERS)
    rows = ["| " + " | ".join(cells(row)) + " |" for row in report["results"]]
    load = "load average {:.2f} before, {:.2f} after".format(
        report["load_before"][0], report["load_after"][0]
    )
    if report.get("others_on_server_core") is not None:
        load += f"; other processes took {report['others_on_server_core']:.0%} of the server's core"
    return "\n".join(
        [
            head,
            rule,
            *rows,
            "",
            f"Median of {s['rounds']} interleaved rounds of `{report['wrk']}`; {load}.",
        ]
    )


def write_json(report: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="wrk benchmark of spcore's drivers, codecs and TLS engines against "
        "uvicorn, hypercorn, granian and gunicorn"
    )
    parser.add_argument("--duration", type=float, help="seconds of each measured run (10)")
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections (50)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds; the median is shown (3)")
    parser.add_argument("--warmup", type=float, help="seconds of wrk before each run (2)")
    parser.add_argument("--strace-duration", type=float, help="seconds of the strace run (3)")
    parser.add_argument("--no-strace", action="store_true", help="do not count syscalls")
    parser.add_argument(
        "--quick", action="store_true", help="one round of 3 s (a smoke run, not a measurement)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--path", default=PATH, help=f"what wrk asks for ({PATH}; /mib: 1 MiB)")
    parser.add_argument(
        "--close", action="store_true", help="a new connection (a full handshake) per request"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORD",
        help="only servers whose kind and label ('asgi spcore asgi uring+httptools https') "
        "contain WORD; repeatable (keep the kind's baseline for the ratios)",
    )
    args = parser.parse_args(argv)
    quick = {"duration": 3.0, "rounds": 1, "warmup": 1.0, "strace_duration": 2.0}
    full = {"duration": 10.0, "rounds": 3, "warmup": 2.0, "strace_duration": 3.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def preflight(s: Settings) -> list[str]:
    """What this machine lacks; turns off pinning or strace (with a note) when needed."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    notes = []
    allowed = os.sched_getaffinity(0)
    if shutil.which("taskset") is None or not {0, 1} <= allowed:
        s.pin = False
        notes.append("not pinned: needs taskset and CPUs 0 and 1; server and wrk share CPUs")
    if s.strace and shutil.which("strace") is None:
        s.strace = False
        notes.append("syscalls not counted: strace is not installed")
    return notes


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for a while (the cleanup must finish)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    s = Settings(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rounds=args.rounds,
        strace_duration=args.strace_duration,
        pin=True,
        strace=not args.no_strace,
        path=args.path,
        close=args.close,
    )
    notes = preflight(s)
    # Ctrl-C even when started in the background (which ignores SIGINT), and SIGTERM from tox
    # or a CI runner, both unwind through the finally that stops every process.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args, s, notes)
    except KeyboardInterrupt:
        progress("bench: interrupted; every server and wrk stopped")
        return 130
    path = write_json(report)
    print(table(report))
    for note in report["notes"]:
        print(f"note: {note}")
    before, after = (
        ", ".join(f"{x:.2f}" for x in report[k]) for k in ("load_before", "load_after")
    )
    print(f"load average {before} before, {after} after")
    print(f"written to {path.relative_to(HERE.parent)}")
    if args.markdown:
        print()
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
