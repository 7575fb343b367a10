"""The HTTP application most scenarios serve: small endpoints whose answers a client can check.

* ``/hello``: ``Hello, world!``.
* ``/pattern?n=N``: ``N`` bytes of ``clients.pattern`` in 64 KiB chunks, with a length;
  ``/chunked?n=N`` the same without one (so chunked).
* ``/sha256`` (a body): the body's SHA-256 and length, computed as it streams in.
* ``/echo`` (a body): the body straight back as it arrives, chunked unless it had a length.
* ``/info``: JSON with the request line and what the TLS handshake settled.
* anything else: ``METHOD target`` as the body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from urllib.parse import parse_qs

from spcore.http.messages import Pipe, Request, Response

from .clients import pattern
from .harness import Served

__all__ = ["CHUNK", "beyond_the_kernel", "pattern_body", "still_serving", "suite_app"]

#: Chunk size of generated bodies.
CHUNK = 64 * 1024


def pattern_body(n: int, chunk: int = CHUNK) -> Iterator[bytes]:
    for offset in range(0, n, chunk):
        yield pattern(offset, min(chunk, n - offset))


class _Hasher:
    """A body reader that hashes the body as it streams in (never holding it)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    def data(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)

    def end(self) -> Response:
        return Response(
            200, [("content-type", "text/plain")], f"{self._hash.hexdigest()} {self._size}"
        )


def _size(request: Request) -> int:
    values = parse_qs(request.query).get("n", ["0"])
    return int(values[0])


def suite_app(request: Request) -> Response | None:
    path = request.path
    if path == "/hello":
        return Response(200, [("content-type", "text/plain")], b"Hello, world!")
    if path == "/pattern":
        n = _size(request)
        return Response(200, [("content-length", str(n))], pattern_body(n))
    if path == "/chunked":
        return Response(200, [], pattern_body(_size(request)))
    if path == "/sha256":
        request.read_body(_Hasher())
        return None
    if path == "/echo":
        pipe = Pipe()
        request.read_body(pipe)
        length = request.header("content-length")
        return Response(200, [] if length is None else [("content-length", length)], pipe)
    if path == "/info":
        tls = request.tls
        info = {
            "method": request.method,
            "target": request.target,
            "http_version": request.http_version,
            "tls": None
            if tls is None
            else {
                "version": tls.version,
                "alpn": tls.alpn_protocol,
                "server_name": tls.server_name,
                "client_certificate": tls.peer_certificate is not None,
            },
        }
        return Response(200, [("content-type", "application/json")], json.dumps(info))
    return Response(200, [("content-type", "text/plain")], f"{request.method} {request.target}")


def still_serving(served: Served) -> None:
    """After a rough scenario: every connection drains, and a new one is served."""
    served.wait_drained()
    with served.connect() as client:
        assert client.fetch("GET", "/hello").body == b"Hello, world!"
    served.wait_drained()


def beyond_the_kernel(chunk: int) -> int:
    """The size of a stream several times what the kernel's socket buffers can absorb (a
    whole number of ``chunk``): a client that does not read holds the server back before it
    ends."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
            kernel_max = int(wmem.read().split()[2])
    except (OSError, ValueError, IndexError):
        kernel_max = 4 * 1024 * 1024
    return max(16 * 1024 * 1024, 4 * kernel_max) // chunk * chunk
