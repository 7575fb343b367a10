"""HTTP/1.1 over a connection: a codec for the wire format, one exchange per request.

``HTTPProtocol`` is the connection-level part of HTTP/1.1: it feeds what arrives to its codec
(h11 or httptools, ``spcore.http.codec``), turns each request's events into an ``Exchange``
(``spcore.http.exchange``: the application call, the body, the response) and answers
pipelined requests in order, one at a time and only as fast as the client reads the answers.
It keeps the connection's timers (idle keep-alive, header and body timeouts, answered 408) and
answers what the codec refuses (400, 414, 431, 501, 505) before closing.

Output is gathered while a batch of input is processed (a *round*) and written once at its
end: a response whose parts are at hand costs one write (one TLS record), a burst of
pipelined requests one write for all their responses, and a request that turns out broken
later in the same round can still be answered with its error instead of a response already
half sent.

After ``101 Switching Protocols`` (``Exchange.upgrade``) the connection belongs to another
protocol layer: every call is passed on to it, starting with the bytes the client sent after
the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..layer import ProtocolLayer
from .access import AccessSink, response_ended
from .codec import (
    CLOSED,
    END_OF_REQUEST,
    NEED_DATA,
    PAUSED,
    Codec,
    Data,
    RequestError,
    RequestHead,
    ResponseHead,
)
from .codecs import codec_factory
from .dates import DateCache
from .exchange import Exchange, error_response, request_for
from .messages import App

if TYPE_CHECKING:
    from ..layer import Transport

__all__ = ["HTTPProtocol"]

log = logging.getLogger("spcore.http")

_DATE: Final = DateCache()  # one per process: the header is the same on every connection
#: A round's output is written as soon as it reaches this much.
COALESCE_BYTES: Final = 64 * 1024
_IDLE_REASON: Final = "the request head did not arrive in time"
_BODY_REASON: Final = "the request body stopped arriving"


class HTTPProtocol(ProtocolLayer):
    """One HTTP/1.1 server connection running ``app`` (see ``spcore.http.messages``).

    ``http`` names the codec: "auto" (httptools when it can be imported, else h11), "h11" or
    "httptools". ``access_log`` gets an ``AccessRecord`` per response (it must not block:
    ``spcore.http.access``).
    """

    def __init__(
        self,
        app: App,
        *,
        http: str = "auto",
        server_header: bytes = b"spcore",
        access_log: AccessSink | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.codec_name, self._new_codec = codec_factory(http)
        self._server_header = (b"server", server_header)
        self._blocking = bool(getattr(app, "blocking", False))
        self._conn: Transport | None = None
        self._codec: Codec | None = None
        self._context: tuple[Any, Any, Any] = (None, None, None)
        self._exchange: Exchange | None = None
        self._processing = False  # a round is under way
        self._out: list[bytes] = []  # this round's output, written at its end
        self._out_size = 0
        self._cycle_due = False  # a request/response is complete: read the next one
        self._head_started = False  # bytes of the next request head have arrived
        self._read_ahead = False  # bytes came after a request whose response is pending
        self._close_now = False  # close once this round's output is written
        self._close_when_done = False  # shutdown requested
        self._upgraded: ProtocolLayer | None = None  # the layer after a 101
        self._date: tuple[bytes, bytes] = (b"date", b"")
        self._date_until = float("-inf")

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (what the codec holds): bounded by the limits."""
        return self._codec.buffered if self._codec is not None else 0

    # -- what an exchange uses (spcore.http.exchange.Carrier) -----------------------------------

    @property
    def transport(self) -> Transport:
        assert self._conn is not None
        return self._conn

    @property
    def writable(self) -> bool:
        conn = self._conn
        assert conn is not None
        # This round's output counts as the connection's: it is written when the round ends.
        return conn.writable and (
            not self._out or conn.output_size + self._out_size < conn.limits.write_high_water
        )  # (_out_size counts only while _out has something)

    @property
    def in_round(self) -> bool:
        return self._processing

    @property
    def closing_after(self) -> bool:
        return self._close_when_done

    def send_interim(self, status: int) -> None:
        assert self._codec is not None
        self._emit(self._codec.interim(status, []))

    def send_response(self, head: ResponseHead, body: bytes, end: bool) -> None:
        assert self._codec is not None
        data = self._codec.response(head, body, end)
        if self._processing and not self._out:  # the common case, _emit's first branch
            self._out.append(data)
            self._out_size = len(data)
        else:
            self._emit(data)

    def send_data(self, body: bytes, end: bool) -> None:
        assert self._codec is not None
        self._emit(self._codec.data(body, end))

    def date(self, now: float) -> tuple[bytes, bytes]:
        """The ``Date`` header at ``now``: looked up once per second of the driver's clock."""
        if now >= self._date_until:
            assert self._conn is not None
            wall = self._conn.wall_time(now)
            self._date = _DATE(wall)
            self._date_until = now + (1 - wall % 1)  # when the wall clock's second changes
        return self._date

    def run(self, step: Callable[[float], None] | None, now: float) -> None:
        self._round(step, now)
        assert self._conn is not None
        self._conn.sync()  # called from outside: reading or the deadline may have changed

    # -- ProtocolLayer ------------------------------------------------------------------------

    @property
    def reading(self) -> bool:
        if self._upgraded is not None:
            return self._upgraded.reading
        if self._codec is None or self._close_now or self._cycle_due:
            return False
        exchange = self._exchange
        if exchange is None or exchange.wants_body:
            return True
        # A complete request waits for its response. Reading goes on, so that a client that
        # leaves meanwhile is noticed at once (its EOF or reset: on_client_eof, on_disconnect,
        # ASGI's http.disconnect), but only until bytes of a next request arrive: a pipelining
        # client's requests then wait in the kernel, having cost one read at most. (Not while
        # a job is out: nothing would be told before it returns.)
        return (
            exchange.request_done
            and not exchange.response_done
            and not exchange.busy
            and not self._read_ahead
            and not self._codec.pending
            and not self._codec.buffered
        )

    def connection_made(self, conn: Transport, now: float) -> None:
        self._conn = conn
        self._codec = self._new_codec(conn.limits)
        proxy = conn.proxy
        # The PROXY header names the client (conn.peer already) and the address it reached.
        local = proxy.destination if proxy is not None and proxy.destination else conn.local
        self._context = (
            conn.peer[:2] if conn.peer else None,
            local[:2] if local else None,
            conn.tls_info,
        )
        self.deadline = now + conn.limits.idle_timeout

    def data_received(self, data: bytes, now: float) -> None:
        if self._upgraded is not None:
            self._pass_on(self._upgraded.data_received, data, now)
            return
        assert self._codec is not None and self._conn is not None
        exchange = self._exchange
        if exchange is None:
            if not self._head_started:
                # The first byte of a request head: the header deadline runs from here
                # (slowloris).
                self._head_started = True
                self.deadline = now + self._conn.limits.header_timeout
        elif exchange.request_done:
            self._read_ahead = True
        self._codec.receive_data(data)
        self._round(None, now)

    def eof_received(self, clean: bool, now: float) -> None:
        if self._upgraded is not None:
            self._pass_on(self._upgraded.eof_received, clean, now)
            return
        assert self._codec is not None
        self._codec.receive_data(b"")
        exchange = self._exchange
        if exchange is not None and exchange.request_done:
            exchange.client_eof()
        self._round(None, now)

    def resume_writing(self, now: float) -> None:
        if self._upgraded is not None:
            self._pass_on(self._upgraded.resume_writing, now)
            return
        self._round(self._resume_writing, now)

    def timer_expired(self, now: float) -> None:
        if self._upgraded is not None:
            self._pass_on(self._upgraded.timer_expired, now)
            return
        self._round(self._timer_expired, now)

    def shutdown(self, now: float) -> None:
        if self._upgraded is not None:
            self._pass_on(self._upgraded.shutdown, now)
            return
        assert self._conn is not None
        self._close_when_done = True
        if self._exchange is None and not self._head_started and not self._processing:
            self._conn.close()

    def connection_lost(self, error: BaseException | None) -> None:
        if self._upgraded is not None:
            self._upgraded.connection_lost(error)
            return
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.connection_lost()

    # -- rounds -----------------------------------------------------------------------------

    def _round(self, first: Callable[[float], None] | None, now: float) -> None:
        """Run ``first``, then the requests' events until one must wait; then write out."""
        if self._processing:
            if first is not None:
                first(now)
            return
        conn = self._conn
        assert conn is not None
        self._processing = True
        try:
            if first is not None:
                first(now)
            if not conn.closing:
                self._process(now)
            exchange = self._exchange
            if exchange is not None:
                exchange.flush(now)
        finally:
            self._processing = False
        out = self._out
        if out:
            self._out = []
            conn.write(out[0] if len(out) == 1 else b"".join(out))
        if self._close_now:
            conn.close()
        elif exchange is not None:
            if exchange.busy or exchange.body_paused:
                self.deadline = None  # the server's doing, not the client's
            elif self.deadline is None and exchange.wants_body and _has_body(exchange.head):
                self.deadline = now + conn.limits.body_timeout

    def _emit(self, data: bytes) -> None:
        if not self._processing:
            assert self._conn is not None
            self._conn.write(data)
            return
        self._out_size = self._out_size + len(data) if self._out else len(data)
        self._out.append(data)
        if self._out_size >= COALESCE_BYTES:
            self._write_out()

    def _write_out(self) -> None:
        out = self._out
        if out:
            assert self._conn is not None
            self._out = []
            self._conn.write(out[0] if len(out) == 1 else b"".join(out))

    def _process(self, now: float) -> None:
        """Pull the codec's events until they run out or the exchange must wait.

        Whatever closes the connection during a round goes through here: an exchange that
        must close (its ``close``, also after an abort) or a handler that returns False.
        """
        codec = self._codec
        assert codec is not None
        handlers = _HANDLERS
        while True:
            exchange = self._exchange
            if exchange is not None:
                if exchange.response_done:
                    if exchange.close or self._close_when_done:
                        self._close_now = True
                        return
                    if exchange.switch is not None and exchange.request_done:
                        self._switch(exchange.switch, now)
                        return
                    if exchange.request_done:
                        self._exchange = None
                        self._cycle_due = True
                        if not self._next_cycle(now):
                            return
                    elif not exchange.wants_body:
                        return  # (draining the unread body: only a job stops it)
                elif not exchange.wants_body:
                    return
            elif self._cycle_due and not self._next_cycle(now):
                return
            event = codec.next_event()
            handler = handlers[type(event)]
            if handler is None or not handler(self, event, now):
                return  # (None: NEED_DATA or PAUSED)

    def _next_cycle(self, now: float) -> bool:
        """A request and its response are complete: read the next one, once the client has
        read enough of the answers (pipelined requests wait in the kernel meanwhile)."""
        conn = self._conn
        codec = self._codec
        assert conn is not None and codec is not None
        if self._out and not self.writable:
            return False  # resume_writing comes back here
        if not conn.writable:
            return False
        self._cycle_due = False
        self._read_ahead = False
        codec.start_next_cycle()
        limits = conn.limits
        if codec.pending:
            self._head_started = True
            self.deadline = now + limits.header_timeout
        else:
            self._head_started = False
            self.deadline = now + limits.idle_timeout
        return True

    # -- events -----------------------------------------------------------------------------

    def _on_head(self, head: RequestHead, now: float) -> bool:
        conn = self._conn
        assert conn is not None
        conn.stats.requests += 1
        self.deadline = None
        request = request_for(head, self._context)
        exchange = self._exchange = Exchange(
            self, conn, head, request, self.app, self._blocking, self._server_header
        )
        exchange.start(now)
        return True

    def _on_data(self, event: Data, now: float) -> bool:
        exchange = self._exchange
        assert exchange is not None and self._conn is not None
        exchange.body_data(event.data, now)
        self.deadline = now + self._conn.limits.body_timeout if exchange.wants_body else None
        return True

    def _on_end(self, _event: object, now: float) -> bool:
        exchange = self._exchange
        assert exchange is not None
        self.deadline = None
        exchange.body_end(now)
        return True

    def _on_error(self, error: RequestError, now: float) -> bool:
        exchange = self._exchange
        if exchange is not None:
            exchange.fail(error.status, error.reason, now)
            return True
        self._error(error.status, error.reason, error.method, now)
        return False

    def _on_closed(self, _event: object, now: float) -> bool:
        # The client ended its side between requests: nothing more will come.
        self._close_now = True
        return False

    def _pass_on(self, call: Callable[..., None], *args: Any) -> None:
        """After a 101: a call for the layer switched to, and its deadline back."""
        assert self._upgraded is not None
        call(*args)
        self.deadline = self._upgraded.deadline

    def _switch(self, switch: tuple[ProtocolLayer, list[tuple[bytes, bytes]]], now: float) -> None:
        """101 Switching Protocols: from here on ``layer`` is this connection's protocol, and
        every call is passed on to it (its deadline and reading with them)."""
        codec = self._codec
        conn = self._conn
        assert codec is not None and conn is not None
        layer, headers = switch
        self._emit(codec.interim(101, headers))
        self._write_out()
        rest = codec.take_rest()
        self._exchange = None
        self._upgraded = layer
        layer.connection_made(conn, now)
        if rest and not conn.closing:
            layer.data_received(rest, now)
        self.deadline = layer.deadline

    def _error(self, status: int, reason: str, method: bytes | None, now: float) -> None:
        """Answer a request the codec refused (no exchange began), then close."""
        conn = self._conn
        assert conn is not None
        log.info("%r: HTTP %d: %s", conn, status, reason)
        conn.stats.errors += 1
        head, body = error_response(status, reason, method, [self.date(now), self._server_header])
        self.send_response(head, body, True)
        self._close_now = True
        response_ended(conn, self.access_log, None, status, len(body), now, now)

    def _resume_writing(self, now: float) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if self.deadline is not None and exchange.wants_body:
            # The connection held reading back for our output (its deadline was off): the
            # client's time to send more of the body starts now.
            assert self._conn is not None
            self.deadline = now + self._conn.limits.body_timeout
        exchange.resume_writing(now)

    def _timer_expired(self, now: float) -> None:
        conn = self._conn
        assert conn is not None
        self.deadline = None
        exchange = self._exchange
        if exchange is None and not self._head_started:
            self._close_now = True  # idle keep-alive connection: close quietly
            return
        if exchange is None:
            conn.stats.timed_out("header")
            self._error(408, _IDLE_REASON, None, now)
        else:
            conn.stats.timed_out("body")
            exchange.fail(408, _BODY_REASON, now)


def _has_body(head: RequestHead) -> bool:
    return head.chunked or bool(head.content_length)


#: What each event calls (None: wait for more input or the next cycle).
_HANDLERS: Final[dict[type, Callable[[HTTPProtocol, Any, float], bool] | None]] = {
    RequestHead: HTTPProtocol._on_head,
    Data: HTTPProtocol._on_data,
    type(END_OF_REQUEST): HTTPProtocol._on_end,
    RequestError: HTTPProtocol._on_error,
    type(NEED_DATA): None,
    type(PAUSED): None,
    type(CLOSED): HTTPProtocol._on_closed,
}
