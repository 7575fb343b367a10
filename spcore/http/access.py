"""Access log records: one per response, made by the exchange, written by someone else.

The core makes an ``AccessRecord`` when a response has ended (or was cut short) and hands it
to the sink its ``HTTPProtocol`` was given; it never formats, writes or times anything itself
(the times come from the driver's clock, the wall time from the offset the server learnt).
Formatting is here too, as pure functions, so that whoever writes the lines (the command
line's writer thread, ``spcore.cli_access``) formats them off the loop thread:

* ``common``: the NCSA Common Log Format, ``host - - [date] "request" status bytes``;
* ``combined``: Common plus ``"referer" "user-agent"`` (Apache's and nginx's default);
* ``json``: one object per line with the method, target, status, bytes, duration, peer
  address, TLS version and SNI.

Dates are UTC: the log is read by machines as often as by people, and a server's time zone
is its host's business, not its logs'.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..addresses import host_port

if TYPE_CHECKING:
    from ..layer import Transport
    from .codec import RequestHead

__all__ = ["FORMATS", "AccessRecord", "AccessSink", "response_ended"]


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """What one response's log line says."""

    method: str
    target: str
    #: "1.1" or "1.0"; "-" for a request the codec refused before its version was known.
    http_version: str
    status: int
    #: Response body bytes handed to the connection (not counting the head).
    bytes: int
    #: Unix time the request's head had arrived.
    time: float
    #: Seconds from the request head to the end of the response.
    duration: float
    #: The client's (host, port): the PROXY header's source when the listener takes one;
    #: None on a Unix socket without one.
    peer: tuple[str, int] | None
    tls_version: str | None
    sni: str | None
    referer: str | None
    user_agent: str | None
    #: False when the response was cut short (the connection broke or was aborted).
    complete: bool = True


#: Where the records go: called on the loop thread, so it must not block.
AccessSink = Callable[[AccessRecord], None]


_MONTHS: Final = (
    *("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)


def _clf_date(unix: float) -> str:
    """``10/Oct/2000:13:55:36 +0000``: English month names whatever the locale."""
    d = datetime.datetime.fromtimestamp(unix, datetime.timezone.utc)
    return f"{d.day:02d}/{_MONTHS[d.month - 1]}/{d.year}:{d:%H:%M:%S} +0000"


def _quoted(text: str | None) -> str:
    """A field between double quotes: quotes, backslashes and controls escaped as nginx does
    (``\\xHH``), so that a client cannot forge a line or a field."""
    if text is None:
        return '"-"'
    out = []
    for char in text:
        if char in '"\\' or not char.isprintable():
            out.append(f"\\x{ord(char):02X}")  # (latin-1 decoded: every char is < 256)
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def common(record: AccessRecord) -> str:
    host = record.peer[0] if record.peer else "-"
    request = f"{record.method} {record.target} HTTP/{record.http_version}"
    if record.method == "-":
        request = "-"
    size = str(record.bytes) if record.bytes else "-"
    return f"{host} - - [{_clf_date(record.time)}] {_quoted(request)} {record.status} {size}"


def combined(record: AccessRecord) -> str:
    return f"{common(record)} {_quoted(record.referer)} {_quoted(record.user_agent)}"


def json_line(record: AccessRecord) -> str:
    return json.dumps(
        {
            "time": record.time,
            "method": record.method,
            "target": record.target,
            "http_version": record.http_version,
            "status": record.status,
            "bytes": record.bytes,
            "duration": round(record.duration, 6),
            "peer": host_port(*record.peer) if record.peer else None,
            "tls_version": record.tls_version,
            "sni": record.sni,
            "referer": record.referer,
            "user_agent": record.user_agent,
            "complete": record.complete,
        },
        separators=(",", ":"),
    )


#: ``--access-log-format`` names.
FORMATS: Final[dict[str, Callable[[AccessRecord], str]]] = {
    "common": common,
    "combined": combined,
    "json": json_line,
}


def response_ended(
    transport: Transport,
    sink: AccessSink | None,
    head: RequestHead | None,
    status: int,
    sent: int,
    started: float,
    now: float,
    complete: bool = True,
) -> None:
    """A response to ``head`` (None: a request refused before it was parsed) has ended, or
    was cut short: count it by status class, and hand its record to ``sink`` when an access
    log is kept (the record is made only then)."""
    transport.stats.responses[status // 100] += 1
    if sink is None:
        return
    referer = user_agent = None
    if head is not None:
        for name, value in head.headers:
            if name == b"referer":
                referer = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
    peer = transport.peer
    tls = transport.tls_info
    hello = transport.client_hello
    sink(
        AccessRecord(
            method=head.method.decode("latin-1") if head is not None else "-",
            target=head.target.decode("latin-1") if head is not None else "-",
            http_version=head.http_version.decode("latin-1") if head is not None else "-",
            status=status,
            bytes=sent,
            time=transport.wall_time(started),
            duration=max(0.0, now - started),
            peer=(str(peer[0]), int(peer[1])) if peer else None,
            tls_version=tls.version if tls is not None else None,
            sni=hello.server_name if hello is not None else None,
            referer=referer,
            user_agent=user_agent,
            complete=complete,
        )
    )
