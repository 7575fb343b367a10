"""Many connections at once: 500 clients held open together, each doing keep-alive requests,
every response checked; then the server drains to nothing."""

from __future__ import annotations

from spcore.conformance.apps import suite_app
from spcore.conformance.clients import load
from spcore.conformance.harness import PKI, Serve, Transport, suite_limits, transports, wait_until

CONNECTIONS = 500
REQUESTS = 4


@transports("plain", "tls1.3")
def test_500_concurrent_connections(serve: Serve, pki: PKI, transport: Transport) -> None:
    context = None if transport == "plain" else pki.client_context("1.3")
    with serve(suite_app, transport=transport) as served:

        def all_held() -> None:
            wait_until(lambda: served.connections == CONNECTIONS, 10.0, "every connection")

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
        assert not result.errors, result.errors[:10]
        assert result.connected == CONNECTIONS
        assert result.responses == CONNECTIONS * REQUESTS
        served.wait_drained(timeout=10.0)
        assert served.server.stats.connections_total == CONNECTIONS


def test_connection_limit(serve: Serve) -> None:
    """At ``max_connections`` the driver stops accepting: a further client waits in the
    backlog (or is dropped and counted as refused), and is served once a slot frees."""
    limit = 4
    with serve(suite_app, limits=suite_limits(max_connections=limit)) as served:
        clients = [served.connect() for _ in range(limit)]
        try:
            for client in clients:
                assert client.fetch("GET", "/hello").status == 200
            extra = served.connect()  # the kernel completes the TCP handshake regardless
            clients.append(extra)
            extra.request("GET", "/hello")
            extra.sock.settimeout(0.5)
            try:
                data = extra.recv()
            except TimeoutError:
                queued = True
            except ConnectionResetError:
                queued = False
            else:
                assert data == b"", "a connection beyond the limit was served"
                queued = False
            assert served.connections == limit
            if not queued:
                assert served.server.stats.connections_refused >= 1
            clients.pop(0).close()
            if queued:
                extra.sock.settimeout(10.0)
                assert extra.read_response().body == b"Hello, world!"
            else:
                wait_until(lambda: served.connections < limit, 5.0, "a free slot")
                with served.connect() as again:
                    assert again.fetch("GET", "/hello").body == b"Hello, world!"
        finally:
            for client in clients:
                client.close()
