"""One HTTP request and its response: the exchange, independent of the wire format.

An ``Exchange`` owns everything between a parsed request head and the end of its response:
calling the application (inline, or as a job on the driver's workers when the app is marked
``blocking``), handing it the request body, the limits that belong to a request (413), the
``100 Continue`` answer, the response's headers and framing (Content-Length or chunked, none
for HEAD, 204 and 304; ``Date`` and ``Server``), streaming a body from an iterable or a
``Pipe`` only as fast as the client takes it, and whether the connection may carry another
request afterwards. It never sees bytes: it is driven by a *carrier* -- today
``spcore.http.protocol.HTTPProtocol``, one HTTP/1.1 connection, which turns the codec's events
into the calls below and the exchange's response parts into bytes; later an HTTP/2 stream
could carry one exchange per stream.

Driven by the carrier (loop thread):

* ``start(now)`` once the head is in; ``body_data(data, now)`` per body piece;
  ``body_end(now)``; ``fail(status, reason, now)`` for a request that broke the protocol or
  timed out; ``resume_writing(now)`` when the connection drains; ``connection_lost()``.
* ``wants_body``: whether the exchange takes body data now (no job out, the reader not
  paused); ``response_done`` / ``request_done`` / ``close``: where it stands and whether the
  connection must close after the response.

For the application side, beyond returning a ``Response`` from ``app(request)``
(``request.exchange`` is the exchange):

* ``respond(response)``: answer later, from outside the app call, on the loop thread (after
  ``defer()``, returning None from the app is not an error). An ASGI adapter answers this way.
* Flow control of the request body: a ``BodyReader.data()`` that returns False pauses the
  body (the connection stops reading, the kernel's window pushes back on the client) until
  ``resume_body()``.
* Back-pressure on the response: ``writable`` says whether the client keeps up, and
  ``on_writable(callback)`` calls back once it does again (a ``Pipe`` is paced the same way).
* ``on_disconnect(callback)``: called if the exchange ends before its response does: the
  connection was lost, or the request failed (a body timeout, 413, a broken chunk).
* ``on_client_eof(callback)``: called if the client ends its side while the response is
  still to come (a client that left, or one that half-closed and still reads).
* ``transport``: the connection, for code that hands work to other threads (its
  ``call_soon_threadsafe`` and ``submit_job``).
* ``upgrade(layer, headers)``: ``101 Switching Protocols``; the connection (and the bytes the
  client sent after the request) goes to another protocol layer, a WebSocket for instance.

Calls from another thread must be marshalled to the loop thread first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..errors import LocalProtocolError
from .access import AccessSink, response_ended
from .codec import CHUNKED, FIXED, NO_BODY, UNTIL_CLOSE, RequestHead, ResponseHead
from .messages import App, BodyReader, HeaderInput, Pipe, Request, Response
from .writer import REASONS

if TYPE_CHECKING:
    from ..jobs import Job
    from ..layer import ProtocolLayer, Transport

__all__ = ["Carrier", "Exchange", "error_response", "request_for"]

log = logging.getLogger("spcore.http")

#: A request body the application did not read is drained (and the connection kept) when
#: at most this much of it remains; beyond that the response closes the connection.
DRAIN_LIMIT: Final = 64 * 1024
#: How much of a blocking application's response iterable one job pulls.
JOB_PULL_BYTES: Final = 256 * 1024
#: Empty chunks in a row after which a response iterable counts as broken: it would
#: otherwise keep the thread pulling it busy forever (``b""`` does not mean "not yet").
MAX_EMPTY_CHUNKS: Final = 1024

_NO_BODY_STATUSES: Final = frozenset({204, 304})
#: A NamedTuple's constructor without the Python frame of its generated ``__new__``.
_new_tuple: Final = tuple.__new__
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5 as h11 checks it: no NUL, CR, LF; no whitespace at either end.
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_DIGITS = re.compile(rb"[0-9]+")
_SPECIAL: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"date", b"server", b"content-type"}
)
_TEXT_PLAIN: Final = (b"content-type", b"text/plain; charset=utf-8")
_CLOSE: Final = (b"connection", b"close")
_CHUNKED: Final = (b"transfer-encoding", b"chunked")
#: Application header pairs already converted and checked (the same few come back per
#: response); cleared when full.
_PAIRS: dict[tuple[Any, Any], tuple[bytes, bytes]] = {}
_MAX_PAIRS: Final = 1024
_METHODS: Final = {
    name: name.decode("ascii")
    for name in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
}

# Where the response stands.
_WAITING, _HELD, _STREAMING, _DONE = range(4)


class Carrier(Protocol):
    """What carries an exchange: it puts the response on the wire and feeds the request in."""

    #: Where each response's access record goes (None: no access log is kept).
    access_log: AccessSink | None

    @property
    def transport(self) -> Transport: ...

    @property
    def writable(self) -> bool:
        """Whether more response body may be produced now (the client keeps up)."""
        ...

    @property
    def in_round(self) -> bool:
        """Whether the carrier is processing input now (output is sent when it ends)."""
        ...

    @property
    def closing_after(self) -> bool:
        """Whether the connection ends after this exchange anyway (server shutdown)."""
        ...

    def date(self, now: float) -> tuple[bytes, bytes]:
        """The ``Date`` header at ``now``."""
        ...

    def send_interim(self, status: int) -> None: ...

    def send_response(self, head: ResponseHead, body: bytes, end: bool) -> None: ...

    def send_data(self, body: bytes, end: bool) -> None: ...

    def run(self, step: Callable[[float], None] | None, now: float) -> None:
        """Run ``step(now)`` for the exchange (a job returned, a Pipe was written, a deferred
        response arrived...) and then whatever input waits: at once inside a round, else
        in a round of its own."""
        ...


class Exchange:
    """One request and its response (see the module docstring)."""

    __slots__ = (
        "_app",
        "_blocking",
        "_carrier",
        "_chunks",
        "_deferred",
        "_disconnect",
        "_eof",
        "_held",
        "_interim_sent",
        "_job",
        "_pipe",
        "_reader",
        "_received",
        "_request",
        "_sent",
        "_server_header",
        "_source",
        "_started",
        "_state",
        "_status",
        "_transport",
        "_writable",
        "body_paused",
        "close",
        "head",
        "request_done",
        "response_done",
        "switch",
    )

    def __init__(
        self,
        carrier: Carrier,
        transport: Transport,
        head: RequestHead,
        request: Request,
        app: App,
        blocking: bool,
        server_header: tuple[bytes, bytes],
    ) -> None:
        self._carrier = carrier
        self._transport = transport
        self.head = head
        self._request: Request | None = request
        request._exchange = self
        self._app = app
        self._blocking = blocking
        self._server_header = server_header
        self._reader: BodyReader | None = None
        self._received = 0
        self._started = 0.0
        self._status = 0  # of the response once it began; 0 again once it was counted
        self._sent = 0  # response body bytes handed to the carrier
        self._job: Job | None = None
        self._state = _WAITING
        self._held: ResponseHead | None = None
        self._source: Any = None  # the response body object, closed at the end
        self._chunks: Iterator[Any] | None = None
        self._pipe: Pipe | None = None
        self._interim_sent = False
        self._deferred = False
        self._disconnect: Callable[[], None] | None = None
        self._eof: Callable[[], None] | None = None
        self._writable: Callable[[], None] | None = None
        #: The request body is complete (or will never be read: the exchange failed).
        self.request_done = False
        #: A ``BodyReader.data()`` returned False: no body is taken until ``resume_body()``.
        self.body_paused = False
        #: The connection closes after this response.
        self.close = False
        #: The response has ended (or will never be sent: the connection is gone).
        self.response_done = False
        #: After ``upgrade()``: the layer to switch to and the 101's headers.
        self.switch: tuple[ProtocolLayer, list[tuple[bytes, bytes]]] | None = None

    def __repr__(self) -> str:
        head = self.head
        return f"<Exchange {head.method.decode()} {head.target[:80].decode('latin-1')}>"

    # -- where it stands ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A job is out: nothing is fed or sent until it returns."""
        return self._job is not None

    @property
    def wants_body(self) -> bool:
        return not self.request_done and self._job is None and not self.body_paused

    @property
    def writable(self) -> bool:
        """Whether the client keeps up with the response (see ``on_writable``)."""
        return self._carrier.writable

    @property
    def transport(self) -> Transport:
        """The connection carrying this exchange."""
        return self._transport

    # -- the application's side -------------------------------------------------------------

    def defer(self) -> None:
        """The response will come from ``respond()`` later: the app may return None."""
        self._deferred = True

    def respond(self, response: Response, now: float | None = None) -> None:
        """Answer with ``response`` (once; a second response is logged and discarded)."""
        if self._transport.closing:
            _discard(response)
            return
        self._carrier.run(
            lambda now: self._start_response(response, now),
            self._transport.now if now is None else now,
        )

    def error(self, status: int, reason: str) -> None:
        """The application cannot answer as it should (it raised, or broke its protocol):
        the client gets ``status`` with ``reason`` and the connection closes; a response already
        on its way is cut short instead."""
        if self._transport.closing:
            return
        self._carrier.run(lambda now: self._fail_app(reason, now, status), self._transport.now)

    def resume_body(self) -> None:
        """Take the request body again after a ``BodyReader.data()`` returned False."""
        if self.body_paused:
            self.body_paused = False
            self._carrier.run(None, self._transport.now)

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once the client has taken enough of the response to send more."""
        self._writable = callback

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (once) if the exchange ends before its response has: the
        connection was lost, or the request failed (and was answered with its error)."""
        self._disconnect = callback

    def on_client_eof(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (once) if the client ends its side before the response has
        ended. It may have left, or only half-closed and still read: the response is sent all
        the same if the connection can carry it (until then, ``on_disconnect`` tells)."""
        self._eof = callback

    def upgrade(self, layer: ProtocolLayer, headers: HeaderInput = ()) -> None:
        """Answer ``101 Switching Protocols`` (with ``headers``, the ``Upgrade`` and
        ``Connection`` to send among them) and hand the connection, and whatever the client
        sent after this request, to ``layer`` (a WebSocket, say) once the request is complete.

        Only a request that asked for an upgrade (``Connection: upgrade`` and ``Upgrade``,
        RFC 9110 §7.8) and has no body can be upgraded; anything else raises
        ``LocalProtocolError``.
        """
        head = self.head
        if head.upgrade is None or head.chunked or head.content_length:
            raise LocalProtocolError("only a request asking for an upgrade, bodiless, can have it")
        if self._state != _WAITING:
            raise LocalProtocolError("this request has been answered already")
        pairs = _headers(headers)[0]
        self._deferred = True  # the app returns None
        self._state = _DONE
        self.response_done = True
        self.switch = (layer, pairs)
        self._status = 101
        self._ended(self._transport.now)
        if not self._carrier.in_round:
            self._carrier.run(None, self._transport.now)

    # -- driven by the carrier ----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Call the application with the request."""
        self._started = now
        head = self.head
        limit = self._transport.limits.max_body_size
        if head.content_length is not None and head.content_length > limit:
            self.fail(413, f"the request body exceeds {limit} bytes", now)
            return
        self._call(self._app, self._request, self._app_returned, now)

    def body_data(self, data: bytes, now: float) -> None:
        received = self._received + len(data)
        self._received = received
        limit = self._transport.limits.max_body_size
        if received > limit:
            self.fail(413, f"the request body exceeds {limit} bytes", now)
            return
        reader = self._reader
        if reader is not None:  # (else not asked for: drained)
            self._call(reader.data, data, self._data_taken, now)

    def body_end(self, now: float) -> None:
        self.request_done = True
        reader, self._reader = self._reader, None
        if reader is not None:
            self._call(_call_end, reader, self._body_ended, now)

    def resume_writing(self, now: float) -> None:
        """The connection drained below its low-water mark: produce more."""
        self._pump(now)
        callback = self._writable
        if callback is not None and self._carrier.writable:
            self._writable = None
            callback()

    def flush(self, now: float) -> None:
        """The carrier ends its round: a response head still held goes out alone."""
        held = self._held
        if held is not None:
            self._held = None
            self._state = _STREAMING
            self._carrier.send_response(held, b"", False)

    def fail(self, status: int, reason: str, now: float, *, level: int = logging.INFO) -> None:
        """The request cannot be served: answer ``status`` and close (or, once the response
        is on its way, close after what was sent)."""
        transport = self._transport
        log.log(level, "%r: HTTP %d: %s", transport, status, reason)
        transport.stats.errors += 1
        self.request_done = True
        self._reader = None
        self.close = True
        if self._state == _DONE:
            return
        streaming = self._state == _STREAMING
        self._state = _DONE
        self.response_done = True
        self._close_source()
        self._held = None
        self._gone()
        if streaming:
            # The carrier closes after what was sent: the client sees it cut short.
            self._ended(now, complete=False)
            return
        base = [self._carrier.date(now), self._server_header]
        head, body = error_response(status, reason, self.head.method, base)
        self._carrier.send_response(head, body, True)
        self._status, self._sent = status, len(body)
        self._ended(now)

    def client_eof(self) -> None:
        """The client ended its side (the carrier read its EOF)."""
        callback, self._eof = self._eof, None
        if callback is not None and self._state != _DONE:
            _notify(callback, "end-of-input callback")

    def connection_lost(self) -> None:
        if self._job is None:
            self._close_source()
        # else a worker may be inside the response body: the job's return closes it
        if self._state != _DONE:
            self._state = _DONE
            self.response_done = True
            self._ended(self._transport.now, complete=False)
            self._gone()

    def _gone(self) -> None:
        """The exchange ended without its response: tell whoever asked."""
        self._eof = None
        callback, self._disconnect = self._disconnect, None
        if callback is not None:
            _notify(callback, "disconnect callback")

    # -- calling the application ----------------------------------------------------------------

    def _app_returned(self, result: Response | None, now: float) -> None:
        request, self._request = self._request, None
        assert request is not None
        reader = request.body_reader
        if reader is not None:
            self._reader = reader
            head = self.head
            if head.expect_continue and self._state == _WAITING and not self._received:
                self._interim_sent = True
                self._carrier.send_interim(100)
        if result is not None:
            self._start_response(result, now)
        elif reader is None and not self._deferred and self._state == _WAITING:
            self._fail_app("the application returned no response and read no body", now)

    def _data_taken(self, taken: object, now: float) -> None:
        if taken is False:
            self.body_paused = True

    def _body_ended(self, result: Response | None, now: float) -> None:
        if result is not None:
            self._start_response(result, now)
        elif self._state == _WAITING and not self._deferred:
            self._fail_app("the body reader's end() returned no response", now)

    def _call(
        self,
        fn: Callable[[Any], Any],
        arg: Any,
        then: Callable[[Any, float], None],
        now: float,
    ) -> None:
        """Application code: ``then(fn(arg), now)``, here or as a job when the app is
        blocking; an exception is a 500 (or an abort, once the response is on its way)."""
        if self._blocking:
            self._submit(lambda: fn(arg), then)
            return
        try:
            result = fn(arg)
        except Exception:
            log.exception("application error")
            self._fail_app("the application raised an exception", now)
            return
        then(result, now)

    def _submit(
        self,
        call: Callable[[], Any],
        then: Callable[[Any, float], None],
        *,
        iterating: bool = False,
    ) -> None:
        """Run ``call`` on the driver's workers; ``then(result, now)`` applies its outcome
        (an exception is the app's failure, or the response body's when ``iterating``).

        No client deadline runs while a job is out: the carrier stops reading, so a body that
        stops arriving meanwhile is the server's doing, not the client's.
        """

        def done(job: Job, now: float) -> None:
            self._job = None
            if self._transport.closing:
                self._close_source()  # connection_lost left it to us
                _discard(job.result)  # a response the app returned meanwhile
                return
            self._carrier.run(lambda now: self._job_returned(job, then, iterating, now), now)

        self._job = self._transport.submit_job(call, done)

    def _job_returned(
        self, job: Job, then: Callable[[Any, float], None], iterating: bool, now: float
    ) -> None:
        if job.error is not None and iterating:
            log.error("response body iterator failed", exc_info=job.error)
            self._abort("response body iterator failed")
            return
        if job.error is not None:
            log.error("application error", exc_info=job.error)
            self._fail_app("the application raised an exception", now)
            return
        then(job.result, now)
        if self._pipe is not None:
            self._pump(now)  # what this job wrote into the response's Pipe

    def _fail_app(self, why: str, now: float, status: int = 500) -> None:
        if self._state == _STREAMING:
            self._abort("the application failed after its response began")
            return
        self.fail(status, why, now, level=logging.ERROR)

    # -- responses ------------------------------------------------------------------------------

    def _start_response(self, response: Response, now: float) -> None:
        if self._state != _WAITING:
            log.error("application produced a second response for %r; ignored", self)
            _discard(response)
            return
        # Everything the application handed over is checked before the first byte goes out:
        # up to here a mistake is a clean 500, afterwards only an abort is left.
        try:
            head, payload, stream = self._response_head(response, now)
        except (TypeError, ValueError, UnicodeError) as exc:
            log.error("application returned an invalid response for %r: %s", self, exc)
            _discard(response)
            self._fail_app("the application returned an invalid response", now)
            return
        self._status = head.status
        if payload is not None or head.framing == NO_BODY:
            if payload is None:
                _close_body(response.body)  # a HEAD's: never iterated
            self._state = _DONE
            self.response_done = True
            body = b"" if head.framing == NO_BODY else payload or b""
            try:
                self._carrier.send_response(head, body, True)
            except LocalProtocolError as exc:
                self._broken(exc)
                return
            self._sent = len(body)
            self._ended(now)
            return
        self._source = response.body
        self._held = head
        self._state = _HELD
        if isinstance(stream, Pipe):
            self._pipe = stream
            stream.set_waiter(self._pipe_ready)
        else:
            self._chunks = stream
        self._pump(now)

    def _response_head(
        self, response: Response, now: float
    ) -> tuple[ResponseHead, bytes | None, Pipe | Iterator[Any] | None]:
        """The head, and either the whole body (bytes) or what streams it."""
        if type(response) is not Response and not isinstance(response, Response):
            raise TypeError(f"expected a Response, got {type(response).__name__}")
        status = response.status
        if type(status) is not int:
            if not isinstance(status, int) or isinstance(status, bool):
                raise ValueError(f"{status!r} is not a status code")
            status = int(status)  # an IntEnum such as HTTPStatus.OK
        if not 200 <= status <= 999:
            raise ValueError(f"{status!r} is not a final status code")
        head = self.head
        headers, lengths, coding, closing, flags = _headers(response.headers)
        no_body = status in _NO_BODY_STATUSES or head.method == b"HEAD"
        body = response.body
        payload: bytes | None = None
        stream: Pipe | Iterator[Any] | None = None
        if type(body) is bytes:
            payload = body
        elif isinstance(body, str):
            payload = body.encode("utf-8")
            if not flags & _HAS_TYPE:
                headers.append(_TEXT_PLAIN)
        elif isinstance(body, (bytearray, memoryview)):
            payload = bytes(body)
        elif isinstance(body, Pipe):
            stream = body
        else:
            stream = iter(body)  # TypeError for what is none of the above
            # (each chunk's type is checked as it comes: _chunk_bytes)
        framing = FIXED
        length = 0
        if payload is not None:
            if coding is not None:
                raise ValueError("Transfer-Encoding is the server's to set on a bytes body")
            if not lengths:
                if status not in _NO_BODY_STATUSES:
                    headers.append((b"content-length", b"%d" % len(payload)))
            elif not no_body and lengths != [len(payload)]:
                raise ValueError(f"Content-Length {lengths} is not the body's {len(payload)}")
            length = len(payload)
        elif coding is not None:
            if coding != b"chunked" or lengths:
                raise ValueError("a streamed body takes Transfer-Encoding: chunked alone")
            framing = CHUNKED
        elif lengths:
            if len(lengths) > 1:
                raise ValueError(f"conflicting Content-Length values {lengths}")
            length = lengths[0]
        elif status in _NO_BODY_STATUSES:
            pass
        elif head.http_version == b"1.1":
            headers.append(_CHUNKED)
            framing = CHUNKED
        else:
            framing = UNTIL_CLOSE  # an HTTP/1.0 client: the end of the body is the close
        if no_body:
            framing = NO_BODY
        if not flags & _HAS_DATE:
            headers.append(self._carrier.date(now))
        if not flags & _HAS_SERVER:
            headers.append(self._server_header)
        if closing or framing == UNTIL_CLOSE or self._must_close():
            self.close = True
            if not closing:
                headers.append(_CLOSE)
        return _new_tuple(ResponseHead, (status, headers, framing, length)), payload, stream

    def _must_close(self) -> bool:
        """Whether this response has to end the connection (the app's ``Connection: close``
        and HTTP/1.0's are seen by the caller)."""
        head = self.head
        if not head.keep_alive or self._carrier.closing_after:
            return True
        if self.request_done or self._reader is not None:
            return False
        # The app answered without reading the body: drain a small rest, else close.
        if head.expect_continue and not self._interim_sent:
            return True  # the client waits for a 100 that will not come
        if head.chunked:
            return True  # the rest's size is unknown
        return (head.content_length or 0) - self._received > DRAIN_LIMIT

    def _send(self, body: bytes, end: bool, now: float) -> None:
        """Response body bytes (with the head, if it is still held)."""
        held = self._held
        try:
            if held is not None:
                self._held = None
                self._state = _STREAMING
                self._carrier.send_response(held, body, end)
            else:
                self._carrier.send_data(body, end)
        except LocalProtocolError as exc:
            self._broken(exc)
            return
        self._sent += len(body)
        if end:
            self._state = _DONE
            self.response_done = True
            self._close_source()
            self._ended(now)

    def _pipe_ready(self) -> None:
        if self._job is not None or self._transport.closing:
            return  # with a job out the Pipe may be written on its worker: the job's return pumps
        try:
            self._carrier.run(self._pump, self._transport.now)
        except Exception:
            log.exception("response pipe failed")
            self._transport.abort("internal error while streaming a response")

    def _pump(self, now: float) -> None:
        """Move response body chunks to the carrier while the client keeps up."""
        if self._job is not None or self._state not in (_HELD, _STREAMING):
            return  # resume_writing or the job's return comes back here
        carrier = self._carrier
        pipe = self._pipe
        if pipe is not None:
            if carrier.writable:
                chunk = pipe.take()
                if chunk or pipe.closed:
                    self._send(chunk, pipe.closed, now)
            return
        chunks = self._chunks
        if chunks is None:
            return
        if self._blocking:
            if carrier.writable:
                self._submit(lambda: _pull(chunks), self._pulled, iterating=True)
            return
        empty = 0
        try:
            while carrier.writable and self._state != _DONE:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    self._send(b"", True, now)
                    return
                if chunk:
                    self._send(_chunk_bytes(chunk), False, now)
                    empty = 0
                else:
                    empty = _count_empty(empty)
        except Exception:
            log.exception("response body iterator failed")
            self._abort("response body iterator failed")

    def _pulled(self, result: tuple[list[bytes], bool], now: float) -> None:
        chunks, finished = result
        try:
            body = b"".join(_chunk_bytes(chunk) for chunk in chunks)
        except TypeError:
            log.exception("response body iterator failed")
            self._abort("response body iterator failed")
            return
        self._send(body, finished, now)
        if not finished:
            self._pump(now)

    def _broken(self, exc: LocalProtocolError) -> None:
        log.error("response for %r broke HTTP framing: %s", self, exc)
        self._abort("the application's response broke HTTP framing")

    def _abort(self, reason: str) -> None:
        self._transport.stats.errors += 1
        self._state = _DONE
        self.response_done = True
        self.close = True
        self._close_source()
        self._ended(self._transport.now, complete=False)
        self._transport.abort(reason)
        self._gone()

    def _ended(self, now: float, complete: bool = True) -> None:
        """The seam where a response ends, however it ends: counted by status class, and
        its access record made (once; nothing when no response had begun)."""
        status, self._status = self._status, 0
        if status:
            response_ended(
                self._transport,
                self._carrier.access_log,
                self.head,
                status,
                self._sent,
                self._started,
                now,
                complete,
            )

    def _close_source(self) -> None:
        source, self._source = self._source, None
        self._chunks = None
        if self._pipe is not None:
            self._pipe.set_waiter(None)
            self._pipe = None
        _close_body(source)


def error_response(
    status: int, reason: str, method: bytes | None, headers: list[tuple[bytes, bytes]]
) -> tuple[ResponseHead, bytes]:
    """An error answer: ``<status> <phrase>: <reason>`` as text, closing the connection.

    A HEAD (``method``) gets an empty body, which frames the same whether or not the codec
    parsed the request as a HEAD. ``headers`` are the base headers to add to.
    """
    phrase = REASONS.get(status, b"")
    body = b""
    if method != b"HEAD":
        body = b"%d %s: %s\n" % (status, phrase, reason.encode("utf-8", "replace"))
    headers += [_TEXT_PLAIN, (b"content-length", b"%d" % len(body)), _CLOSE]
    return ResponseHead(status, headers, FIXED, len(body)), body


_HAS_DATE, _HAS_SERVER, _HAS_TYPE = 1, 2, 4


def _headers(
    given: Mapping[str, str] | Iterable[tuple[Any, Any]],
) -> tuple[list[tuple[bytes, bytes]], list[int], bytes | None, bool, int]:
    """An application's response headers as checked (lower-case name, value) pairs, and what
    the framing needs from them: Content-Length values, the Transfer-Encoding, whether
    ``Connection`` says close, and which of Date, Server, Content-Type are present."""
    items = given if type(given) is list else given.items() if isinstance(given, Mapping) else given
    headers: list[tuple[bytes, bytes]] = []
    lengths: list[int] = []
    coding: bytes | None = None
    closing = False
    flags = 0
    pairs = _PAIRS
    for item in items:
        pair = pairs.get(item) if type(item) is tuple else None
        if pair is None:
            pair = _header_pair(item)
        headers.append(pair)
        name = pair[0]
        if name in _SPECIAL:
            value = pair[1]
            if name == b"content-length":
                for part in value.split(b","):
                    part = part.strip(b" \t")
                    if _DIGITS.fullmatch(part) is None:
                        raise ValueError(f"invalid Content-Length {value!r}")
                    if int(part) not in lengths:
                        lengths.append(int(part))
            elif name == b"transfer-encoding":
                coding = value.lower()
            elif name == b"connection":
                closing = closing or b"close" in (t.strip().lower() for t in value.split(b","))
            elif name == b"date":
                flags |= _HAS_DATE
            elif name == b"server":
                flags |= _HAS_SERVER
            else:
                flags |= _HAS_TYPE
    return headers, lengths, coding, closing, flags


def _header_pair(item: Any) -> tuple[bytes, bytes]:
    """One header, converted and checked; remembered when it can be."""
    name, value = item
    raw_name = name.encode("latin-1") if isinstance(name, str) else bytes(name)
    raw_value = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    if _TOKEN.fullmatch(raw_name) is None:
        raise ValueError(f"{raw_name!r} is not a valid header name")
    if _FIELD_VALUE.fullmatch(raw_value) is None:
        raise ValueError(f"the value of {raw_name!r} holds CR, LF, NUL or outer whitespace")
    pair = (raw_name.lower(), raw_value)
    if type(item) is tuple and type(name) in (str, bytes) and type(value) in (str, bytes):
        if len(_PAIRS) >= _MAX_PAIRS:
            _PAIRS.clear()
        _PAIRS[item] = pair
    return pair


def request_for(head: RequestHead, context: tuple[Any, Any, Any]) -> Request:
    """The application's view of ``head``; ``context`` is (client, server, tls)."""
    method = _METHODS.get(head.method) or head.method.decode("ascii")
    client, server, tls = context
    return Request(
        method,
        head.target.decode("latin-1"),
        head.headers,
        "1.1" if head.http_version == b"1.1" else head.http_version.decode("ascii"),
        client=client,
        server=server,
        tls=tls,
    )


def _call_end(reader: BodyReader) -> Response | None:
    return reader.end()


def _chunk_bytes(chunk: Any) -> bytes:
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"a response body chunk must be bytes, not {type(chunk).__name__}")


