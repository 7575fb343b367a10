"""``spcore serve`` on sockets other than its own TCP ones: Unix domain sockets (``--uds``),
a socket handed in (``--fd``) and systemd socket activation (``LISTEN_FDS``)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import PKI
from servekit import Served, get, needs_signals, run_spcore, served, spcore, tls_client

from spcore.supervisor import cpu_count

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX here")
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture
def socket_dir() -> Iterator[pathlib.Path]:
    """A directory with a short path (a Unix socket path is limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="spu") as name:
        yield pathlib.Path(name)


def curl_unix(path: pathlib.Path, url: str) -> dict[str, object]:
    assert CURL is not None
    result = subprocess.run(
        [CURL, "-sSk", "--max-time", "10", "--unix-socket", str(path), url],
        capture_output=True,
        timeout=15,
    )
    assert result.returncode == 0, result.stderr
    info: dict[str, object] = json.loads(result.stdout)
    return info


# -- Unix domain sockets -------------------------------------------------------------------------


@needs_signals
@needs_unix
@needs_curl
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_uds_serves_curl_and_its_file_is_removed_at_exit(
    env: dict[str, str], socket_dir: pathlib.Path, tls: bool
) -> None:
    path = socket_dir / "spcore.sock"
    args = ["--uds", str(path), *([] if tls else ["--no-tls"])]
    with served(args, env) as server:
        scheme = "https" if tls else "http"
        assert server.line.startswith(f"spcore: serving unix:{path} ({scheme}) with the ")
        assert server.endpoints == []  # no TCP listener unless --host/--port asks for one
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666  # systemd's SocketMode default
        info = curl_unix(path, f"{scheme}://localhost/?format=json")
        assert info["scheme"] == scheme
        assert info["client"] is None  # an AF_UNIX peer has no (host, port)
        if tls:
            assert isinstance(info["tls"], dict) and info["tls"]["alpn"] == "http/1.1"
        assert server.stop() == 0
        assert "Traceback" not in server.errors()
    assert not path.exists()


@needs_signals
@needs_unix
@needs_curl
def test_uds_beside_a_port_with_its_mode_and_a_stale_file_replaced(
    env: dict[str, str], socket_dir: pathlib.Path, cache_dir: pathlib.Path
) -> None:
    path = socket_dir / "spcore.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a killed server leaves: a socket file nobody listens on
    stale.close()
    args = ["--uds", str(path), "--uds-mode", "600", "--port", "0"]
    with served(args, env) as server:
        [endpoint] = server.endpoints
        assert f"unix:{path} (https) and https://127.0.0.1:{endpoint.port}/" in server.line
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert curl_unix(path, "https://localhost/?format=json")["scheme"] == "https"
        assert get(endpoint, "/hello", tls_client(cache_dir)) == (200, b"Hello, world!")
        assert server.stop() == 0
    assert not path.exists()


@needs_unix
def test_uds_where_a_server_listens_is_a_one_line_error(
    env: dict[str, str], socket_dir: pathlib.Path
) -> None:
    path = socket_dir / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        result = run_spcore("serve", "--uds", str(path), env=env)
        assert result.returncode == 2
        assert result.stderr == (
            f"spcore: error: cannot listen on unix:{path}: another server is listening on it\n"
        )
        assert path.exists()  # left to its server


# -- a socket handed in --------------------------------------------------------------------------


@needs_signals
def test_fd_serves_a_socket_made_by_someone_else(env: dict[str, str]) -> None:
    made = socket.create_server(("127.0.0.1", 0))
    port = made.getsockname()[1]
    fd = made.fileno()
    try:
        with served(["--fd", str(fd), "--no-tls"], env, pass_fds=(fd,)) as server:
            assert [(e.scheme, e.port) for e in server.endpoints] == [("http", port)]
            made.close()  # ours is closed: what answers is the server's copy
            status, body = get(server.endpoints[0], "/?format=json")
            assert status == 200 and json.loads(body)["client"][0] == "127.0.0.1"
            assert server.stop() == 0
    finally:
        made.close()


