"""``--metrics-port``: Prometheus text on a listener of its own (parsed with prometheus_client's
parser), ``/healthz`` answered through the loop, and one port per worker."""

from __future__ import annotations

import http.client
import re
import socket
import ssl

import pytest
from servekit import Served, get, served

parser = pytest.importorskip("prometheus_client.parser")

METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")


def _admin_port(server: Served) -> int:
    match = METRICS.search(server.rest)
    assert match, server.line
    return int(match["port"])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/plain; version=")
        text = response.read().decode()
    finally:
        conn.close()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def health(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_metrics_count_connections_responses_bytes_and_tls_failures(env: dict[str, str]) -> None:
    args = ["--port", "0", "--metrics-port", "0", "--access-log", "-"]
    with served(args, env) as server:
        port = _admin_port(server)
        endpoint = server.endpoint("https")
        assert health(port) == (200, b"ok\n")
        untrusting = ssl.create_default_context()  # the development CA is not in it
        for _ in range(2):
            with (
                socket.create_connection((endpoint.host, endpoint.port), timeout=10) as raw,
                pytest.raises(ssl.SSLCertVerificationError),
            ):
                untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
        trusting = ssl.create_default_context(cafile=env["SPCORE_CACHE_DIR"] + "/dev-cert.pem")
        assert get(endpoint, "/", trusting)[0] == 200
        assert get(endpoint, "/missing", trusting)[0] == 404
        w = (("worker", "0"),)
        samples = scrape(port)
        assert samples[("spcore_connections_accepted_total", w)] >= 4
        assert samples[("spcore_requests_total", w)] == 2
        assert samples[("spcore_responses_total", (("class", "2xx"), *w))] == 1
        assert samples[("spcore_responses_total", (("class", "4xx"), *w))] == 1
        assert samples[("spcore_tls_handshakes_total", w)] == 2
        assert samples[("spcore_tls_failures_total", (("reason", "unknown_ca"), *w))] == 2
        assert samples[("spcore_timeouts_total", (("kind", "header"), *w))] == 0
        assert samples[("spcore_sent_bytes_total", w)] > 0
        assert samples[("spcore_received_bytes_total", w)] > 0
        assert samples[("spcore_jobs_queued", w)] == samples[("spcore_jobs_running", w)] == 0
        assert samples[("spcore_access_log_dropped_total", w)] == 0
        # The public listener does not serve them; the admin one only serves them.
        assert get(endpoint, "/metrics", trusting)[0] == 404
        assert server.stop() == 0


def two_free_ports() -> int:
    """A port that is free, and the one after it too (bounded tries)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no two free ports in a row")


def test_each_worker_has_its_metrics_port(env: dict[str, str]) -> None:
    base = two_free_ports()
    args = ["--port", "0", "--no-tls", "--workers", "2", "--metrics-port", str(base)]
    with served(args, env) as server:
        endpoint = server.endpoint("http")
        for _ in range(20):
            assert get(endpoint, "/")[0] == 200

        def requests(index: int) -> float:
            from netkit import wait_for

            wait_for(lambda: health(base + index)[0] == 200, f"worker {index}'s metrics", 20)
            return scrape(base + index)[("spcore_requests_total", (("worker", str(index)),))]

        counts = [requests(0), requests(1)]
        assert sum(counts) == 20
        assert server.stop() == 0


def test_metrics_port_0_with_workers_is_a_one_line_error(env: dict[str, str]) -> None:
    from servekit import run_spcore

    done = run_spcore("serve", "--workers", "2", "--metrics-port", "0", env=env)
    assert done.returncode == 2
    assert done.stderr == (
        "spcore: error: --metrics-port 0 with --workers: give a port; worker N listens on PORT+N\n"
    )
