"""spcore behind a real HAProxy (Debian's ``haproxy``): TCP mode, ``send-proxy-v2``, two
spcore processes, health checks on their metrics ports, all from docs/deployment.md's
examples. Requests are spread over both; the app sees the client's own address; a server
killed under load costs only the requests it had in flight (HAProxy retries the rest on the
other); a SIGHUP certificate reload under load fails nothing."""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import PKI
from netkit import wait_for
from servekit import needs_signals, served
from test_reload import Files, reloaded, serial

pytestmark = needs_signals

DEPLOYMENT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
WAIT = 20.0
LOAD_THREADS = 4


def doc_block(marker: str) -> str:
    """The code block of docs/deployment.md whose first line is ``marker``."""
    blocks = re.findall(r"```\w*\n(.*?)```", DEPLOYMENT.read_text(), re.S)
    found = [block for block in blocks if block.startswith(marker)]
    assert found, f"docs/deployment.md shows no block starting with {marker!r}"
    return found[0]


def free_ports(count: int) -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class Load:
    """Threads making HTTPS requests through HAProxy, one connection each, until stopped;
    every request's start time and outcome is kept."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.results: list[tuple[float, str | None]] = []  # (start, error or None)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(LOAD_THREADS)]

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            error = None
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=10, context=self.context
            )
            try:
                conn.request("GET", "/hello", headers={"connection": "close"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or not body:
                    error = f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                error = repr(exc)
            finally:
                conn.close()
            self.results.append((start, error))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def failures(self) -> list[tuple[float, str | None]]:
        return [result for result in self.results if result[1] is not None]


@contextlib.contextmanager
def haproxy(config: str, directory: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    path = directory / "haproxy.cfg"
    path.write_text(config)
    binary = shutil.which("haproxy")
    assert binary is not None
    check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        proc.kill()  # by its PID
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed here")
def test_haproxy_spreads_passes_the_client_retries_and_reloads_without_loss(
    pki: PKI, env: dict[str, str]
) -> None:
    front, app0, app1, metrics0, metrics1 = free_ports(5)
    with tempfile.TemporaryDirectory(prefix="sphap") as where:
        directory = pathlib.Path(where)
        files = Files(pki, directory)
        files.renew()
        config = (
            doc_block("# /etc/haproxy/haproxy.cfg")
            .replace("127.0.0.1:443", f"127.0.0.1:{front}")
            .replace("127.0.0.1:8001", f"127.0.0.1:{app0}")
            .replace("127.0.0.1:8002", f"127.0.0.1:{app1}")
            .replace("port 9100", f"port {metrics0}")
            .replace("port 9101", f"port {metrics1}")
        )
        commands = [
            shlex.split(line)
            for line in doc_block("# two spcore processes behind HAProxy").splitlines()
            if line.startswith("spcore serve")
        ]
        assert len(commands) == 2
        ports = {"8001": str(app0), "8002": str(app1), "9100": str(metrics0), "9101": str(metrics1)}
        paths = {"/etc/spcore/cert.pem": str(files.cert), "/etc/spcore/key.pem": str(files.key)}
        argvs = [
            [ports.get(arg, paths.get(arg, arg)) for arg in command[2:]] + ["--log-level", "info"]
            for command in commands
        ]
        context = pki.client_context()
        with (
            served(argvs[0], env) as first,
            served(argvs[1], env) as second,
            haproxy(config, directory),
        ):
            pids = {first.proc.pid, second.proc.pid}

            def stats_pid() -> int:
                conn = http.client.HTTPSConnection("127.0.0.1", front, timeout=10, context=context)
                try:
                    conn.request("GET", "/stats")
                    import json

                    return int(json.loads(conn.getresponse().read())["pid"])
                finally:
                    conn.close()

            def up() -> bool:
                with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                    return stats_pid() in pids
                return False

            wait_for(up, "HAProxy to forward to spcore", WAIT)

            # Spread: round robin over both servers.
            assert {stats_pid() for _ in range(10)} == pids

            # The application sees the client's own address (PROXY v2), not HAProxy's.
            conn = http.client.HTTPSConnection("127.0.0.1", front, timeout=10, context=context)
            conn.request("GET", "/?format=json")
            import json

            seen = json.loads(conn.getresponse().read())["client"]
            assert seen == ["127.0.0.1", conn.sock.getsockname()[1]]
            conn.close()

            # A certificate reload under load drops nothing.
            with Load(front, context) as load:
                time.sleep(0.5)
                new = files.renew()
                first.proc.send_signal(signal.SIGHUP)
                second.proc.send_signal(signal.SIGHUP)
                for server, port in ((first, app0), (second, app1)):
                    wait_for(
                        lambda s=server, p=port: reloaded(s.errors(), f"127.0.0.1:{p}") == 1,
                        "the reloads",
                        WAIT,
                    )
                time.sleep(0.5)
            assert len(load.results) > 20
            assert load.failures() == []
            conn = http.client.HTTPSConnection("127.0.0.1", front, timeout=10, context=context)
            conn.connect()
            assert serial(conn) == new
            conn.close()

            # One server killed under load: only the requests it had in flight may fail;
            # every later one is retried by HAProxy on the other server.
            with Load(front, context) as load:
                time.sleep(0.5)
                second.proc.kill()
                second.proc.wait(10)
                # Its port refuses connections (what HAProxy retries) once the kernel has
                # closed the listening socket: with io_uring that happens after the process is
                # reaped (the ring's teardown, which holds the socket's last reference, runs
                # in the background); until then a connection may still be queued on it.
                wait_for(lambda: refused(app1), "the killed server's port to close", WAIT)
                killed = time.monotonic()
                time.sleep(2.0)
            failures = [(start - killed, error) for start, error in load.failures()]
            assert all(offset <= 0 for offset, _ in failures), failures
            after = [r for r in load.results if r[0] > killed]
            assert len(after) > 10
            assert first.proc.poll() is None
            assert first.stop() == 0