def test_fd_that_is_no_listening_socket_is_a_one_line_error(env: dict[str, str]) -> None:
    with socket.socket() as unbound:
        fd = unbound.fileno()
        result = run_spcore("serve", "--fd", str(fd), env=env, pass_fds=(fd,))
    assert result.returncode == 2
    assert result.stderr.startswith(f"spcore: error: cannot serve fd {fd}: ")
    assert "not listening" in result.stderr and result.stderr.count("\n") == 1


# -- systemd socket activation -------------------------------------------------------------------

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed (package systemd)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def knock(port: int, stop: threading.Event) -> None:
    """Connect until it works: systemd-socket-activate starts its program on a first client."""
    while not stop.is_set():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


@contextlib.contextmanager
def socket_activated(
    names: list[str], serve: list[str], env: dict[str, str]
) -> Iterator[tuple[Served, list[int]]]:
    """``spcore serve`` started by systemd's own socket activation tool, on one loopback
    socket per name (``FileDescriptorName=``)."""
    assert SOCKET_ACTIVATE is not None
    ports = [free_port() for _ in names]
    command = [SOCKET_ACTIVATE, *(f"--listen=127.0.0.1:{port}" for port in ports)]
    command.append(f"--fdname={':'.join(names)}")
    # It passes on only a few variables of its own environment, and those named with -E.
    command += [f"--setenv={name}" for name in ("SPCORE_CACHE_DIR", "PYTHONPATH") if name in env]
    command += ["--", *spcore("serve", *serve)]
    stop = threading.Event()
    knocker = threading.Thread(target=knock, args=(ports[0], stop))
    knocker.start()
    try:
        with served([], env, command=command) as server:
            yield server, ports
    finally:
        stop.set()
        knocker.join(5)


@needs_signals
@needs_socket_activate
def test_systemd_sockets_are_served_and_one_named_plain_without_tls(
    env: dict[str, str], cache_dir: pathlib.Path
) -> None:
    with socket_activated(["web", "plain"], [], env) as (server, (tls_port, plain_port)):
        assert [(e.scheme, e.port) for e in server.endpoints] == [
            ("https", tls_port),
            ("http", plain_port),
        ]
        for endpoint in server.endpoints:
            status, body = get(endpoint, "/?format=json", tls_client(cache_dir))
            assert status == 200 and json.loads(body)["scheme"] == endpoint.scheme
        assert server.stop() == 0


DEPLOYMENT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "deployment.md"


def unit_file(name: str) -> dict[str, list[str]]:
    """The settings of the unit file ``name`` shown in docs/deployment.md."""
    text = DEPLOYMENT.read_text()
    match = re.search(rf"```ini\n# /etc/systemd/system/{re.escape(name)}\n(.*?)```", text, re.S)
    assert match, f"docs/deployment.md shows no {name}"
    settings: dict[str, list[str]] = {}
    for line in match[1].splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", "[")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@needs_signals
@needs_socket_activate
def test_the_documented_systemd_units_serve_with_workers(env: dict[str, str], pki: PKI) -> None:
    """The socket unit's sockets and names, the service's ExecStart, with the machine's paths
    replaced: the spcore command by this interpreter's, the certificate by the test PKI's,
    the port by a free loopback one."""
    sockets = unit_file("spcore.socket")
    service = unit_file("spcore.service")
    assert service["Requires"] == ["spcore.socket"]
    [exec_start] = service["ExecStart"]
    program, command, *args = shlex.split(exec_start)
    assert program.endswith("/spcore") and command == "serve"
    paths = {"/etc/spcore/cert.pem": pki.server.certfile, "/etc/spcore/key.pem": pki.server.keyfile}
    args = [str(paths.get(arg, arg)) for arg in args]
    names = sockets["FileDescriptorName"] * len(sockets["ListenStream"])
    with socket_activated(names, args, env) as (server, [port]):
        assert server.line.startswith(f"spcore: serving https://127.0.0.1:{port}/ with the ")
        assert len(server.workers) == cpu_count()  # --workers auto
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        status, body = get(server.endpoints[0], "/stats", context)
        assert status == 200 and json.loads(body)["pid"] in server.workers
        assert server.stop() == 0
