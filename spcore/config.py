"""Limits and timeouts: every policy a driver would otherwise have to invent, decided once."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    """Bounds on what one connection may cost. Times are in seconds.

    The defaults follow what production servers settled on: CPython/nginx's 60 s TLS
    handshake timeout, uvicorn's 5 s keep-alive, CPython's 256/512 KiB flow-control marks.
    """

    #: Accepted connections held at once; above it the server stops accepting. Outbound
    #: connections (``Server.open_connection``: a tunnel's backends) are not counted: each
    #: is opened by the application or by an accepted connection, which is.
    max_connections: int = 10_000
    #: An outbound connection must be connected within this (stunnel's TIMEOUTconnect).
    connect_timeout: float = 10.0
    #: The TLS handshake (and any PROXY header) must finish within this.
    handshake_timeout: float = 60.0
    #: A request head must be complete this long after its first byte (slowloris).
    header_timeout: float = 30.0
    #: An idle keep-alive connection, or a new one that sends nothing, is closed after this.
    idle_timeout: float = 5.0
    #: A request body that makes no progress for this long gets 408.
    body_timeout: float = 60.0
    #: A peer that reads none of our pending output for this long is dropped.
    send_timeout: float = 60.0
    #: After our close (close_notify sent, write side shut) we read and discard for at most
    #: this long, so a client still sending does not turn our last response into a reset.
    close_timeout: float = 2.0
    #: Graceful shutdown: in-flight work gets this long before connections are cut.
    shutdown_grace: float = 10.0
    max_header_size: int = 16 * KiB
    max_url_length: int = 8 * KiB
    max_body_size: int = 64 * MiB
    #: Output pending (ours plus the TLS engine's) above which we stop producing and reading.
    write_high_water: int = 256 * KiB
    #: Output below which a paused producer resumes.
    write_low_water: int = 64 * KiB
    #: A stream session with more than this still unsent when another message is sent to it
    #: is a slow consumer and is disconnected (a broadcast must not grow memory without end).
    max_session_backlog: int = 4 * MiB
    #: Worker threads a driver runs blocking jobs on.
    worker_threads: int = 16
    #: The listen() backlog drivers use.
    listen_backlog: int = 1024
    #: After an accept failed for lack of descriptors or memory, accepting stops this long.
    accept_pause: float = 0.1

    def __post_init__(self) -> None:
        if self.write_low_water > self.write_high_water:
            raise ValueError("write_low_water must not exceed write_high_water")
        for name in (
            "connect_timeout",
            "handshake_timeout",
            "header_timeout",
            "idle_timeout",
            "body_timeout",
            "send_timeout",
            "close_timeout",
            "shutdown_grace",
            "accept_pause",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
