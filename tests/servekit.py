"""Running ``spcore serve`` for real, as a subprocess: its startup line, its endpoints, and
plain HTTP(S) requests to them. Every process is stopped by its PID when the test ends."""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import re
import resource
import selectors
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from netkit import wait_for

STARTUP_TIMEOUT = 20.0  # a cold interpreter on a busy CI machine
BANNER = re.compile(
    r"^spcore: serving (?P<what>.*) with the (?P<driver>\S+) driver"
    r"(?: and the (?P<codec>\S+) codec)?(?P<rest>.*)$"
)
#: The supervisor's startup line says ``... driver in 2 workers, pids 4242, 4243 ...``.
WORKERS = re.compile(r" in (?P<count>\d+) workers?, pids? (?P<pids>\d+(?:, \d+)*)")
#: With ``--app``: ``..., the ASGI 3 app myapp:app`` (the supervisor's: ``the app myapp:app``).
APP = re.compile(r"^, the (?:(?P<interface>ASGI 3|WSGI|spcore) )?app (?P<app>\S+)")
URL = re.compile(
    r"(?P<scheme>https?|tls|tcp)://(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:/\s]+)):(?P<port>\d+)"
)

needs_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def spcore(*args: str) -> list[str]:
    return [sys.executable, "-m", "spcore", *args]


@dataclass
class Endpoint:
    scheme: str
    host: str
    port: int


class Served:
    """A running ``spcore serve`` and what its first line said; always stopped on exit, with
    every worker it named. ``command`` runs something else that ends up as ``spcore serve``
    (``systemd-socket-activate ...``); ``pass_fds`` are handed to it."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        cwd: pathlib.Path | None = None,
        *,
        max_files: int | None = None,
        command: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ):
        # A file, not a pipe: nobody reads stderr while the server runs, and a pipe could fill.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.workers: list[int] = []
        self.proc = subprocess.Popen(
            command or spcore("serve", *args),
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            preexec_fn=None if max_files is None else lambda: _limit_files(max_files),
        )
        try:
            self.line = self._first_line()
        except BaseException:
            self.close()
            raise
        self._read_banner()

    def _read_banner(self) -> None:
        match = BANNER.match(self.line)
        assert match, self.line
        self.driver = match["driver"]
        self.codec = match["codec"]
        self.rest = match["rest"]
        app = APP.match(self.rest)
        #: The interface the start line names for ``--app``, and the app.
        self.interface = app["interface"] if app else None
        self.app = app["app"] if app else None
        rest = self.rest[app.end() :] if app else self.rest
        if workers := WORKERS.match(rest):
            self.workers = [int(pid) for pid in workers["pids"].split(", ")]
        self.endpoints = [
            Endpoint(m["scheme"], m["v6"] or m["v4"], int(m["port"]))
            for m in URL.finditer(match["what"])
        ]

    def _first_line(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in data:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "spcore serve printed no line in time"
                if sel.select(remaining):
                    chunk = os.read(fd, 4096)
                    assert chunk, f"spcore serve exited early: {self.errors()}"
                    data += chunk
        return data.decode().splitlines()[0]

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def endpoint(self, scheme: str, host: str = "127.0.0.1") -> Endpoint:
        return next(e for e in self.endpoints if e.scheme == scheme and e.host == host)

    def stop(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for pid in self.workers:  # those a killed supervisor left (they would stop by themselves)
            kill_worker(pid)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


def kill_worker(pid: int) -> None:
    """SIGKILL worker ``pid`` if it is still one (a pid can be reused; where /proc tells, a
    process whose command line is not a worker's is left alone)."""
    cmdline = pathlib.Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        if cmdline.parent.parent.is_dir() and b"--worker" not in cmdline.read_bytes():
            return
        os.kill(pid, signal.SIGKILL)


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def served(
    args: list[str], env: dict[str, str], cwd: pathlib.Path | None = None, **options: Any
) -> Iterator[Served]:
    server = Served(args, env, cwd, **options)
    try:
        yield server
    finally:
        server.close()


def tls_client(cache_dir: pathlib.Path) -> ssl.SSLContext:
    """A client that verifies the development certificate (it names 127.0.0.1 and ::1)."""
    context = ssl.create_default_context(cafile=str(cache_dir / "dev-cert.pem"))
    context.set_alpn_protocols(["http/1.1"])
    return context


def get(endpoint: Endpoint, path: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    host = endpoint.host
    if endpoint.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, endpoint.port, timeout=10, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, endpoint.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def run_spcore(
    *args: str,
    env: dict[str, str],
    cwd: pathlib.Path | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``spcore ARGS`` run to its end (within a minute), its output captured as text."""
    return subprocess.run(
        spcore(*args),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        pass_fds=pass_fds,
        timeout=60,
    )


#: ``slowapp:app`` (the ``slow_app`` fixture): ``/?chunks=N`` sends N * 10 bytes, one every
#: 0.1 s, and touches ``started`` beside it when the body begins.
SLOW_APP = """
import pathlib
import time

from spcore.http.messages import Response, blocking

STARTED = pathlib.Path(__file__).with_name("started")


def body(chunks):
    STARTED.touch()
    for _ in range(chunks):
        time.sleep(0.1)
        yield b"0123456789"


@blocking
def app(request):
    chunks = int(request.query.partition("=")[2] or 5)
    return Response(200, [("content-length", str(10 * chunks))], body(chunks))
"""


def slow_request(
    port: int, slow_app: pathlib.Path, chunks: int, context: ssl.SSLContext | None = None
) -> http.client.HTTPConnection:
    """A request for ``chunks`` chunks from ``slowapp:app`` (over TLS with ``context``),
    returned once its body began."""
    busy = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
        if context is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    )
    busy.request("GET", f"/?chunks={chunks}")
    wait_for((slow_app / "started").exists, "the slow app to start", 20.0)
    return busy
