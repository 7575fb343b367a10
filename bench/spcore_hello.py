"""The benchmark's hello-world app for spcore (``spcore serve --app spcore_hello:app``).

It answers every request like ``asgi_hello.app`` does for uvicorn and hypercorn: the same
status, body and content type, so the servers are compared on the same work.
"""

from __future__ import annotations

from spcore import Request, Response

BODY = b"Hello, world!"
HEADERS = [("content-type", "text/plain; charset=utf-8")]
MIB = b"x" * (1024 * 1024)


def app(request: Request) -> Response:
    """``Hello, world!`` as text/plain, whatever the path (wrk asks for /hello); 1 MiB for
    ``/mib`` (the download benchmark, ``bench/run.py --path /mib``)."""
    if request.path == "/mib":
        return Response(200, HEADERS, MIB)
    return Response(200, HEADERS, BODY)
