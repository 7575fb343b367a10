"""HTTP/1.1 over a connection, through h11.

h11 owns the wire format and the per-request state machine; this layer adds what a server
needs around it: limits (431, 414, 413), timeouts (408 and idle close), ``Date``/``Server``
headers, ``Expect: 100-continue``, request bodies streamed to the application, response
bodies pulled from an iterable or a ``Pipe`` only as fast as the client reads, pipelined
requests answered in order (and only as fast as the client reads the answers), blocking
applications run as jobs, every h11 error turned into the right 4xx response, and CONNECT
refused with 501 (h11 would switch protocols on any 2xx answer to it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import h11

from ..jobs import Job
from ..layer import ProtocolLayer
from .dates import DateCache
from .messages import App, BodyReader, Pipe, Request, Response

if TYPE_CHECKING:
    from ..config import Limits
    from ..layer import Transport

__all__ = ["HTTPProtocol"]

log = logging.getLogger("spcore.http")

#: A request body the application did not read is drained (and the connection kept) when
#: at most this much of it remains; beyond that the response closes the connection.
DRAIN_LIMIT = 64 * 1024
#: How much of a blocking application's response iterable one job pulls.
JOB_PULL_BYTES = 256 * 1024
#: Empty chunks in a row after which a response iterable counts as broken: it would
#: otherwise keep the thread pulling it busy forever (``b""`` does not mean "not yet").
MAX_EMPTY_CHUNKS = 1024
#: Slack for the method and version around the target when measuring a request line.
REQUEST_LINE_SLACK = 64

_NO_BODY_STATUSES = frozenset({204, 304})
_URL_TOO_LONG = "the request target is longer than this server accepts"
_HEAD_TOO_LARGE = "the request head is larger than this server accepts"
_HEAD_PREFIX = b"HEAD "
_CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
#: Where h11 starts quoting the peer's bytes in an error message (to the end of it).
_QUOTED_BYTES = re.compile(r"""(: )?(bytearray\(|b'|b").*""", re.DOTALL)
_DATE = DateCache()  # one per process: the header is the same on every connection
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def _header_list(
    headers: Mapping[str, str] | Iterable[tuple[Any, Any]],
) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(_as_bytes(name).lower(), _as_bytes(value)) for name, value in items]


def _has(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(key == name for key, _ in headers)


class _Head:
    """What one pass over a request head tells: its method, its headers as a list, its size
    on the wire (give or take whitespace h11 dropped) and its body framing."""

    __slots__ = ("chunked", "headers", "length", "method", "size")

    def __init__(self, event: h11.Request) -> None:
        self.method = event.method
        self.headers: list[tuple[bytes, bytes]] = list(event.headers)
        size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
        self.length: int | None = None  # Content-Length, validated by h11
        self.chunked = False
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = True
        self.size = size


class HTTPProtocol(ProtocolLayer):
    """One HTTP/1.1 server connection running ``app`` (see ``spcore.http.messages``)."""

    def __init__(self, app: App, *, server_header: bytes = b"spcore") -> None:
        self.app = app
        self._server_header = server_header
        self._blocking = bool(getattr(app, "blocking", False))
        self._conn: Transport | None = None
        self._h11: h11.Connection | None = None
        self._processing = False
        self._close_when_done = False  # shutdown requested or the body cannot be drained
        self._job: Job | None = None
        # per-request state, reset by _reset_request
        self._request: Request | None = None
        self._head: _Head | None = None
        self._reader: BodyReader | None = None
        self._body_size = 0
        self._response_started = False
        self._source: Any = None  # the response body object, closed at the end
        self._chunks: Iterator[bytes] | None = None
        self._pipe: Pipe | None = None
        self._head_started = False
        self._line_bytes = 0  # request-line bytes seen without a newline
        self._line_prefix = b""  # its first bytes: an error before h11 parsed it may face HEAD

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (what h11 holds): bounded by the limits."""
        return len(self._h11.trailing_data[0]) if self._h11 is not None else 0

    # -- ProtocolLayer ------------------------------------------------------------------------

    @property
    def reading(self) -> bool:
        h = self._h11
        if h is None or self._job is not None:
            return False
        # A complete request waits for its response: leave pipelined bytes in the kernel.
        # After a request that ends the connection (MUST_CLOSE) nothing more is wanted.
        return h.their_state is h11.IDLE or h.their_state is h11.SEND_BODY

    def connection_made(self, conn: Transport, now: float) -> None:
        self._conn = conn
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=conn.limits.max_header_size
        )
        self.deadline = now + conn.limits.idle_timeout

    def data_received(self, data: bytes, now: float) -> None:
        h = self._h11
        assert h is not None and self._conn is not None
        if h.their_state is h11.IDLE:
            self._start_head(now)
            if not self._request_line_ok(data, now):
                return
        h.receive_data(data)
        self._process(now)

    def eof_received(self, clean: bool, now: float) -> None:
        assert self._h11 is not None
        self._h11.receive_data(b"")
        self._process(now)

    def resume_writing(self, now: float) -> None:
        h = self._h11
        assert h is not None
        if self.deadline is not None and h.their_state is h11.SEND_BODY:
            # The connection held reading back for our output (its deadline was off): the
            # client's time to send more of the body starts now.
            self.deadline = now + self._limits.body_timeout
        self._pump(now)
        self._process(now)

    def timer_expired(self, now: float) -> None:
        h = self._h11
        assert h is not None and self._conn is not None
        self.deadline = None
        if h.their_state is h11.IDLE and not self._head_started:
            self._conn.close()  # idle keep-alive connection: close quietly
        elif h.their_state is h11.IDLE:
            self._conn.stats.timeouts += 1
            self._error(408, "the request head did not arrive in time", now)
        else:
            self._conn.stats.timeouts += 1
            self._error(408, "the request body stopped arriving", now)

    def shutdown(self, now: float) -> None:
        assert self._h11 is not None and self._conn is not None
        self._close_when_done = True
        if self._idle:
            self._conn.close()

    def connection_lost(self, error: BaseException | None) -> None:
        if self._job is None:
            self._close_source()
        # else a worker may be inside the response body: the job's return closes it

    # -- the event loop over h11 ----------------------------------------------------------------

    @property
    def _idle(self) -> bool:
        h = self._h11
        assert h is not None
        return (
            h.our_state is h11.IDLE
            and h.their_state is h11.IDLE
            and not self._head_started
            and self._job is None
        )

    def _start_head(self, now: float) -> None:
        """The first byte of a request head: the header deadline runs from here (slowloris)."""
        if not self._head_started:
            self._head_started = True
            self.deadline = now + self._limits.header_timeout

    def _request_line_ok(self, data: bytes, now: float) -> bool:
        """Answer 414 as soon as a request line grows past the URL limit.

        h11 would only see an over-long line once the whole head outgrows its buffer limit
        (and answer 431), or parse it if it came in one piece.
        """
        if self._line_bytes < 0:
            return True
        if len(self._line_prefix) < len(_HEAD_PREFIX):
            self._line_prefix += data[: len(_HEAD_PREFIX) - len(self._line_prefix)]
        newline = data.find(b"\n")
        self._line_bytes += len(data) if newline < 0 else newline
        if self._line_bytes > self._limits.max_url_length + REQUEST_LINE_SLACK:
            self._error(414, _URL_TOO_LONG, now)
            return False
        if newline >= 0:
            self._line_bytes = -1
        return True

    def _process(self, now: float) -> None:
        """Pull events from h11 until it needs data, pauses, or we must wait."""
        if self._processing:
            return
        self._processing = True
        h = self._h11
        conn = self._conn
        assert h is not None and conn is not None
        try:
            while self._job is None and not conn.closing:
                if h.our_state is h11.DONE and h.their_state is h11.DONE:
                    if not conn.writable:
                        return  # no next response until the client reads: resume_writing
                    if not self._next_cycle(now):
                        return
                if h.their_state is h11.MUST_CLOSE or h.their_state is h11.CLOSED:
                    return  # whatever follows a request that ends the connection is ignored
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError as exc:
                    head = self._request is None and exc.error_status_hint == 431
                    why = _HEAD_TOO_LARGE if head else _without_echo(str(exc))
                    self._error(exc.error_status_hint, why, now)
                    return
                kind = type(event)
                if kind is h11.Data:
                    self._on_body(event.data, now)  # type: ignore[union-attr]
                elif kind is h11.Request:
                    self._on_request(event, now)  # type: ignore[arg-type]
                elif kind is h11.EndOfMessage:
                    self._on_body_end(now)
                elif kind is h11.ConnectionClosed:
                    if not self._response_started and self._job is None:
                        conn.close()  # else the response ends in MUST_CLOSE and closes
                    return
                else:  # NEED_DATA or PAUSED
                    return
        finally:
            self._processing = False

    def _next_cycle(self, now: float) -> bool:
        """Both sides finished a request/response: reset for the next one (or close)."""
        h = self._h11
        conn = self._conn
        assert h is not None and conn is not None
        if self._close_when_done:
            conn.close()
            return False
        h.start_next_cycle()
        self._reset_request()
        pending, _closed = h.trailing_data
        if not pending:
            self.deadline = now + conn.limits.idle_timeout
            return True
        self._start_head(now)  # a pipelined request is already here
        return self._request_line_ok(pending, now)

    def _reset_request(self) -> None:
        self._close_source()
        self._request = None
        self._head = None
        self._reader = None
        self._body_size = 0
        self._response_started = False
        self._head_started = False
        self._line_bytes = 0
        self._line_prefix = b""

    # -- requests -----------------------------------------------------------------------------

    def _on_request(self, event: h11.Request, now: float) -> None:
        conn = self._conn
        assert conn is not None
        conn.stats.requests += 1
        self.deadline = None
        limits = conn.limits
        head = self._head = _Head(event)  # before any error: a HEAD's error has no body either
        if len(event.target) > limits.max_url_length:
            self._error(414, _URL_TOO_LONG, now)
            return
        if head.size > limits.max_header_size:  # it came in one piece, or h11 had 431'd
            self._error(431, _HEAD_TOO_LARGE, now)
            return
        if event.method == b"CONNECT":  # h11 would switch protocols on any 2xx answer
            self._error(501, "CONNECT tunnels are not supported by this server", now)
            return
        if head.length is not None and head.length > limits.max_body_size:
            self._error(413, f"the request body exceeds {limits.max_body_size} bytes", now)
            return
        request = Request(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            head.headers,
            event.http_version.decode("ascii"),
            client=conn.peer[:2] if conn.peer else None,
            server=conn.local[:2] if conn.local else None,
            tls=conn.tls_info,
        )
        self._request = request
        self._call_app(lambda: self.app(request), self._app_returned, now)

    def _app_returned(self, result: Response | None, now: float) -> None:
        request = self._request
        h = self._h11
        assert request is not None and h is not None
        self._reader = request.body_reader
        if self._reader is not None and h.their_state is h11.SEND_BODY:
            self.deadline = now + self._limits.body_timeout
            if h.they_are_waiting_for_100_continue:
                self._write(h.send(_CONTINUE))
        if result is not None:
            self._start_response(result, now)
        elif self._reader is None:
            self._fail("the application returned no response and read no body", now)

    def _on_body(self, data: bytes, now: float) -> None:
        limits = self._limits
        self._body_size += len(data)
        if self._body_size > limits.max_body_size:
            self._error(413, f"the request body exceeds {limits.max_body_size} bytes", now)
            return
        self.deadline = now + limits.body_timeout
        reader = self._reader
        if reader is not None:
            self._call_app(lambda: reader.data(data), self._ignore_result, now)

    def _on_body_end(self, now: float) -> None:
        self.deadline = None
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._call_app(reader.end, self._body_ended, now)

    def _body_ended(self, result: Response | None, now: float) -> None:
        if result is not None:
            self._start_response(result, now)
        elif not self._response_started:
            self._fail("the body reader's end() returned no response", now)

    def _ignore_result(self, _result: object, _now: float) -> None:
        pass

    # -- calling the application ----------------------------------------------------------------

    def _call_app(
        self, call: Callable[[], Any], then: Callable[[Any, float], None], now: float
    ) -> None:
        """Run application code here, or as a job when the app is blocking."""
        if not self._blocking:
            try:
                result = call()
            except Exception:
                log.exception("application error")
                self._fail("the application raised an exception", now)
                return
            then(result, now)
            return

        def done(job: Job, now: float) -> None:
            if job.error is not None:
                log.error("application error", exc_info=job.error)
                self._fail("the application raised an exception", now)
            else:
                then(job.result, now)

        self._submit(call, done)

    def _submit(self, call: Callable[[], Any], then: Callable[[Job, float], None]) -> None:
        """Hand ``call`` to the driver's workers; ``then(job, now)`` applies its outcome.

        No client deadline runs while a job is out: reading is paused, so a body that stops
        arriving meanwhile is the server's doing, not the client's.
        """
        conn = self._conn
        h = self._h11
        assert conn is not None and h is not None
        self.deadline = None

        def done(job: Job, now: float) -> None:
            self._job = None
            if conn.closing:
                self._close_source()  # connection_lost left it to us
                _discard(job.result)  # a response the app returned meanwhile
                return
            then(job, now)
            if self._pipe is not None:
                self._pump(now)  # what this job wrote into the response's Pipe
            idle_body = self._job is None and self.deadline is None
            if idle_body and h.their_state is h11.SEND_BODY:
                self.deadline = now + self._limits.body_timeout
            self._process(now)

        self._job = conn.submit_job(call, done)

    def _fail(self, why: str, now: float) -> None:
        self._error(500, why, now, log_level=logging.ERROR)

    # -- responses ------------------------------------------------------------------------------

    @property
    def _limits(self) -> Limits:
        assert self._conn is not None
        return self._conn.limits

    def _write(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.write(data)

    def _base_headers(self, headers: list[tuple[bytes, bytes]], now: float) -> None:
        conn = self._conn
        assert conn is not None
        if not _has(headers, b"date"):
            headers.append((b"date", _DATE(conn.wall_time(now))))
        if not _has(headers, b"server"):
            headers.append((b"server", self._server_header))

    def _must_close(self) -> bool:
        """Whether this response has to end the connection."""
        h = self._h11
        assert h is not None
        if self._close_when_done:
            return True
        if h.their_state is not h11.SEND_BODY or self._reader is not None:
            return False
        # The app answered without reading the body: drain a small rest, else close.
        if h.they_are_waiting_for_100_continue:
            return True
        head = self._head
        assert head is not None
        if head.chunked:
            return True  # the rest's size is unknown
        return (head.length or 0) - self._body_size > DRAIN_LIMIT

    def _start_response(self, response: Response, now: float) -> None:
        h = self._h11
        request = self._request
        assert h is not None and request is not None
        if self._response_started:
            log.error("application produced a second response for %r; ignored", request)
            _discard(response)
            return
        # Everything the application handed over is checked before the first byte goes out:
        # up to here a mistake is a clean 500, afterwards only an abort is left.
        payload: bytes | None = None
        chunks: Iterator[bytes] | None = None
        try:
            if not isinstance(response, Response):
                raise TypeError(f"expected a Response, got {type(response).__name__}")
            headers = _header_list(response.headers)
            body = response.body
            no_body = request.method == "HEAD" or response.status in _NO_BODY_STATUSES
            if isinstance(body, str):
                payload = body.encode("utf-8")
                if not _has(headers, b"content-type"):
                    headers.append((b"content-type", b"text/plain; charset=utf-8"))
            elif isinstance(body, (bytes, bytearray, memoryview)):
                payload = bytes(body)
            elif not isinstance(body, Pipe):
                chunks = iter(body)
            if payload is not None:
                _fixed_length(headers, len(payload), response.status, no_body)
            self._base_headers(headers, now)
            if self._must_close():
                self._close_when_done = True
                headers.append((b"connection", b"close"))
            head = h11.Response(
                status_code=response.status,
                headers=headers,
                reason=_REASONS.get(response.status, b""),
            )
        except (h11.LocalProtocolError, TypeError, ValueError, UnicodeError) as exc:
            log.error("application returned an invalid response for %r: %s", request, exc)
            _discard(response)
            self._fail("the application returned an invalid response", now)
            return
        self._response_started = True
        if payload is None:
            self._source = body
        try:
            out = h.send(head)
            if payload is not None or no_body:
                if payload and not no_body:
                    out += h.send(h11.Data(data=payload))
                out += h.send(h11.EndOfMessage())
                self._write(out)
                self._response_finished(now)
                return
            self._write(out)
        except h11.LocalProtocolError as exc:
            self._broken_response(exc)
            return
        if isinstance(body, Pipe):
            self._pipe = body
            body.set_waiter(self._pipe_ready)
        else:
            self._chunks = chunks
        self._pump(now)

    def _pipe_ready(self) -> None:
        conn = self._conn
        if conn is None or self._job is not None or conn.closing:
            return  # with a job out the Pipe may be written on its worker: the job's return pumps
        try:
            self._pump(conn.now)
            self._process(conn.now)
        except Exception:
            log.exception("response pipe failed")
            conn.abort("internal error while streaming a response")

    def _pump(self, now: float) -> None:
        """Move response body chunks to the connection while it is writable."""
        h = self._h11
        conn = self._conn
        assert h is not None and conn is not None
        pipe = self._pipe
        if pipe is not None:
            if not conn.writable or self._job is not None:
                return  # resume_writing or the job's return comes back here
            chunk = pipe.take()
            try:
                if chunk:
                    self._write(h.send(h11.Data(data=chunk)))
                if pipe.closed:
                    self._write(h.send(h11.EndOfMessage()))
                    self._response_finished(now)
            except h11.LocalProtocolError as exc:
                self._broken_response(exc)
            return
        chunks = self._chunks
        if chunks is None or self._job is not None:
            return
        if self._blocking:
            if conn.writable:
                self._submit(lambda: _pull(chunks), self._pulled)
            return
        empty = 0
        try:
            while conn.writable and not conn.closing:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    self._write(h.send(h11.EndOfMessage()))
                    self._response_finished(now)
                    return
                if chunk:
                    self._write(h.send(h11.Data(data=chunk)))
                    empty = 0
                else:
                    empty = _count_empty(empty)
        except h11.LocalProtocolError as exc:
            self._broken_response(exc)
        except Exception:
            log.exception("response body iterator failed")
            conn.abort("response body iterator failed")

    def _pulled(self, job: Job, now: float) -> None:
        h = self._h11
        conn = self._conn
        assert h is not None and conn is not None
        if job.error is not None:
            log.error("response body iterator failed", exc_info=job.error)
            conn.abort("response body iterator failed")
            return
        chunks, finished = job.result
        try:
            out = b"".join(h.send(h11.Data(data=chunk)) for chunk in chunks if chunk)
            if finished:
                out += h.send(h11.EndOfMessage())
            self._write(out)
        except h11.LocalProtocolError as exc:
            self._broken_response(exc)
            return
        if finished:
            self._response_finished(now)
        else:
            self._pump(now)

    def _broken_response(self, exc: h11.LocalProtocolError) -> None:
        assert self._conn is not None
        log.error("response for %r broke HTTP framing: %s", self._request, exc)
        self._conn.stats.errors += 1
        self._conn.abort("the application's response broke HTTP framing")

    def _response_finished(self, now: float) -> None:
        h = self._h11
        conn = self._conn
        assert h is not None and conn is not None
        self._close_source()
        if h.our_state is h11.MUST_CLOSE or (self._close_when_done and h.their_state is h11.DONE):
            conn.close()
        elif h.their_state is h11.SEND_BODY and self._reader is None:
            self.deadline = now + self._limits.body_timeout  # draining the unread body

    def _close_source(self) -> None:
        source, self._source = self._source, None
        self._chunks = None
        if self._pipe is not None:
            self._pipe.set_waiter(None)
            self._pipe = None
        _close_body(source)

    def _error(self, status: int, why: str, now: float, *, log_level: int = logging.INFO) -> None:
        """Answer an error with ``status`` and a one-line reason, then close."""
        h = self._h11
        conn = self._conn
        assert h is not None and conn is not None
        log.log(log_level, "%r: HTTP %d: %s", conn, status, why)
        conn.stats.errors += 1
        if self._response_started or h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            conn.abort(f"HTTP {status} after the response began: {why}")
            return
        phrase = _REASONS.get(status, b"")
        body = b"%d %s: %s\n" % (status, phrase, why.encode("utf-8", "replace"))
        parsed = self._head
        if parsed is None and self._line_prefix == _HEAD_PREFIX:
            body = b""  # a HEAD h11 has not parsed: only an empty body keeps both sides framed
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        self._base_headers(headers, now)
        self._response_started = True
        try:
            out = h.send(h11.Response(status_code=status, headers=headers, reason=phrase))
            if parsed is None or parsed.method != b"HEAD":
                out += h.send(h11.Data(data=body))
            out += h.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            conn.abort(f"HTTP {status}: {why}")
            return
        self._write(out)
        self._close_source()
        conn.close()


def _close_body(body: object) -> None:
    """Close what the application gave as a body (a file, a generator) once it is done with."""
    close = getattr(body, "close", None)
    if close is not None and not isinstance(body, Pipe):
        try:
            close()
        except Exception:
            log.exception("closing the response body failed")


def _discard(result: object) -> None:
    """A response that will never be sent still has its body closed."""
    if isinstance(result, Response):
        _close_body(result.body)


def _without_echo(message: str) -> str:
    """h11's message minus the peer's bytes it quotes (never reflect input into a response)."""
    return _QUOTED_BYTES.sub("", message).rstrip() or "malformed request"


def _fixed_length(
    headers: list[tuple[bytes, bytes]], size: int, status: int, no_body: bool
) -> None:
    """Give a bytes body its Content-Length, or check the one the application set."""
    declared = [value for name, value in headers if name == b"content-length"]
    if not declared:
        if status not in _NO_BODY_STATUSES:
            headers.append((b"content-length", b"%d" % size))
    elif not no_body and declared != [b"%d" % size]:
        raise ValueError(f"Content-Length {declared!r} does not match a {size}-byte body")


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
