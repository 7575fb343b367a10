"""The h11 codec: h11 parses requests; this adapter makes it as strict as llhttp.

h11 is the reference: pure Python, always installed, a model of a sans-IO state machine. Where
it is more tolerant than RFC 9112 asks of a server (or than llhttp is), the adapter looks at
the raw bytes itself, so that both codecs answer every request alike
(``tests/test_http_corpus.py``):

* obsolete line folding (h11 merges the lines; RFC 9112 §5.2 lets a server reject it), bare
  LF line ends and bare CR (RFC 9112 §2.2), control characters in field values (RFC 9110
  §5.5; h11 only refuses NUL and whitespace other than SP/HTAB): 400;
* a Content-Length repeated, or given as a list (h11 keeps one of equal values; RFC 9110
  §8.6 lets a server reject them): 400;
* chunk size lines (h11 accepts any bytes after ``;``, and 20 hex digits): sizes below 2**64,
  extensions in RFC 9112 §7.1.1's grammar without whitespace, as llhttp takes them;
* empty lines before a request line are skipped (RFC 9112 §2.2; h11 answers 400);
* a request line longer than the URL limit is answered 414 as it grows (h11 would wait for
  the whole head to outgrow its buffer, or parse it when it came in one piece);
* several SP between the parts of the request line count as one, as llhttp counts them.

Everything else is h11's own parsing, and ``spcore.http.rules`` makes the decisions of meaning.
See https://github.com/python-hyper/h11/blob/master/h11/_abnf.py for h11's grammar.

Responses are written by ``spcore.http.writer``, as for httptools: the exchange has decided
every header and the framing already, and h11's writer would check them again at half the
cost of a whole request cycle (h11's ``send`` of a response, its body and its end costs
about as much as parsing the request). So both codecs send the same bytes, and h11 keeps
reading: each request is parsed by a fresh ``h11.Connection`` (the state
``start_next_cycle`` would restore), given whatever followed the last one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import h11

from .codec import (
    CLOSED,
    END_OF_REQUEST,
    NEED_DATA,
    PAUSED,
    Data,
    Event,
    RequestError,
    RequestHead,
)
from .rules import check_head, transfer_coding_error
from .writer import ResponseWriter

if TYPE_CHECKING:
    from ..config import Limits

__all__ = ["H11Codec"]

#: Slack for the method and version around the target when measuring a request line.
REQUEST_LINE_SLACK: Final = 64
#: A chunk size line (with its extensions) or trailer line longer than this is refused.
MAX_CHUNK_LINE: Final = 4096

_HEAD_END = b"\r\n\r\n"
_HEAD_PREFIX = b"HEAD "
_SPACES = re.compile(b" {2,}")
_SIMPLE_REQUEST = re.compile(rb"[!-~]+ +[!-~]+\r\n")
#: The control characters but HTAB (h11 lets some through in field values).
_CONTROLS = bytes(range(9)) + bytes(range(10, 32)) + b"\x7f"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:;%s*(?:=(?:%s*|%s))?)*\r\n" % (_TOKEN, _TOKEN, _QUOTED)
)
#: Where h11 starts quoting the peer's bytes in an error message (to the end of it).
_QUOTED_BYTES = re.compile(r"""(: )?(bytearray\(|b'|b").*""", re.DOTALL)
_HEAD_TOO_LARGE = "the request head is larger than this server accepts"
_CUT_SHORT = "the connection closed in the middle of a request"
_URL_TOO_LONG = "the request target is longer than this server accepts"
_MALFORMED_HEAD = (
    "the request head has a bare CR or LF, a control character or an obsolete line folding"
)


class H11Codec(ResponseWriter):
    """One server connection's HTTP/1.1 through h11 (see ``spcore.http.codec``)."""

    name = "h11"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_size)
        super().__init__()
        self._in_head = True  # waiting for a request head
        self._raw = bytearray()  # the bytes of this head so far (bounded)
        self._raw_room = max(limits.max_header_size, limits.max_url_length + REQUEST_LINE_SLACK)
        self._line_open = True  # the request line has not ended yet
        self._method: bytes | None = None  # the parsed head's
        self._idle = True  # nothing fed since the cycle began: h11 has nothing to tell
        self._fed = 0  # bytes given to h11 since the cycle began
        self._consumed: int | None = None  # how many of them the request takes, when known
        self._chunks: _ChunkLines | None = None
        self._error: RequestError | None = None
        self._dead = False  # an error was reported: nothing more is parsed

    # -- input ------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return self._in_head and bool(self._raw)

    @property
    def buffered(self) -> int:
        return len(self._h11.trailing_data[0])

    def receive_data(self, data: bytes) -> None:
        if self._dead:
            return
        if not data:
            if self._in_head and self._line_open and self._raw:  # h11 has not seen it
                self._fail_at(RequestError(400, _CUT_SHORT, self._head_method))
                return
        elif self._in_head:
            data = self._head_bytes(data)
            if not data:
                return  # held back, skipped (empty lines first) or refused
        elif self._chunks is not None:
            error = self._chunks.feed(data)
            if error is not None:
                self._fail_at(error)
                return
        self._idle = False
        self._fed += len(data)
        self._h11.receive_data(data)

    def next_event(self) -> Event:
        if self._idle:
            return NEED_DATA  # (h11 would say so too, at a cost)
        if self._dead:
            error, self._error = self._error, None
            return PAUSED if error is None else error
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            self._dead = True
            return self._remote_error(exc)
        kind = type(event)
        if kind is h11.Data:
            return Data(event.data)  # type: ignore[union-attr]
        if kind is h11.Request:
            return self._head(event)  # type: ignore[arg-type]
        if kind is h11.EndOfMessage:
            self._chunks = None
            return END_OF_REQUEST
        if event is h11.NEED_DATA:
            return NEED_DATA
        if kind is h11.ConnectionClosed:
            return CLOSED
        return PAUSED

    def start_next_cycle(self) -> None:
        # What h11 holds beyond the request: known when its length was, else asked for.
        known = self._consumed is not None and self._fed == self._consumed
        pending = b"" if known else self._h11.trailing_data[0]
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._limits.max_header_size
        )
        self._in_head = True
        self._raw = bytearray()
        self._line_open = True
        self._method = None
        self._idle = True
        self._fed = 0
        self._consumed = None
        if pending:
            self.receive_data(pending)  # (empty lines before a request line are skipped here)

    def _head_bytes(self, data: bytes) -> bytes:
        """Account for head bytes: skip leading empty lines, keep a bounded copy, answer 414
        as soon as the request line outgrows the URL limit, hold the request line back until
        it is whole. Returns what h11 should get now."""
        raw = self._raw
        if not raw:
            data = data.lstrip(b"\r\n")
            if not data:
                return b""
        held = len(raw) if self._line_open else 0  # request-line bytes h11 has not seen
        room = self._raw_room + len(_HEAD_END) - len(raw)
        if room > 0:
            raw += data[:room]
        if not self._line_open:
            return data
        end = raw.find(b"\n")
        if (len(raw) if end < 0 else end) > self._limits.max_url_length + REQUEST_LINE_SLACK:
            self._fail_at(RequestError(414, _URL_TOO_LONG, self._head_method))
            return b""
        if end < 0:
            return b""
        self._line_open = False
        data = bytes(raw[:held]) + data if held else data
        if raw.find(b"  ", 0, end) >= 0:
            # Runs of SP between the request line's parts: llhttp takes them (RFC 9112 §3
            # allows it), h11 does not; both codecs see them as one.
            data = _SPACES.sub(b" ", data[:end]) + data[end:]
        return data

    @property
    def _head_method(self) -> bytes | None:
        if self._method is not None:
            return self._method
        return b"HEAD" if self._raw.startswith(_HEAD_PREFIX) else None

    def _head(self, event: h11.Request) -> RequestHead | RequestError:
        raw = self._raw
        end = raw.find(_HEAD_END)
        head = bytes(raw[: end + len(_HEAD_END)] if end >= 0 else raw)
        self._in_head = False
        self._raw = bytearray()
        method = self._method = event.method
        if _malformed(head):
            return self._fail(RequestError(400, _MALFORMED_HEAD, method))
        fields = event.headers  # (a Sequence: iterating it would end in an IndexError)
        headers = [fields[i] for i in range(len(fields))]
        limits = self._limits
        result = check_head(method, event.target, event.http_version, headers, len(head), limits)
        if isinstance(result, RequestError):
            return self._fail(result)
        if result.content_length is not None:
            values = _raw_values(head, b"content-length")
            if len(values) > 1 or (values and b"," in values[0]):
                error = RequestError(400, "the request has an invalid Content-Length", method)
                return self._fail(error)
        self._consumed = len(head) + (result.content_length or 0)
        if result.chunked:
            self._consumed = None
            self._chunks = _ChunkLines()
            chunk_error = self._chunks.feed(self._h11.trailing_data[0])
            if chunk_error is not None:
                return self._fail(chunk_error._replace(method=method))
        return result

    def _fail(self, error: RequestError) -> RequestError:
        self._dead = True
        return error

    def _fail_at(self, error: RequestError) -> None:
        """An error found in the raw bytes: the next event reports it; nothing more is read."""
        self._error = error if error.method else error._replace(method=self._head_method)
        self._dead = True
        self._idle = False

    def _remote_error(self, exc: h11.RemoteProtocolError) -> RequestError:
        status = exc.error_status_hint
        method = self._head_method
        if status == 501:  # h11 refuses every Transfer-Encoding but a lone "chunked"
            return self._transfer_coding_error()._replace(method=method)
        if status == 431:
            return RequestError(431, _HEAD_TOO_LARGE, method)
        if _SIMPLE_REQUEST.match(self._raw) is not None:  # llhttp reads it as HTTP/0.9
            return RequestError(505, "HTTP/0.9 is not supported", method)
        reason = _QUOTED_BYTES.sub("", str(exc)).rstrip() or "malformed request"
        return RequestError(status, reason, method)

    def _transfer_coding_error(self) -> RequestError:
        """The rules' answer to the Transfer-Encoding h11 refused (it says 501 to them all)."""
        raw = bytes(self._raw)
        line = raw.split(b"\r\n", 1)[0]
        if _raw_values(raw, b"content-length"):
            return RequestError(400, "the request has both Content-Length and Transfer-Encoding")
        if not line.endswith(b" HTTP/1.1"):
            return RequestError(400, "an HTTP/1.0 request cannot have Transfer-Encoding")
        codings = [
            token.strip(b" \t").lower()
            for value in _raw_values(raw, b"transfer-encoding")
            for token in value.split(b",")
        ]
        error = transfer_coding_error(codings)
        return error or RequestError(400, "the request's Transfer-Encoding is malformed")

    # -- output: ResponseWriter's response(), data(), interim() ----------------------------------

    def take_rest(self) -> bytes:
        self._dead = True
        return self._h11.trailing_data[0]


