"""The examples in docs/ are real code: the blocking loop of docs/architecture.md serves HTTPS,
the TLS client of docs/tls-engine.md fetches a page with each engine."""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import socket
import threading
import time

import pytest
from engines import ENGINE_NAMES, skip_unavailable

import spcore
from spcore.conformance.apps import suite_app
from spcore.conformance.harness import Serve
from spcore.drivers import DRIVERS

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def _example():
    spec = importlib.util.spec_from_file_location(
        "blocking_loop", DOCS / "examples" / "blocking_loop.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_code_is_the_tested_code() -> None:
    source = inspect.getsource(_example().serve_one)
    assert source in (DOCS / "architecture.md").read_text()
    assert len(source.splitlines()) <= 25


def test_blocking_loop_serves_https(server_tls, stdlib_client) -> None:
    def app(request: spcore.Request) -> spcore.Response:
        return spcore.Response(200, body=f"hello {request.path}\n")

    listener = spcore.http_listener(app, tls=server_tls)
    server = spcore.Server([listener])
    server.start(time.monotonic(), time.time())
    with socket.create_server(("127.0.0.1", 0)) as listening:
        listening.settimeout(10)
        port = listening.getsockname()[1]
        thread = threading.Thread(target=_example().serve_one, args=(listening, server))
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            stdlib_client.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /docs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
        thread.join(10)
    assert not thread.is_alive()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nhello /docs\n")
    assert server.connections == {}
    assert server.stats.handshakes == 1


def _tls_client():
    spec = importlib.util.spec_from_file_location("tls_client", DOCS / "examples" / "tls_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_the_tls_engine_example_fetches_a_page(pki, engine: str) -> None:
    """docs/examples/tls_client.py, shown in docs/tls-engine.md, against a running server."""
    skip_unavailable(engine)
    source = inspect.getsource(_tls_client().fetch)
    assert source in (DOCS / "tls-engine.md").read_text()
    serve = Serve(DRIVERS["selectors"].load(), pki)
    with serve(suite_app, transport="tls1.3") as served:
        page = _tls_client().fetch("127.0.0.1", served.port, str(pki.ca_file), engine)
    assert page.startswith(b"HTTP/1.1 200 ") and b"/" in page
