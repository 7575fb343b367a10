"""The live counters of a server, bumped by its connections and protocols."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Stats"]


@dataclass
class Stats:
    """Live counters, shown by the built-in app's /stats."""

    connections_total: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    handshakes: int = 0
    tls_errors: int = 0
    errors: int = 0
    timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
