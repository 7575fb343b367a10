"""The examples in docs/ are real programs: run as scripts, they serve until Ctrl-C, and
clients that reset or close at any moment never bring them down.

The blocking loop of docs/architecture.md is the code of docs/examples/blocking_loop.py.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from netkit import rst_close

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = DOCS / "examples"
TIMEOUT = 10.0


def test_the_documented_code_is_the_tested_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    blocking_loop = pytest.importorskip("blocking_loop")
    source = inspect.getsource(blocking_loop.serve_one)
    assert source in (DOCS / "architecture.md").read_text()
    assert len(source.splitlines()) <= 40  # small enough to read at a glance
    sys.modules.pop("blocking_loop", None)


@pytest.mark.parametrize("example", ["flask_app.py", "starlette_app.py"])
def test_the_guide_shows_the_served_examples(example: str) -> None:
    """The Flask and Starlette apps of the guide are the files tests/test_hosting.py serves
    on every driver."""
    assert (EXAMPLES / example).read_text() in (DOCS / "guide.md").read_text()


@contextlib.contextmanager
def script(name: str, tmp_path: pathlib.Path) -> Iterator[int]:
    """Run ``docs/examples/<name>`` on a free port; yield the port; end it with SIGINT, as
    Ctrl-C would, and require a clean exit."""
    env = dict(os.environ, SPCORE_CACHE_DIR=str(tmp_path / "cache"))
    root = str(DOCS.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the banner, once it listens
        match = re.search(r"://127\.0\.0\.1:(\d+)/", line)
        assert match, (line, process.stderr.read() if process.stderr else "")
        yield int(match.group(1))
        assert process.poll() is None, "the example died while serving"
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, errors
        assert "Traceback" not in errors, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def curl(url: str, *extra: str) -> list[str]:
    """``curl -sk`` fetching ``url`` and ``extra`` URLs (on one connection, if it is kept
    alive): for each, its body's lines and how many connections it opened."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        ["curl", "-sk", "--max-time", str(TIMEOUT), "-w", "\\n#%{num_connects}\\n", url, *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def rude_clients(port: int, wrap: Callable[[socket.socket], socket.socket]) -> None:
    """Clients that go away at every point of a connection's life."""
    # connects and closes at once; connects and resets at once
    socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    rst_close(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
    # half a request, then a reset; a whole request, then a reset before reading the answer
    for request in (b"GET / HTTP/1.1\r\nHo", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
        sock = wrap(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        sock.sendall(request)
        rst_close(sock)
    # a request, then its write side shut (on TLS without close_notify), then gone unread
    sock = wrap(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def tls_client(sock: socket.socket) -> socket.socket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(sock, server_hostname="localhost")


def test_the_blocking_loop_serves_https_until_ctrl_c(tmp_path: pathlib.Path) -> None:
    with script("blocking_loop.py", tmp_path) as port:
        url = f"https://127.0.0.1:{port}/"
        # Two requests on one keep-alive connection, which curl then closes (issue 9: this
        # crashed the example with ConnectionResetError or ENOTCONN).
        assert curl(url + "one", url + "two") == [
            "hello from a blocking loop: /one",
            "#1",
            "hello from a blocking loop: /two",
            "#0",  # the same connection
        ]
        rude_clients(port, tls_client)
        assert curl(url + "after")[0] == "hello from a blocking loop: /after"


def test_the_tiny_driver_serves_http_until_ctrl_c(tmp_path: pathlib.Path) -> None:
    with script("tiny_driver.py", tmp_path) as port:
        url = f"http://127.0.0.1:{port}/"
        assert "tiny" in " ".join(curl(url + "stats"))  # the built-in app names its driver
        rude_clients(port, lambda sock: sock)
        time.sleep(0.2)  # (the resets reach the server)
        lines = curl(url + "stats", url + "stats")
        assert lines[-1] == "#0"  # the second on the first's keep-alive connection
