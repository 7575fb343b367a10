"""HTTP/1.1 over plaintext, TLS 1.2 and TLS 1.3: requests, keep-alive, pipelining, big
bodies both ways, chunked framing, HEAD and ``Expect: 100-continue``."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from spcore.conformance.apps import suite_app
from spcore.conformance.clients import pattern
from spcore.conformance.harness import Serve, Transport, transports
from spcore.http.messages import Request, Response, blocking

TRANSPORTS = transports("plain", "tls1.2", "tls1.3")
BIG = 10 * 1024 * 1024


@TRANSPORTS
def test_one_request(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        response = client.fetch("GET", "/info")
        assert response.status == 200
        assert response.version == "HTTP/1.1"
        assert response.header("date") and response.header("server")
        info = json.loads(response.body)
        assert info["method"] == "GET" and info["target"] == "/info"
        if transport == "plain":
            assert info["tls"] is None
        else:
            expected = "TLSv1.2" if transport == "tls1.2" else "TLSv1.3"
            assert info["tls"]["version"] == expected
            assert client.tls is not None and client.tls.version() == expected


@TRANSPORTS
def test_keep_alive_series(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        for i in range(50):
            response = client.fetch("GET", f"/item/{i}")
            assert (response.status, response.body) == (200, f"GET /item/{i}".encode())
        assert served.server.stats.connections_total == 1


@TRANSPORTS
def test_pipelined_requests_answered_in_order(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        targets = [f"/p/{i}" for i in range(20)] + ["/pattern?n=100000", "/hello"]
        batch = b"".join(_get(target) for target in targets)
        client.send(batch)
        for target in targets:
            response = client.read_response()
            assert response.status == 200
            if target.startswith("/p/"):
                assert response.body == f"GET {target}".encode()
        assert response.body == b"Hello, world!"


@TRANSPORTS
def test_big_upload(serve: Serve, transport: Transport) -> None:
    body = pattern(7, BIG)
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        response = client.fetch("PUT", "/sha256", body=body)
        assert response.body.decode() == f"{hashlib.sha256(body).hexdigest()} {BIG}"


@TRANSPORTS
def test_big_download(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        response = client.fetch("GET", f"/pattern?n={BIG}")
        assert response.header("content-length") == str(BIG)
        assert hashlib.sha256(response.body).digest() == hashlib.sha256(pattern(0, BIG)).digest()
        assert client.fetch("GET", "/hello").body == b"Hello, world!"  # still in sync


@TRANSPORTS
def test_chunked_both_ways(serve: Serve, transport: Transport) -> None:
    pieces = [pattern(i * 1000, 1 + i * 997) for i in range(30)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        client.send(_head("POST", "/echo", ("Transfer-Encoding", "chunked")))
        for start in range(0, len(encoded), 4000):  # arrives in several reads
            client.send(encoded[start : start + 4000])
        response = client.read_response("POST")
        assert response.chunked and response.body == b"".join(pieces)
        download = client.fetch("GET", "/chunked?n=300000")
        assert download.chunked and download.body == pattern(0, 300000)


@TRANSPORTS
def test_head(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        response = client.fetch("HEAD", "/pattern?n=5000")
        assert response.status == 200
        assert response.header("content-length") == "5000"
        # no body followed: the next response on the connection parses
        assert client.fetch("GET", "/hello").body == b"Hello, world!"


@TRANSPORTS
def test_expect_100_continue(serve: Serve, transport: Transport) -> None:
    body = pattern(3, 200_000)
    head = _head("PUT", "/sha256", ("Content-Length", str(len(body))), ("Expect", "100-continue"))
    with serve(suite_app, transport=transport) as served, served.connect() as client:
        client.send(head)
        interim = client.read_head()
        assert interim.status == 100
        client.send(body)
        response = client.read_response("PUT")
        assert response.status == 200
        assert response.body.decode() == f"{hashlib.sha256(body).hexdigest()} {len(body)}"


def _no_ipv6() -> str | None:
    """Why this machine has no IPv6 loopback, or None."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind ::1: {exc}"
    return None


def test_ipv6(serve: Serve) -> None:
    """A second listener on ::1 (the driver binds both, IPv6-only beside IPv4)."""
    why = _no_ipv6()
    if why is not None:
        pytest.skip(why)
    with serve(suite_app, hosts=("127.0.0.1", "::1")) as served:
        assert served.addresses[1][0] == "::1"
        for index in (0, 1):
            with served.connect(index=index) as client:
                assert client.fetch("GET", "/hello").body == b"Hello, world!"


def test_blocking_app_runs_on_workers(serve: Serve) -> None:
    """Jobs run off the loop thread, on several workers: four slow requests overlap."""
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    @blocking
    def slow(request: Request) -> Response:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return Response(200, [], f"slow {request.target}")

    with serve(slow) as served:
        results: list[bytes] = []

        def fetch(i: int) -> None:
            with served.connect() as client:
                results.append(client.fetch("GET", f"/{i}").body)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(results) == [f"slow /{i}".encode() for i in range(4)]
        assert running[1] > 1, "the jobs never ran at the same time"


def _head(method: str, target: str, *headers: tuple[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _get(target: str) -> bytes:
    return _head("GET", target)