class _ChunkLines:
    """Follows a chunked body's framing beside h11 and checks its size and trailer lines as
    strictly as llhttp does (h11 decodes the body itself)."""

    __slots__ = ("_left", "_line", "_state")

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._line = b""
        self._left = 0

    def feed(self, data: bytes) -> RequestError | None:
        at, size = 0, len(data)
        while at < size:
            state = self._state
            if state == self._DATA:
                take = min(self._left, size - at)
                self._left -= take
                at += take
                if not self._left:
                    self._state = self._DATA_END
                continue
            if state == self._DONE:
                return None
            newline = data.find(b"\n", at)
            if newline < 0:
                self._line += data[at:]
                if len(self._line) > MAX_CHUNK_LINE:
                    return RequestError(400, "a chunk size or trailer line is too long")
                return None
            line, self._line = self._line + data[at : newline + 1], b""
            at = newline + 1
            error = self._line_done(state, line)
            if error is not None:
                return error
        return None

    def _line_done(self, state: int, line: bytes) -> RequestError | None:
        if state == self._DATA_END:
            if line != b"\r\n":
                return RequestError(400, "a chunk's data is not followed by CRLF")
            self._state = self._SIZE
        elif state == self._SIZE:
            match = _CHUNK_LINE.fullmatch(line)
            if match is None or int(match.group(1), 16) >= 1 << 64:
                return RequestError(400, "the request has a malformed chunk size line")
            self._left = int(match.group(1), 16)
            self._state = self._DATA if self._left else self._TRAILER
        elif line == b"\r\n":
            self._state = self._DONE
        elif not line.endswith(b"\r\n") or _malformed(line):
            return RequestError(400, _MALFORMED_HEAD)
        return None


def _malformed(head: bytes) -> bool:
    """A control character other than HTAB, CR and LF; a CR or an LF not in a CRLF; a line
    that starts with whitespace (obs-fold). One pass each, where a single regular expression
    with lookarounds costs several times as much."""
    # Without its controls a sound head is shorter by its CRLFs exactly.
    return (
        len(head.translate(None, _CONTROLS)) != len(head) - 2 * head.count(b"\r\n")
        or b"\n " in head
        or b"\n\t" in head
    )


def _raw_values(head: bytes, name: bytes) -> list[bytes]:
    """The values of every ``name`` field line in a raw head (for what h11 merged away)."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        field, colon, value = line.partition(b":")
        if colon and field.lower() == name:
            values.append(value.strip(b" \t"))
    return values
