"""Our HTTP/1.1 response writer: a ``ResponseHead`` and body pieces to bytes.

For codecs whose library only parses (httptools). The exchange has already decided the
headers and the framing; the writer keeps the bytes honest whatever it is given: it refuses a
header name that is not a token and CR, LF or NUL anywhere in a name or value (response
splitting), more or fewer body bytes than the Content-Length, body bytes where the framing has
none (HEAD, 204, 304), and it writes chunked framing itself.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from ..errors import LocalProtocolError
from .codec import CHUNKED, FIXED, NO_BODY, UNTIL_CLOSE, ResponseHead

__all__ = ["REASONS", "ResponseWriter"]

#: The reason phrase of every status Python knows (the others get none).
REASONS: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_STATUS_LINES: Final = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, phrase) for status, phrase in REASONS.items()
}
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
#: Header names already checked (the same few names come back on every response).
_GOOD_NAMES: set[bytes] = set()
_MAX_GOOD_NAMES: Final = 256
_SEP, _CRLF, _LAST_CHUNK = b": ", b"\r\n", b"0\r\n\r\n"


class ResponseWriter:
    """The response side of one HTTP/1.1 connection, one response at a time."""

    __slots__ = ("_framing", "_left")

    def __init__(self) -> None:
        self._framing = NO_BODY
        self._left = 0  # FIXED: body bytes still due

    def response(self, head: ResponseHead, body: bytes, end: bool) -> bytes:
        status = head.status
        line = _STATUS_LINES.get(status)
        if line is None:
            if not 100 <= status <= 999:
                raise LocalProtocolError(f"status {status} is not a three-digit code")
            line = b"HTTP/1.1 %d \r\n" % status
        headers = head.headers
        parts = [line]
        for name, value in headers:
            if name not in _GOOD_NAMES:
                _check_name(name)
            parts += (name, _SEP, value, _CRLF)
        parts.append(_CRLF)
        out = b"".join(parts)
        lines = len(headers) + 2
        if out.count(b"\n") != lines or out.count(b"\r") != lines or b"\0" in out:
            raise LocalProtocolError("a response header holds CR, LF or NUL")
        self._framing = head.framing
        self._left = head.length
        if body or end:
            out += self.data(body, end)
        return out

    def data(self, body: bytes, end: bool) -> bytes:
        framing = self._framing
        if framing == FIXED:
            left = self._left - len(body)
            if left < 0:
                raise LocalProtocolError("too much data for the declared Content-Length")
            if end and left:
                raise LocalProtocolError("too little data for the declared Content-Length")
            self._left = left
            return body
        if framing == CHUNKED:
            out = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            return out + _LAST_CHUNK if end else out
        if framing == UNTIL_CLOSE:
            return body
        if body:
            raise LocalProtocolError("this response has no body (HEAD, 204 or 304)")
        return b""

    def interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        if not 100 <= status <= 199:
            raise LocalProtocolError(f"{status} is not an informational status")
        return self.response(ResponseHead(status, headers, NO_BODY), b"", False)


def _check_name(name: bytes) -> None:
    if _TOKEN.fullmatch(name) is None:
        raise LocalProtocolError(f"{name!r} is not a valid header name")
    if len(_GOOD_NAMES) >= _MAX_GOOD_NAMES:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(name)
