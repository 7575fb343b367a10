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
#: Header lines already checked and written, by (name, value): the same few come back on
#: every response (cleared when full).
_LINES: dict[tuple[bytes, bytes], bytes] = {}
_MAX_LINES: Final = 1024
_CRLF, _LAST_CHUNK = b"\r\n", b"0\r\n\r\n"


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
        lines = _LINES
        out = b"".join([line, *[lines.get(pair) or _line(pair) for pair in head.headers], _CRLF])
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


def _line(pair: tuple[bytes, bytes]) -> bytes:
    """``name: value`` CRLF, once checked: the name a token, no CR, LF or NUL in the value."""
    name, value = pair
    if _TOKEN.fullmatch(name) is None:
        raise LocalProtocolError(f"{name!r} is not a valid header name")
    if b"\r" in value or b"\n" in value or b"\0" in value:
        raise LocalProtocolError(f"the value of {name!r} holds CR, LF or NUL")
    line = b"%s: %s\r\n" % pair
    if len(_LINES) >= _MAX_LINES:
        _LINES.clear()
    _LINES[pair] = line
    return line
