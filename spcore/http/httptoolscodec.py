"""The httptools codec: llhttp (the parser of Node.js) reads requests, our writer answers them.

llhttp parses everything it is fed at once and reports through callbacks; the codec turns
those into the queue of events ``next_event`` hands out, one request at a time. What llhttp
leaves to its user, the codec does:

* limits: llhttp has none, so the target (414) and the head (431) are measured here, a head
  that never ends included (its bytes are counted as they are fed);
* meaning: every parsed head goes through ``spcore.http.rules`` like h11's does, and llhttp's
  own refusals are mapped to the same statuses (its ``lenient_version`` is on so that the
  rules, not llhttp, answer an unknown version with 505);
* after a request that ends the connection nothing more is parsed (llhttp would refuse it);
* ``Upgrade``: llhttp stops after such a request's head and skips its body. Until the
  exchange accepts (101, ``take_rest``) or declines, the rest waits unparsed; declined, the
  body is parsed through a stand-in head with the same framing, so it is never mistaken for
  the next request.

https://github.com/MagicStack/httptools, https://llhttp.org/
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from .codec import (
    CLOSED,
    END_OF_REQUEST,
    NEED_DATA,
    PAUSED,
    Data,
    Event,
    RequestError,
)
from .rules import check_head
from .writer import ResponseWriter

if TYPE_CHECKING:
    from ..config import Limits

__all__ = ["HttptoolsCodec"]

#: llhttp's refusals that are not a plain 400, by the start of its reason.
_LLHTTP_STATUS: Final = {
    "Invalid HTTP version": (505, "this HTTP version is not supported"),
}
_URL_TOO_LONG = "the request target is longer than this server accepts"
_HEAD_TOO_LARGE = "the request head is larger than this server accepts"
_CUT_SHORT = "the connection closed in the middle of a request"
_HEAD_PREFIX = b"HEAD "
_PREFIX_SIZE: Final = len(_HEAD_PREFIX)


class _Stop(Exception):
    """Raised in a callback to stop llhttp at once; carries the answer."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(error.reason)
        self.error = error


