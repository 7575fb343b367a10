"""What an HTTP application sees and returns: ``Request``, ``Response``, ``Pipe``.

An application is a callable ``app(request) -> Response | None``. The request body is never
buffered behind the application's back: to receive it, the application hands a
``BodyReader`` to ``request.read_body()`` and either returns a response at once (it may stream
from a ``Pipe`` the reader fills) or returns ``None`` and lets ``reader.end()`` produce it.
``buffered(fn)`` wraps a ``fn(request, body)`` for applications that do want the whole body.
An application that answers later, from outside its call, uses ``request.exchange``
(``spcore.http.exchange``): ``defer()``, then ``respond(response)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias

from ..errors import LocalProtocolError
from .rules import split_target

if TYPE_CHECKING:
    from ..layer import ProtocolLayer, Transport
    from ..tls.engine import TLSInfo

__all__ = [
    "App",
    "BodyReader",
    "HeaderInput",
    "Pipe",
    "Request",
    "Response",
    "ResponseControl",
    "blocking",
    "buffered",
]

HeaderInput: TypeAlias = "Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]"


class BodyReader(Protocol):
    """Receives a request body piece by piece.

    ``data()`` may return False to pause the body until ``request.exchange.resume_body()``
    (the connection stops reading meanwhile); anything else takes more.
    """

    def data(self, chunk: bytes) -> bool | None: ...

    def end(self) -> Response | None:
        """The body is complete; return the response unless one was already returned."""
        ...


class ResponseControl(Protocol):
    """What an application may do with the exchange serving its request (``request.exchange``,
    a ``spcore.http.exchange.Exchange``), on the loop thread."""

    #: The response has ended (or will never be sent: the exchange failed, the connection
    #: went); what is given for it now is dropped.
    response_done: bool

    @property
    def writable(self) -> bool:
        """Whether the client keeps up with the response (see ``on_writable``)."""
        ...

    def defer(self) -> None:
        """The response will come from ``respond()`` later: the app may return None."""
        ...

    def respond(self, response: Response, now: float | None = None) -> None:
        """Answer with ``response`` (once)."""
        ...

    def error(self, status: int, reason: str) -> None:
        """Answer ``status`` with ``reason`` and close, or cut a response already begun (an
        application that failed)."""
        ...

    def resume_body(self) -> None:
        """Take the request body again after a ``BodyReader.data()`` returned False."""
        ...

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once the client has taken enough of the response to send more."""
        ...

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` if the exchange ends before its response has: the connection was
        lost, or the request failed."""
        ...

    def on_client_eof(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` if the client ends its side before the response has ended."""
        ...

    @property
    def transport(self) -> Transport:
        """The connection carrying the exchange (``call_soon_threadsafe``, ``submit_job``)."""
        ...

    def upgrade(self, layer: ProtocolLayer, headers: HeaderInput = ()) -> None:
        """Answer ``101 Switching Protocols`` and hand the connection to ``layer``."""
        ...


class Request:
    """One HTTP request head, plus the hook to receive its body."""

    __slots__ = (
        "_exchange",
        "_reader",
        "client",
        "headers",
        "http_version",
        "method",
        "path",
        "query",
        "scheme",
        "server",
        "target",
        "tls",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        http_version: str,
        *,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        tls: TLSInfo | None,
    ) -> None:
        self.method = method
        self.target = target
        if target[:1] == "/":
            path, _, query = target.partition("?")
        else:  # absolute-form (its path) or "*"
            path, query = split_target(target)
        self.path = path
        self.query = query
        #: (lower-case name, value) pairs as received, in order.
        self.headers = headers
        self.http_version = http_version
        self.client = client
        self.server = server
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self._reader: BodyReader | None = None
        self._exchange: ResponseControl | None = None

    @property
    def exchange(self) -> ResponseControl:
        """The exchange serving this request (to answer later, to pace the body)."""
        if self._exchange is None:
            raise LocalProtocolError("this request is not being served")
        return self._exchange

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as latin-1."""
        key = name.lower().encode("ascii")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return default

    def read_body(self, reader: BodyReader) -> None:
        """Ask for the request body: ``reader.data()`` per piece, then ``reader.end()``."""
        if self._reader is not None:
            raise LocalProtocolError("read_body() called twice for one request")
        self._reader = reader

    @property
    def body_reader(self) -> BodyReader | None:
        return self._reader

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version}>"


@dataclass
class Response:
    """A response: status, headers and a body of bytes, text, an iterable of bytes or a Pipe.

    A bytes or text body gets a ``Content-Length``; an iterable or a ``Pipe`` is streamed,
    chunked unless the headers give a length, and is pulled only as fast as the client reads.
    An iterable with a ``close()`` method is closed when the response ends, whatever the cause.
    """

    status: int = 200
    headers: HeaderInput = field(default_factory=list)
    body: bytes | str | Iterable[bytes] | Pipe = b""


App = Callable[[Request], Response | None]


class Pipe:
    """A response body fed by someone else: a ``BodyReader`` (echo), another connection.

    ``write()`` returns False once ``high_water`` bytes wait unsent: the producer should
    stop until the connection drains it. A Pipe is also a ``BodyReader``, so
    ``request.read_body(pipe)`` streams the request body straight back.

    Write it on the loop thread (in application code, or another connection's handler), or
    from the jobs of the blocking app whose response it is; it is not safe from other
    threads.
    """

    def __init__(self, high_water: int = 256 * 1024) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._high_water = high_water
        self._closed = False
        self._waiter: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        return self._size

    def write(self, data: bytes) -> bool:
        if self._closed:
            raise LocalProtocolError("write() on a closed Pipe")
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)
            self._wake()
        return self._size < self._high_water

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake()

    # BodyReader, so a request body can flow straight into a response.
    def data(self, chunk: bytes) -> None:
        self.write(chunk)

    def end(self) -> Response | None:
        self.close()
        return None

    # The consuming side, used by the connection.
    def set_waiter(self, waiter: Callable[[], None] | None) -> None:
        self._waiter = waiter

    def take(self) -> bytes:
        """Everything written so far, as one buffer."""
        chunks, self._chunks, self._size = self._chunks, deque(), 0
        return b"".join(chunks)

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter()


class _BufferedBody:
    def __init__(self, request: Request, fn: Callable[[Request, bytes], Response]) -> None:
        self._request = request
        self._fn = fn
        self._chunks: list[bytes] = []

    def data(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def end(self) -> Response:
        return self._fn(self._request, b"".join(self._chunks))


def buffered(fn: Callable[[Request, bytes], Response]) -> App:
    """An app calling ``fn(request, body)`` once the whole body (within the limits) is in."""

    def app(request: Request) -> None:
        request.read_body(_BufferedBody(request, fn))
        return None

    app.__name__ = getattr(fn, "__name__", "buffered_app")
    app.__doc__ = fn.__doc__
    if getattr(fn, "blocking", False):
        app.blocking = True  # type: ignore[attr-defined]
    return app


def blocking(app: App) -> App:
    """Mark an app as blocking: the server runs its calls as jobs on the driver's workers."""
    app.blocking = True  # type: ignore[attr-defined]
    return app
