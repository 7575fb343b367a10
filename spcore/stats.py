"""The live counters of a server, bumped by its connections and protocols."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["STATUS_CLASSES", "TIMEOUT_KINDS", "Stats"]

#: The status classes ``Stats.responses`` counts, by ``status // 100``.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: What ``Stats.timed_out`` is told: the TLS handshake (or PROXY header), a peer that stopped
#: reading our output, a request head or a request body that stopped arriving.
TIMEOUT_KINDS = ("handshake", "send", "header", "body", "connect")


def _classes() -> list[int]:
    return [0] * 10  # index status // 100; statuses run to 999


@dataclass
class Stats:
    """Live counters, shown by the built-in app's /stats and the metrics endpoint.

    Beside the totals: ``responses`` by status class (index ``status // 100``),
    ``tls_failures`` by reason (the alert's RFC 8446 name, ``verify_untrusted``...,
    ``bad_client_hello``), ``timeouts_by_kind`` (``TIMEOUT_KINDS``);
    ``jobs_submitted - jobs_done`` jobs are out on the driver's threads.
    """

    connections_total: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    #: Outbound connections opened, and those whose connect failed or timed out.
    connections_outbound: int = 0
    connect_failures: int = 0
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    handshakes: int = 0
    tls_errors: int = 0
    errors: int = 0
    timeouts: int = 0
    jobs_submitted: int = 0
    jobs_done: int = 0
    responses: list[int] = field(default_factory=_classes)
    tls_failures: Counter[str] = field(default_factory=Counter)
    timeouts_by_kind: Counter[str] = field(default_factory=Counter)

    def tls_failed(self, reason: str) -> None:
        self.tls_errors += 1
        self.tls_failures[reason] += 1

    def timed_out(self, kind: str) -> None:
        self.timeouts += 1
        self.timeouts_by_kind[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready): responses by class name, the reasons as dicts."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        values["responses"] = {name: self.responses[i + 1] for i, name in enumerate(STATUS_CLASSES)}
        values["tls_failures"] = dict(self.tls_failures)
        values["timeouts_by_kind"] = dict(self.timeouts_by_kind)
        return values