class HttptoolsCodec(ResponseWriter):
    """One server connection's HTTP/1.1 through httptools (see ``spcore.http.codec``)."""

    name = "httptools"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._parser = self._new_parser()
        self._events: deque[Event] = deque()
        super().__init__()
        self._dead = False  # an error was queued, or a request ended the connection
        self._waiting = False  # a request is complete: the next waits for start_next_cycle
        self._held = bytearray()  # after an Upgrade request: the rest, unparsed
        self._upgrade = False
        self._eof = False
        # The request being parsed.
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0  # bytes fed since its head began (while incomplete)
        self._url = b""
        self._method: bytes | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._keep_alive = True
        self._reframe: bytes | None = None  # an Upgrade request's body framing, as a head
        self._standin = False  # parsing the stand-in head of such a body
        self._prefix = b""  # the first bytes of a request line that began a feed
        self._completed = 0  # requests parsed

    def _new_parser(self) -> httptools.HttpRequestParser:
        # The parser calls this object's on_* methods (so it holds the codec: a reference
        # cycle per connection, which the collector frees; a forwarding object costs a call
        # per callback).
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    # -- input ------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._events) or bool(self._held) or self._in_head

    @property
    def buffered(self) -> int:
        # What llhttp keeps of an unfinished head is no more than the bytes fed since it began.
        body = sum(len(event.data) for event in self._events if type(event) is Data)
        return len(self._held) + body + (self._head_bytes if self._in_head else 0)

    def receive_data(self, data: bytes) -> None:
        if self._dead:
            return
        if self._upgrade:
            if data:
                self._held += data
            else:
                self._eof = True
            return
        if not data:
            if self._in_head or self._in_body:
                self._error(400, _CUT_SHORT)
            else:
                self._events.append(CLOSED)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        began = not self._in_head
        if began:
            if not self._prefix and not self._in_body:
                self._prefix = data.lstrip(b"\r\n")[:_PREFIX_SIZE]
            completed = self._completed
        else:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stop):
                self._queue_error(cause.error)
            else:
                raise
            return
        except httptools.HttpParserError as exc:
            self._parser_error(exc)
            return
        if self._in_head:
            if began:
                # The head began in this feed: after what came before it when that is known
                # (nothing but empty lines), else what llhttp reported of it so far.
                first = self._completed == completed
                self._head_bytes = len(data.lstrip(b"\r\n")) if first else self._size
            if self._head_bytes > self._limits.max_header_size:
                self._error(431, _HEAD_TOO_LARGE)

    def next_event(self) -> Event:
        events = self._events
        if events and not self._waiting:
            event = events.popleft()
            if event is END_OF_REQUEST:
                self._waiting = True
            return event
        if self._waiting or self._dead or self._upgrade:
            return PAUSED
        return NEED_DATA

    def start_next_cycle(self) -> None:
        self._waiting = False
        if self._upgrade:  # declined: what followed is the next request
            self._upgrade = False
            held, self._held = bytes(self._held), bytearray()
            if held:
                self._feed(held)
            if self._eof:
                self.receive_data(b"")

    # -- llhttp's callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._standin:
            return
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._method = None
        self._headers = []
        self._size = len(b"  HTTP/1.1\r\n\r\n")

    def on_url(self, url: bytes) -> None:
        if self._standin:
            return
        if self._method is None:
            self._method = self._parser.get_method()
        self._url += url
        if len(self._url) > self._limits.max_url_length:
            raise _Stop(RequestError(414, _URL_TOO_LONG, self._method))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._standin:
            return
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace in the value
        self._headers.append((name.lower(), value))
        self._size += len(name) + len(value) + 4
        if self._size > self._limits.max_header_size:
            raise _Stop(RequestError(431, _HEAD_TOO_LARGE, self._method))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        if self._standin:
            self._standin = False
            return
        parser = self._parser
        method = parser.get_method()
        version = parser.get_http_version().encode("ascii")
        size = self._size + len(method) + len(self._url)
        head = check_head(method, self._url, version, self._headers, size, self._limits)
        if isinstance(head, RequestError):
            raise _Stop(head)
        self._keep_alive = head.keep_alive
        if parser.should_upgrade() and (head.chunked or head.content_length):
            # llhttp skips the body of an Upgrade request: parse it through a stand-in head.
            framing = b"transfer-encoding: chunked" if head.chunked else b"content-length: %d"
            self._reframe = framing if head.chunked else framing % head.content_length
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        if self._reframe is not None:
            return  # the body follows, through the stand-in head
        self._in_body = False
        self._completed += 1
        self._prefix = b""
        self._events.append(END_OF_REQUEST)
        if not self._keep_alive:
            self._dead = True  # what follows a closing request is not read (llhttp refuses it)

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped after an Upgrade (or CONNECT) request's head."""
        framing, self._reframe = self._reframe, None
        if framing is not None:
            self._standin = True
            self._feed(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + rest)
            return
        self._upgrade = True
        self._held += rest

    # -- errors -----------------------------------------------------------------------------

    def _parser_error(self, exc: httptools.HttpParserError) -> None:
        reason = str(exc)
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._error(400, "the request method is unknown to this server")
            return
        for start, (status, text) in _LLHTTP_STATUS.items():
            if reason.startswith(start):
                self._error(status, text)
                return
        self._error(400, f"malformed request ({reason[:1].lower()}{reason[1:]})")

    def _error(self, status: int, reason: str) -> None:
        method = self._method
        if method is None and self._prefix == _HEAD_PREFIX:
            method = b"HEAD"
        self._queue_error(RequestError(status, reason, method))

    def _queue_error(self, error: RequestError) -> None:
        self._dead = True
        self._in_head = False
        self._events.append(error)

    # -- output: ResponseWriter's response(), data(), interim() ----------------------------------

    def take_rest(self) -> bytes:
        self._dead = True
        rest, self._held = bytes(self._held), bytearray()
        return rest