def _close_body(body: object) -> None:
    """Close what the application gave as a body (a file, a generator) once it is done with."""
    close = getattr(body, "close", None)
    if close is not None and not isinstance(body, Pipe):
        try:
            close()
        except Exception:
            log.exception("closing the response body failed")


def _notify(callback: Callable[[], None], what: str) -> None:
    try:
        callback()
    except Exception:
        log.exception("%s failed", what)


def _discard(result: object) -> None:
    """A response that will never be sent still has its body closed."""
    if isinstance(result, Response):
        _close_body(result.body)


def _pull(chunks: Iterator[bytes]) -> tuple[list[bytes], bool]:
    """Worker side of a blocking response body: take up to JOB_PULL_BYTES of chunks."""
    taken: list[bytes] = []
    size = empty = 0
    for chunk in chunks:
        if not chunk:
            empty = _count_empty(empty)
            continue
        empty = 0
        taken.append(chunk)
        size += len(chunk)
        if size >= JOB_PULL_BYTES:
            return taken, False
    return taken, True


def _count_empty(empty: int) -> int:
    """One more empty chunk in a row; too many raise (the iterator is broken)."""
    if empty >= MAX_EMPTY_CHUNKS:
        raise ValueError(f"the response iterable yielded {MAX_EMPTY_CHUNKS} empty chunks in a row")
    return empty + 1
