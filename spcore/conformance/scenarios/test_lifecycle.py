"""How connections and the server end: resets, half-close, ragged EOF, close_notify, the
handshake, header and idle timeouts, and a graceful shutdown with a response in flight."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from spcore.conformance.apps import pattern_body, still_serving, suite_app
from spcore.conformance.clients import Client, pattern
from spcore.conformance.harness import (
    Serve,
    Served,
    Transport,
    suite_limits,
    transports,
    wait_until,
)
from spcore.http.messages import Request, Response, blocking

TRANSPORTS = transports("plain", "tls1.3")
TLS_VERSIONS = transports("tls1.2", "tls1.3")
SLOW_SIZE = 2_000_000  # the slow response: ten chunks, 100 ms apart


def _shut_write(client: Client) -> None:
    """TCP half-close under the client (for TLS: without close_notify, as an abrupt peer)."""
    raw = socket.socket(fileno=client.sock.fileno())
    try:
        raw.shutdown(socket.SHUT_WR)
    finally:
        raw.detach()


def _closed_within(client: Client, low: float, high: float) -> float:
    start = time.monotonic()
    assert client.closed_by_server()
    elapsed = time.monotonic() - start
    assert low <= elapsed <= high, f"closed after {elapsed:.2f} s, expected {low}..{high} s"
    return elapsed


@TRANSPORTS
@pytest.mark.parametrize("where", ["head", "body"])
def test_reset_mid_request(serve: Serve, transport: Transport, where: str) -> None:
    with serve(suite_app, transport=transport) as served:
        client = served.connect()
        if where == "head":
            client.send(b"GET /hello HTTP/1.1\r\nHost: loc")
        else:
            client.send(
                b"PUT /sha256 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
            )
            client.send(pattern(0, 30000))
        time.sleep(0.05)
        client.reset()
        still_serving(served)


@TRANSPORTS
def test_reset_mid_response(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        client = served.connect()
        client.request("GET", "/pattern?n=100000000")
        head = client.read_head()
        assert head.status == 200
        client.read_exact(200_000)
        client.reset()
        still_serving(served)


@TRANSPORTS
def test_half_close_after_the_request(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        with served.connect() as client:
            client.request("GET", "/pattern?n=300000")
            _shut_write(client)
            response = client.read_response()
            assert response.status == 200 and response.body == pattern(0, 300_000)
        still_serving(served)


@TLS_VERSIONS
@pytest.mark.parametrize("when", ["idle", "mid-request"])
def test_ragged_eof(serve: Serve, transport: Transport, when: str) -> None:
    """The client drops TCP without close_notify: no error, nothing left behind."""
    with serve(suite_app, transport=transport) as served:
        client = served.connect()
        if when == "idle":
            assert client.fetch("GET", "/hello").status == 200
        else:
            client.send(b"GET /hello HTTP/1.1\r\nHost: lo")
        client.close()  # ssl.SSLSocket.close() sends no close_notify
        still_serving(served)


@TLS_VERSIONS
def test_server_sends_close_notify(serve: Serve, transport: Transport) -> None:
    """A TLS connection the server closes ends with close_notify: the client's read returns
    b"" (a bare TCP close would raise SSLEOFError here)."""
    with serve(suite_app, transport=transport) as served:
        with served.connect() as client:
            response = client.fetch("GET", "/hello", [("Connection", "close")])
            assert response.status == 200 and response.header("connection") == "close"
            assert client.recv() == b""
        served.wait_drained()


def test_handshake_timeout(serve: Serve) -> None:
    limits = suite_limits(handshake_timeout=0.3)
    with serve(suite_app, transport="tls1.3", limits=limits) as served:
        with served.connect("plain") as client:  # TCP only: no ClientHello
            _closed_within(client, 0.2, 3.0)
        still_serving(served)


def test_header_timeout(serve: Serve) -> None:
    with serve(suite_app, limits=suite_limits(header_timeout=0.3)) as served:
        with served.connect() as client:
            client.send(b"GET /hello HTTP/1.1\r\nHost: local")
            start = time.monotonic()
            response = client.read_response()
            assert response.status == 408
            assert 0.2 <= time.monotonic() - start <= 3.0
            assert client.closed_by_server()
        still_serving(served)


@TRANSPORTS
@pytest.mark.parametrize("after", ["connect", "request"])
def test_idle_timeout(serve: Serve, transport: Transport, after: str) -> None:
    """An idle connection, new or kept alive, is closed quietly (with close_notify on TLS)."""
    with serve(suite_app, transport=transport, limits=suite_limits(idle_timeout=0.3)) as served:
        with served.connect() as client:
            if after == "request":
                assert client.fetch("GET", "/hello").status == 200
            start = time.monotonic()
            assert client.recv() == b""
            elapsed = time.monotonic() - start
            assert 0.2 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s"
        served.wait_drained()


# --- graceful shutdown ---------------------------------------------------------------------


def _refused(served: Served) -> bool:
    try:
        probe = socket.create_connection(served.address[:2], timeout=1.0)
    except (ConnectionRefusedError, ConnectionResetError):
        return True  # a reset: the probe raced the listening socket's close
    probe.close()
    return False


@blocking
def _slow(request: Request) -> Response:
    """A response trickling out over about a second (the generator runs on workers): twice
    the grace period the scenario that cuts it gives, so that it cannot finish in time."""

    def body() -> Iterator[bytes]:
        for chunk in pattern_body(SLOW_SIZE, SLOW_SIZE // 10):
            time.sleep(0.1)
            yield chunk

    return Response(200, [("content-length", str(SLOW_SIZE))], body())


@TRANSPORTS
def test_graceful_shutdown_with_a_response_in_flight(serve: Serve, transport: Transport) -> None:
    with serve(_slow, transport=transport) as served:
        with served.connect() as client:
            client.request("GET", "/slow")
            head = client.read_head()
            assert head.status == 200
            served.request_stop()
            wait_until(lambda: _refused(served), 3.0, "the listening socket to close")
            assert client.read_exact(SLOW_SIZE) == pattern(0, SLOW_SIZE)
            assert client.recv() == b""  # the connection ends cleanly after the response
        wait_until(lambda: not served.running, 3.0, "run() to return")


@TRANSPORTS
def test_shutdown_closes_idle_connections_at_once(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        with served.connect() as client:
            assert client.fetch("GET", "/hello").status == 200
            start = time.monotonic()
            served.request_stop()
            assert client.recv() == b""  # closed cleanly (close_notify on TLS)
            assert time.monotonic() - start < 2.0  # not after the 3 s grace period
        wait_until(lambda: not served.running, 2.0, "run() to return")


def test_stop_without_connections(serve: Serve) -> None:
    with serve(suite_app) as served:
        assert not _refused(served)
        start = time.monotonic()
        served.stop()
        assert time.monotonic() - start < 2.0  # woken at once, not by some timeout
        assert _refused(served)


def test_shutdown_grace_cuts_what_does_not_finish(serve: Serve) -> None:
    """A response still running at the end of the grace period is cut; run() returns."""
    limits = suite_limits(shutdown_grace=0.5)
    with serve(_slow, limits=limits) as served, served.connect() as client:
        client.request("GET", "/slow")
        assert client.read_head().status == 200
        start = time.monotonic()
        served.request_stop()
        wait_until(lambda: not served.running, 5.0, "run() to return")
        assert 0.4 <= time.monotonic() - start <= 4.0
        with pytest.raises((EOFError, ConnectionError)):
            client.read_exact(SLOW_SIZE)
