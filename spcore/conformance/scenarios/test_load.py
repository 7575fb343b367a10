"""Many connections at once: 500 clients held open together, each doing keep-alive requests,
every response checked; then the server drains to nothing."""

from __future__ import annotations

import time

import pytest

from spcore.conformance.apps import suite_app
from spcore.conformance.clients import load
from spcore.conformance.harness import PKI, Serve, Transport, suite_limits, wait_until

CONNECTIONS = 500
REQUESTS = 4


@pytest.mark.parametrize("transport", ["plain", "tls1.3"])
def test_500_concurrent_connections(serve: Serve, pki: PKI, transport: Transport) -> None:
    context = None if transport == "plain" else pki.client_context("1.3")
    # The whole run must fit in the idle timeout of the first connections.
    with serve(suite_app, transport=transport, limits=suite_limits(idle_timeout=30.0)) as served:

        def all_held() -> None:
            wait_until(lambda: served.connections == CONNECTIONS, 10.0, "every connection")

        start = time.monotonic()
        result = load(
            served.address,
            CONNECTIONS,
            REQUESTS,
            target=lambda i, j: f"/c/{i}/{j}",
            expected=lambda i, j: f"GET /c/{i}/{j}".encode(),
            context=context,
            when_connected=all_held,
            timeout=30.0,
        )
        elapsed = time.monotonic() - start
        assert not result.errors, result.errors[:10]
        assert result.connected == CONNECTIONS
        assert result.responses == CONNECTIONS * REQUESTS
        served.wait_drained(timeout=10.0)
        assert served.server.stats.connections_total == CONNECTIONS
        assert elapsed < 20.0, f"{CONNECTIONS} connections took {elapsed:.1f} s"
