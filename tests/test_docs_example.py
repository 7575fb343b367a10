"""The examples in docs/ are real programs: run as scripts, they serve until Ctrl-C, and
clients that reset or close at any moment never bring them down; the TLS client of
docs/tls-engine.md fetches a page with each engine.

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
from engines import ENGINE_NAMES, skip_unavailable
from netkit import rst_close

from spcore.conformance.apps import suite_app
from spcore.conformance.harness import PKI, Serve
from spcore.drivers import DRIVERS

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
def script(name: str, tmp_path: pathlib.Path, *args: str) -> Iterator[int]:
    """Run ``docs/examples/<name>`` on a free port (then ``args``); yield the port; end it
    with SIGINT, as Ctrl-C would, and require a clean exit."""
    env = dict(os.environ, SPCORE_CACHE_DIR=str(tmp_path / "cache"))
    root = str(DOCS.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "0", *args],
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


def _line(sock: socket.socket, ending: bytes = b"\r\n") -> bytes:
    data = b""
    while not data.endswith(ending):
        chunk = sock.recv(1)
        assert chunk, f"the stream ended after {data!r}"
        data += chunk
    return data


def test_the_chat_relays_lines_and_sends_a_heartbeat(tmp_path: pathlib.Path) -> None:
    heartbeats: dict[socket.socket, int] = {}

    def said(sock: socket.socket) -> bytes:
        """The next line but heartbeats (the server's timer, every 0.3 s), which are counted."""
        while (line := _line(sock)) == b"* heartbeat\r\n":
            heartbeats[sock] = heartbeats.get(sock, 0) + 1
        return line

    with script("chat.py", tmp_path, "0.3") as port:
        alice = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        bob = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        with alice, bob:
            assert said(alice).startswith(b"welcome, guest")
            assert said(bob).startswith(b"welcome, guest")
            assert said(alice).endswith(b" joined\r\n")  # bob
            alice.sendall(b"/nick alice\n")
            assert said(alice).endswith(b" is now alice\r\n")
            assert said(bob).endswith(b" is now alice\r\n")
            alice.sendall(b"hello bob\n")
            assert said(bob) == b"<alice> hello bob\r\n"
            for sock in (alice, bob):
                if not heartbeats.get(sock):
                    assert _line(sock) == b"* heartbeat\r\n"
            alice.sendall(b"/quit\n")
            assert said(alice) == b"bye\r\n" and alice.recv(1) == b""
            alice.close()
            assert said(bob) == b"* alice left\r\n"
            rude_clients(port, lambda sock: sock)


def test_the_dot_echo_frames_like_smtp_data(tmp_path: pathlib.Path) -> None:
    with script("dot_echo.py", tmp_path) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            assert _line(client, b"\r\n.\r\n").startswith(b"220 dot echo ready")
            client.sendall(b"hello\r\n..a line that starts with a dot\r\n.\r\n")
            assert _line(client, b"\r\n.\r\n") == (
                b"250 37 bytes:\r\nhello\r\n..a line that starts with a dot\r\n.\r\n"
            )
            client.sendall(b"QUIT\r\n.\r\n")
            assert _line(client, b"\r\n.\r\n") == b"221 bye\r\n.\r\n"
            assert client.recv(1) == b""
        rude_clients(port, lambda sock: sock)


def test_the_tunnel_example_puts_https_in_front_of_a_plain_server(tmp_path: pathlib.Path) -> None:
    with script("tunnel_http.py", tmp_path) as port:
        url = f"https://127.0.0.1:{port}"
        lines = curl(url + "/one", url + "/two")  # (http.server closes after each answer)
        assert lines[::2] == [
            "hello from a plain HTTP server, path /one",
            "hello from a plain HTTP server, path /two",
        ]
        rude_clients(port, tls_client)
        assert curl(url + "/after")[0] == "hello from a plain HTTP server, path /after"


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_the_tls_engine_example_fetches_a_page(
    pki: PKI, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/examples/tls_client.py, shown in docs/tls-engine.md, against a running server."""
    skip_unavailable(engine)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    tls_client_example = pytest.importorskip("tls_client")
    source = inspect.getsource(tls_client_example.fetch)
    assert source in (DOCS / "tls-engine.md").read_text()
    serve = Serve(DRIVERS["selectors"].load(), pki)
    try:
        with serve(suite_app, transport="tls1.3") as served:
            page = tls_client_example.fetch("127.0.0.1", served.port, str(pki.ca_file), engine)
    finally:
        sys.modules.pop("tls_client", None)
    assert page.startswith(b"HTTP/1.1 200 ") and b"/" in page
