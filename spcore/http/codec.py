"""The HTTP/1.1 codec interface: request bytes in, frozen events out; response parts in, bytes out.

A codec is the only part of the HTTP layer that knows the wire format. The connection feeds it
what arrived (``receive_data``; ``b""`` at the end of input) and pulls events one at a time
(``next_event``), in the style of h11:

* ``RequestHead``: a complete, validated request head (the decisions of ``spcore.http.rules``
  already made: framing, keep-alive, ``Expect``, ``Upgrade``);
* ``Data``: a piece of the request body (never empty);
* ``END_OF_REQUEST``: the body is complete;
* ``RequestError``: the request broke the protocol; ``status`` is the answer (400, 413, 414,
  431, 501, 505) and ``reason`` a sentence that never quotes the peer's bytes. Nothing follows;
* ``NEED_DATA``: feed more bytes; ``PAUSED``: a request is complete and the next one waits for
  ``start_next_cycle()``; ``CLOSED``: the client ended its side between requests.

On the way out, the connection hands the codec a ``ResponseHead`` whose headers and framing the
exchange has already decided, and body pieces; the codec returns the bytes to send and refuses
(``LocalProtocolError``) what would break the framing: more or fewer bytes than the
Content-Length, a body where the framing has none.

Two codecs implement it: ``h11`` (``spcore.http.h11codec``, the pure-Python reference, always
installed) and ``httptools`` (``spcore.http.httptoolscodec``, llhttp from Node.js with our own
response writer); ``spcore.http.codecs`` names them and picks one (``auto``: httptools when it
can be imported). Both are
held to the same table of requests (``tests/test_http_corpus.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    from ..config import Limits

__all__ = [
    "CHUNKED",
    "CLOSED",
    "END_OF_REQUEST",
    "FIXED",
    "NEED_DATA",
    "NO_BODY",
    "PAUSED",
    "UNTIL_CLOSE",
    "Codec",
    "CodecFactory",
    "Data",
    "Event",
    "RequestError",
    "RequestHead",
    "ResponseHead",
]

Headers = Sequence[tuple[bytes, bytes]]


class RequestHead(NamedTuple):
    """A request head, checked against RFC 9112/9110 (``spcore.http.rules``)."""

    method: bytes
    target: bytes
    #: b"1.0" or b"1.1": anything else was answered with 505.
    http_version: bytes
    #: (lower-case name, value) pairs as received, in order, without surrounding whitespace.
    headers: Headers
    #: The declared body size, None when the body is chunked or absent.
    content_length: int | None
    chunked: bool
    #: Whether the connection may carry another request after this one.
    keep_alive: bool
    #: ``Expect: 100-continue`` on an HTTP/1.1 request.
    expect_continue: bool
    #: The ``Upgrade`` header's value when ``Connection`` names ``upgrade``.
    upgrade: bytes | None


class Data(NamedTuple):
    """A piece of the request body."""

    data: bytes


class RequestError(NamedTuple):
    """The request broke the protocol: answer ``status`` and close."""

    status: int
    reason: str
    #: The request's method when it was parsed far enough to know it (a HEAD gets no body).
    method: bytes | None = None


class _Marker:
    """A singleton event or state with a name (``END_OF_REQUEST``, ``NEED_DATA``...)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class _EndOfRequest(_Marker):
    __slots__ = ()


class _NeedData(_Marker):
    __slots__ = ()


class _Paused(_Marker):
    __slots__ = ()


class _Closed(_Marker):
    __slots__ = ()


# Each marker has a type of its own, so a consumer dispatches every event on ``type(event)``.
END_OF_REQUEST: Final = _EndOfRequest("END_OF_REQUEST")
NEED_DATA: Final = _NeedData("NEED_DATA")
PAUSED: Final = _Paused("PAUSED")
CLOSED: Final = _Closed("CLOSED")

Event = RequestHead | Data | RequestError | _EndOfRequest | _NeedData | _Paused | _Closed

# How a response body is delimited on the wire.
#: ``Content-Length`` bytes, no more, no fewer.
FIXED: Final = 0
#: ``Transfer-Encoding: chunked``.
CHUNKED: Final = 1
#: Until the connection closes (a streamed body to an HTTP/1.0 client).
UNTIL_CLOSE: Final = 2
#: No body at all, whatever the headers say: HEAD, 204, 304 (RFC 9110 §6.4.1).
NO_BODY: Final = 3


class ResponseHead(NamedTuple):
    """A response head as the exchange decided it: complete headers and the body's framing."""

    status: int
    #: Every header to send, lower-case names, validated (RFC 9110 §5.5), in order.
    headers: list[tuple[bytes, bytes]]
    framing: int
    #: The Content-Length for ``FIXED`` framing.
    length: int = 0


class Codec(Protocol):
    """One HTTP/1.1 server connection's wire format (see the module docstring)."""

    #: "h11" or "httptools".
    name: str

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it ended its side."""
        ...

    def next_event(self) -> Event:
        """The next event (``NEED_DATA`` when more bytes are needed)."""
        ...

    @property
    def pending(self) -> bool:
        """Whether received input waits unparsed or unread (a pipelined request)."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes received and held by the codec (bounded by the limits)."""
        ...

    def start_next_cycle(self) -> None:
        """The response to the last request is complete: read the next request."""
        ...

    def response(self, head: ResponseHead, body: bytes, end: bool) -> bytes:
        """The bytes of ``head`` and the first body bytes (and the end, if ``end``)."""
        ...

    def data(self, body: bytes, end: bool) -> bytes:
        """The bytes of more body (and of its end, if ``end``)."""
        ...

    def interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """A 1xx response: 100 Continue, or 101 Switching Protocols (after which the codec
        parses nothing more: ``take_rest()`` hands over what follows the request)."""
        ...

    def take_rest(self) -> bytes:
        """After a 101: the bytes received beyond the upgraded request."""
        ...


CodecFactory = Callable[["Limits"], Codec]
