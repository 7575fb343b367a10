"""A 1 GiB upload through a WSGI application and through an ASGI one, over TLS: the server's
resident memory grows by less than 64 MiB (its high-water mark, ``VmHWM``, against its size
before), the body being read as it arrives rather than held. A few seconds each here."""

from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import ssl
import sys

import pytest
from servekit import served

SIZE = 1 << 30
BLOCK = b"\0" * (1 << 20)
GROWTH_LIMIT_MIB = 64

APPS = """
import hashlib

def wsgi(environ, start_response):
    digest, size = hashlib.sha256(), 0
    while chunk := environ["wsgi.input"].read(65536):
        digest.update(chunk)
        size += len(chunk)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{digest.hexdigest()} {size}".encode()]

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    digest, size, more = hashlib.sha256(), 0, True
    while more:
        message = await receive()
        digest.update(message["body"])
        size += len(message["body"])
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{digest.hexdigest()} {size}".encode()})
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's memory from /proc"
)


def memory_mib(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak so far) of process ``pid``, in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def post(port: int, length: int, blocks: int = 0) -> bytes:
    """A POST over TLS with a body of zeros (``blocks`` MiB of it sent); the response."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
        for _ in range(blocks):
            sock.sendall(BLOCK)
        response = b""
        while not response.endswith(b" %d" % length):
            data = sock.recv(65536)
            assert data, f"the server closed the connection: {response!r}"
            response += data
        return response


@pytest.mark.parametrize(("app", "driver"), [("apps:wsgi", "selectors"), ("apps:asgi", "asyncio")])
def test_a_gigabyte_upload_costs_the_server_little_memory(
    app: str, driver: str, env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "apps.py").write_text(APPS)
    expected = hashlib.sha256()
    for _ in range(SIZE // len(BLOCK)):
        expected.update(BLOCK)
    command = ["--app", app, "--driver", driver, "--port", "0", "--max-body-size", str(SIZE)]
    app_env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])}
    with served(command, app_env, tmp_path) as server:
        port = server.endpoint("https").port
        assert post(port, 0).endswith(b" 0")  # warm: the code paths loaded, TLS set up
        before = memory_mib(server.proc.pid, "VmRSS")
        response = post(port, SIZE, SIZE // len(BLOCK))
        growth = memory_mib(server.proc.pid, "VmHWM") - before
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.endswith(f"{expected.hexdigest()} {SIZE}".encode())
        assert growth < GROWTH_LIMIT_MIB, f"the server grew by {growth} MiB"
        assert server.stop() == 0
