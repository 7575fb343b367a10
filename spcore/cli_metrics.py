"""The admin listener: ``--metrics-port`` (and ``--metrics-host``, default 127.0.0.1).

A separate, plain-HTTP listener -- never the public one -- serving:

* ``/metrics``: the server's counters (``spcore.stats``) in Prometheus' text exposition
  format, made by ``prometheus_client`` from a collector that reads them at scrape time,
  each with the label ``worker`` (the worker's index; 0 without ``--workers``);
* ``/healthz``: 200 once the driver's loop thread has run a call handed to it (so a loop
  stuck in a blocking app fails it, where a thread answering on its own would not), 503
  while shutting down or when the loop did not answer within ``HEALTH_WAIT``.

It runs in a thread of its own (the standard library's ``ThreadingHTTPServer``), off the loop:
a scrape costs the loop nothing, and scraping connections do not count in the counters they
read. With workers, worker N listens on ``--metrics-port`` + N: a scrape of a
``SO_REUSEPORT`` address would reach one worker at random.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from .server import Server
from .stats import STATUS_CLASSES, TIMEOUT_KINDS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["HEALTH_WAIT", "MetricsServer", "collect"]

#: How long /healthz waits for the loop thread.
HEALTH_WAIT: Final = 2.0


def collect(server: Server, worker: str, dropped: Callable[[], int] | None) -> Iterator[Metric]:
    """The metric families of ``server``'s counters; ``dropped`` counts access log lines lost."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    stats = server.stats
    labels = ["worker"]

    def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
        family = CounterMetricFamily(f"spcore_{name}", doc, labels=labels)
        family.add_metric([worker], value)
        return family

    def gauge(name: str, doc: str, value: int) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"spcore_{name}", doc, labels=labels)
        family.add_metric([worker], value)
        return family

    def by(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(f"spcore_{name}", doc, labels=[*labels, label])
        for key, value in sorted(values.items()):
            family.add_metric([worker, key], value)
        return family

    responses = list(stats.responses)
    out = stats.jobs_submitted - stats.jobs_done
    running = min(out, server.worker_threads)
    yield gauge("connections_open", "Connections open now.", len(server.connections))
    yield counter("connections_accepted", "Connections accepted.", stats.connections_total)
    yield counter(
        "connections_refused",
        "Connections dropped at once (failed accepts, broken at once, during shutdown).",
        stats.connections_refused,
    )
    yield counter("requests", "Requests whose head was read.", stats.requests)
    yield by(
        "responses",
        "Responses ended (or cut short), by status class.",
        "class",
        {name: responses[i + 1] for i, name in enumerate(STATUS_CLASSES)},
    )
    yield counter("received_bytes", "Bytes received from clients.", stats.bytes_received)
    yield counter("sent_bytes", "Bytes sent to clients.", stats.bytes_sent)
    yield counter("tls_handshakes", "TLS handshakes completed.", stats.handshakes)
    # dict(): a copy made in one step, while the loop thread may be adding a key.
    yield by("tls_failures", "TLS failures, by reason.", "reason", dict(stats.tls_failures))
    timeouts = dict.fromkeys(TIMEOUT_KINDS, 0) | dict(stats.timeouts_by_kind)
    yield by("timeouts", "Timeouts, by kind.", "kind", timeouts)
    yield counter("errors", "Protocol and application errors.", stats.errors)
    yield gauge("jobs_queued", "Blocking jobs waiting for a worker thread.", out - running)
    yield gauge("jobs_running", "Blocking jobs on the worker threads.", running)
    if dropped is not None:
        yield counter(
            "access_log_dropped", "Access log lines dropped (the writer fell behind).", dropped()
        )


class MetricsServer:
    """The admin listener, bound when made (an ``OSError`` is the caller's to report)."""

    def __init__(
        self,
        host: str,
        port: int,
        server: Server,
        worker: str,
        dropped: Callable[[], int] | None = None,
    ) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.registry import CollectorRegistry

        class Collector:
            def collect(self) -> Iterator[Metric]:
                return collect(server, worker, dropped)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector())

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "spcore-admin"

            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    status, text = _health(server)
                    self._answer(status, text.encode(), "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes are not the access log's business

        http_server = _V6Server if ":" in host else http.server.ThreadingHTTPServer
        self._http = http_server((host, port), Handler)
        self._http.daemon_threads = True
        self.address: tuple[str, int] = self._http.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="spcore-metrics", daemon=True
        )

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _health(server: Server) -> tuple[int, str]:
    if server.shutting_down:
        return 503, "shutting down\n"
    answered = threading.Event()
    if not server.call_soon_threadsafe(answered.set) or not answered.wait(HEALTH_WAIT):
        return 503, f"the event loop did not answer within {HEALTH_WAIT:g} s\n"
    return 200, "ok\n"
