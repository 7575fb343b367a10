"""Socket addresses as people read them, and as the protocol layers expect them.

The socket module gives an AF_INET/AF_INET6 address as a tuple whose first two items are the
host and the port, and an AF_UNIX one as a string: the path, or ``''`` for an unnamed peer
(what a client that never bound its socket is), or on Linux a ``b"\\0..."`` abstract name.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_address", "host_port", "inet_address"]


def host_port(host: str, port: int) -> str:
    """``127.0.0.1:8443``, ``[::1]:8443``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_address(address: Any) -> str:
    """``127.0.0.1:8443``, ``[::1]:8443``, ``unix:/run/app.sock``, ``unix:@abstract``,
    ``unix:(unnamed)``: one form for banners, errors and logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        return host_port(str(address[0]), int(address[1]))
    if isinstance(address, bytes):
        address = address.decode(errors="backslashreplace")
    if isinstance(address, str):
        if not address:
            return "unix:(unnamed)"
        if address.startswith("\0"):
            return "unix:@" + address[1:]  # Linux's abstract namespace, as ss(8) shows it
        return "unix:" + address
    return repr(address)


def inet_address(address: Any) -> tuple[Any, ...] | None:
    """``address`` if it is an Internet (host, port, ...) tuple, else None.

    A connection's ``peer`` and ``local`` are what the HTTP request's ``client``/``server``
    and the logs read as (host, port); a Unix-socket connection has none (its PROXY header,
    when there is one, still gives the real client)."""
    return address if isinstance(address, tuple) else None
