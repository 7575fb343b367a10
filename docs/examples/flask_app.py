"""A Flask application, served as it is: ``spcore serve --app flask_app:app`` (docs/guide.md).

spcore sees a WSGI application (a callable of environ and start_response) and runs each call
on its worker threads (``--threads``). The upload is read as it arrives, so a body of any
size costs a few hundred KiB of memory; the count is sent as it is produced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/")
def index() -> dict[str, object]:
    return {"hello": "from Flask", "scheme": request.scheme, "client": request.remote_addr}


@app.post("/upload")
def upload() -> str:
    digest, size = hashlib.sha256(), 0
    while chunk := request.stream.read(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return f"{digest.hexdigest()} {size}\n"


@app.get("/count")
def count() -> Response:
    def numbers() -> Iterator[str]:
        for number in range(1, 6):
            yield f"{number}\n"

    return Response(numbers(), mimetype="text/plain")
