"""WSGI (PEP 3333) as the core sees it: the environ, ``start_response``, and the two halves
of one call.

A WSGI application blocks: it reads ``wsgi.input`` as the body arrives and produces its
response as an iterable, for the whole call, on one of the driver's worker threads
(``Limits.worker_threads``, ``--threads``: SPServer's half-sync/half-async model). The two
halves of a call talk only through a ``Channel``, the drivers' bounded hand-off
(``spcore.drivers.gateway.wsgi``):

* the loop half (``WSGIHost``, an spcore app, and its ``_Call`` per request), on the loop
  thread: it builds the environ and starts the job, puts each body piece into the channel
  (the body pauses while a window's worth waits for the worker: an upload of any size costs
  a window), turns the response parts handed back into the exchange's response, and returns
  credit for them as the client takes them;
* the worker half (``run_call``), on the worker: it calls the application, which takes the
  body through ``wsgi.input``, and hands its response back piece by piece, waiting (inside
  the channel) while a window of it is still on its way to the client; a response of one
  part (the common case) goes back in the job's result instead.

When the exchange ends first -- the client left, the body timed out, the response was cut --
the channel is aborted: the worker's next read or hand-over raises ``ClientDisconnected``,
the application unwinds, and its iterable's ``close()`` is called as always.
"""

from __future__ import annotations

import contextlib
import logging
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from ..errors import ClientDisconnected
from ..http.messages import Pipe, Request, Response

if TYPE_CHECKING:
    from types import TracebackType

    from ..http.messages import ResponseControl
    from ..jobs import Job

__all__ = [
    "BODY_WINDOW",
    "RESPONSE_WINDOW",
    "Channel",
    "ChannelFactory",
    "WSGIApp",
    "WSGIHost",
    "WSGIInput",
    "build_environ",
    "run_call",
]

log = logging.getLogger("spcore.wsgi")

#: Request body bytes that may wait for the worker before the body pauses.
BODY_WINDOW: Final = 256 * 1024
#: Response bytes the worker may hand over before the client has taken them.
RESPONSE_WINDOW: Final = 256 * 1024
#: How much ``wsgi.input.read()`` without a size, or ``readline()``, takes per wait.
_READ_CHUNK: Final = 64 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Callable[[bytes], None]]], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, "TracebackType | None"]


class Channel(Protocol):
    """The bounded hand-off between the loop thread and the worker running one call."""

    # -- the loop thread's --------------------------------------------------------------------

    def put(self, data: bytes) -> bool:
        """Body bytes for the worker; False once a window of them waits (pause the body,
        and the channel will hand the loop thread ``resume`` when the worker took enough)."""
        ...

    def put_end(self) -> None:
        """The body is complete."""
        ...

    def credit(self, size: int) -> None:
        """The client has taken ``size`` bytes of the response handed over."""
        ...

    def abort(self, reason: str) -> None:
        """The exchange is over: the worker's next ``take`` or ``give`` raises
        ``ClientDisconnected(reason)``."""
        ...

    # -- the worker's -------------------------------------------------------------------------

    def aborted(self) -> bool:
        """Whether ``abort`` was called."""
        ...

    def take(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body, waiting until some are there; ``b""`` at its
        end."""
        ...

    def give(self, fn: Callable[..., None], *args: Any, size: int) -> None:
        """Hand ``fn(*args)`` (a response part of ``size`` bytes) to the loop thread, once
        fewer than a window of the parts given before are still on their way."""
        ...


#: Makes the channel of a call: ``(call_soon_threadsafe, resume, body window, response
#: window)``, ``resume`` being what the loop thread runs when a paused body may go on.
ChannelFactory = Callable[[Callable[..., bool], Callable[[], None], int, int], Channel]


# -- the loop half -------------------------------------------------------------------------------


class WSGIHost:
    """An spcore app serving the WSGI application ``app`` (on the driver's workers).

    ``channel`` makes each call's hand-off (``spcore.drivers.gateway.wsgi.BlockingChannel``);
    ``root_path`` is the ``SCRIPT_NAME`` the application is mounted at (``--root-path``);
    ``multiprocess`` says whether other processes serve the same application (``--workers``).
    """

    def __init__(
        self,
        app: WSGIApp,
        channel: ChannelFactory,
        *,
        root_path: str = "",
        multiprocess: bool = False,
    ) -> None:
        self.app = app
        self._channel = channel
        self._root_path = root_path.rstrip("/")
        self._multiprocess = multiprocess

    def __call__(self, request: Request) -> None:
        exchange = request.exchange
        transport = exchange.transport
        call = _Call(exchange)
        channel = self._channel(
            transport.call_soon_threadsafe, call.resume, BODY_WINDOW, RESPONSE_WINDOW
        )
        call.channel = channel
        environ = build_environ(
            request,
            WSGIInput(channel.take),
            root_path=self._root_path,
            multiprocess=self._multiprocess,
        )
        exchange.defer()
        exchange.on_disconnect(call.gone)
        request.read_body(call)
        app = self.app
        transport.submit_job(lambda: run_call(app, environ, channel, call), call.done)


class _Call:
    """The loop half of one call: the request body's reader and the response's producer."""

    def __init__(self, exchange: ResponseControl) -> None:
        self._exchange = exchange
        self.channel: Channel | None = None
        self._pipe: Pipe | None = None
        self._owed = 0  # response bytes the client has not taken, credit not yet returned

    # BodyReader
    def data(self, chunk: bytes) -> bool:
        assert self.channel is not None
        return self.channel.put(chunk)

    def end(self) -> None:
        assert self.channel is not None
        self.channel.put_end()

    # Handed to the loop thread by the channel and the worker.
    def resume(self) -> None:
        self._exchange.resume_body()

    def done(self, job: Job, now: float) -> None:
        """The job is back: the rest of its outcome went through the channel already, in
        order; a response of one part comes in its result (see ``run_call``)."""
        whole: Whole | None = job.result
        if whole is not None:
            status, headers, body = whole
            self.start(status, headers, body, True)

    def start(self, status: int, headers: list[tuple[str, str]], body: bytes, end: bool) -> None:
        exchange = self._exchange
        if end:
            exchange.respond(Response(status, headers, body))
            self._sent(len(body))
            return
        pipe = self._pipe = Pipe()
        exchange.respond(Response(status, headers, pipe))
        self.more(body, False)

    def more(self, body: bytes, end: bool) -> None:
        pipe = self._pipe
        assert pipe is not None and self.channel is not None
        if self._exchange.response_done:  # a HEAD's (or one cut short): nothing more is sent
            self.channel.abort("the response has ended")
            return
        pipe.write(body)
        if end:
            pipe.close()
        self._sent(len(body))

    def failed(self) -> None:
        """The application raised (its traceback was logged on the worker)."""
        self._exchange.error(500, "the application raised an exception")

    # The exchange's
    def gone(self) -> None:
        assert self.channel is not None
        self.channel.abort("the client disconnected")

    def _sent(self, size: int) -> None:
        """``size`` bytes went to the exchange: credit them once the client keeps up."""
        channel = self.channel
        assert channel is not None
        if self._exchange.writable or self._exchange.response_done:
            channel.credit(size)
            return
        if not self._owed:
            self._exchange.on_writable(self._drained)
        self._owed += size

    def _drained(self) -> None:
        owed, self._owed = self._owed, 0
        assert self.channel is not None
        self.channel.credit(owed)


# -- the worker half ---------------------------------------------------------------------------


#: A response of one part, returned by ``run_call``: its status, headers and body.
Whole = tuple[int, list[tuple[str, str]], bytes]


def run_call(app: WSGIApp, environ: dict[str, Any], channel: Channel, call: _Call) -> Whole | None:
    """Run one WSGI call on a worker thread (see the module docstring). Never raises.

    A response of one part, with nothing handed over before it, is returned (status,
    headers, body) instead: it goes back in the job's result, sparing the worker a call
    handed to the loop thread and the loop thread a round of its own for it.
    """
    if channel.aborted():
        return None  # the client left while the job waited for a worker
    response = _Responder(channel, call)
    result: Iterable[bytes] | None = None
    try:
        result = app(environ, response.start_response)
        if isinstance(result, (list, tuple)) and len(result) == 1:
            return response.whole(result[0])  # the whole body: one part, a Content-Length
        for chunk in result:
            response.send(chunk)
        response.finish()
    except ClientDisconnected as exc:
        log.info("WSGI call for %s ended early: %s", _target(environ), exc)
    except Exception:
        if channel.aborted():
            log.info("WSGI call for %s raised after the client left", _target(environ))
        else:
            log.exception("WSGI application error for %s", _target(environ))
            response.fail()
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing the WSGI response of %s failed", _target(environ))
    return None


class _Responder:
    """``start_response`` and ``write`` of one call, and handing its response over."""

    def __init__(self, channel: Channel, call: _Call) -> None:
        self._channel = channel
        self._call = call
        self._status: int | None = None
        self._headers: list[tuple[str, str]] = []
        self._sent = False  # the head went to the loop thread

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self._sent:  # too late to change the response: re-raise (PEP 3333)
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the frame
        elif self._status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        self._status = _status_code(status)
        if not isinstance(headers, list) or not all(
            type(h) is tuple and len(h) == 2 and type(h[0]) is str and type(h[1]) is str
            for h in headers
        ):
            raise TypeError("WSGI response headers must be a list of (str, str) tuples")
        self._headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: ``data`` goes out before ``write`` returns."""
        self.send(data)

    def send(self, data: bytes) -> None:
        data = _chunk(data)
        if data:  # an empty chunk sends nothing, not even the head (PEP 3333)
            self._give(data, False)

    def whole(self, data: bytes) -> Whole | None:
        """The response in one part, ``data`` its body, to return from the job; None once
        a part went before it (``write()``), or the exchange has ended (the hand-over says
        how, as any other)."""
        data = _chunk(data)
        if self._sent or self._channel.aborted():
            self._give(data, True)
            return None
        if self._status is None:
            raise RuntimeError("the WSGI application sent a body before start_response()")
        self._sent = True
        return self._status, self._headers, data

    def finish(self) -> None:
        self._give(b"", True)

    def fail(self) -> None:
        with contextlib.suppress(ClientDisconnected):  # (gone meanwhile: nobody to answer)
            self._channel.give(self._call.failed, size=0)

    def _give(self, data: bytes, end: bool) -> None:
        if self._status is None:
            raise RuntimeError("the WSGI application sent a body before start_response()")
        call = self._call
        if self._sent:
            self._channel.give(call.more, data, end, size=len(data))
        else:
            self._sent = True
            self._channel.give(call.start, self._status, self._headers, data, end, size=len(data))


def _chunk(data: bytes) -> bytes:
    """A body chunk as bytes (PEP 3333: bytes, or a bytes-like object)."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a WSGI body chunk must be bytes, not {type(data).__name__}")
        data = bytes(data)
    return data


def _status_code(status: str) -> int:
    if type(status) is not str or len(status) < 4 or status[3] != " " or not status[:3].isdigit():
        raise ValueError(f"{status!r} is not a WSGI status such as '200 OK'")
    return int(status[:3])


def _target(environ: dict[str, Any]) -> str:
    query = environ.get("QUERY_STRING")
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return f"{environ.get('REQUEST_METHOD')} {path}{'?' + query if query else ''}"


# -- the environ -----------------------------------------------------------------------------


def build_environ(
    request: Request,
    body: WSGIInput,
    *,
    root_path: str = "",
    multiprocess: bool = False,
) -> dict[str, Any]:
    """The WSGI environ of ``request`` (PEP 3333), whose body is read from ``body``.

    ``PATH_INFO`` is the percent-decoded path, as latin-1 (PEP 3333's "bytes as str");
    ``SCRIPT_NAME`` is ``root_path``, taken off the front of the path when the client sent
    it. The client (``REMOTE_ADDR``) and the server address are the PROXY header's when the
    listener expects one.
    """
    path = unquote_to_bytes(request.path).decode("latin-1")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        path = path[len(root_path) :]
    server = request.server
    client = request.client
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": root_path,
        "PATH_INFO": path,
        "QUERY_STRING": request.query,
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "SERVER_NAME": str(server[0]) if server else "localhost",
        "SERVER_PORT": str(server[1]) if server else ("443" if request.tls else "80"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": body,
        "wsgi.input_terminated": True,  # the body ends where the request's does, chunked too
        "wsgi.errors": _ERRORS,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": wsgiref.util.FileWrapper,
    }
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    keys = _KEYS
    for name, value in request.headers:
        key = keys.get(name)
        if key is None:
            key = _key(name)
            if key is None:
                continue
        text = value.decode("latin-1")
        if key in environ:  # a repeated field: one comma-separated value (RFC 9110 §5.3)
            separator = "; " if key == "HTTP_COOKIE" else ","
            environ[key] = environ[key] + separator + text
        else:
            environ[key] = text
    return environ


#: The two headers that have environ keys of their own (PEP 3333).
_CGI_KEYS: Final = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
#: The environ key of each header name seen (the same few come back); reset when full.
_KEYS: dict[bytes, str] = dict(_CGI_KEYS)
_MAX_KEYS: Final = 1024


def _key(name: bytes) -> str | None:
    if b"_" in name:
        # "X_Forwarded_For" would pass for "X-Forwarded-For" once both are HTTP_X_...: such
        # names are dropped, as gunicorn, nginx and Apache do (CVE-2015-0219 and its kin).
        return None
    if len(_KEYS) >= _MAX_KEYS:
        _KEYS.clear()
        _KEYS.update(_CGI_KEYS)
    key = _KEYS[name] = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    return key


class WSGIInput:
    """``wsgi.input``: the request body, read as it arrives (``take`` blocks for it)."""

    def __init__(self, take: Callable[[int], bytes]) -> None:
        self._take = take
        self._buffer = bytearray()
        self._ended = False

    def read(self, size: int | None = -1) -> bytes:
        if size == 0:
            return b""
        if size is None or size < 0:
            while self._fill(_READ_CHUNK):
                pass
            return self._split(len(self._buffer))
        if not self._buffer:
            self._fill(size)
        return self._split(min(size, len(self._buffer)))

    def readline(self, size: int | None = -1) -> bytes:
        limit = None if size is None or size < 0 else size
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if limit is not None and len(self._buffer) >= limit:
                end = limit
                break
            start = len(self._buffer)
            if not self._fill(_READ_CHUNK):
                end = len(self._buffer)
                break
        return self._split(end if limit is None else min(end, limit))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _fill(self, size: int) -> bool:
        """Wait for more of the body; False at its end."""
        if self._ended:
            return False
        data = self._take(size)
        if not data:
            self._ended = True
            return False
        self._buffer += data
        return True

    def _split(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class _ErrorStream:
    """``wsgi.errors``: what the application writes goes to the log, each write a line (so
    one stream serves every call, whatever thread writes)."""

    def write(self, text: str) -> int:
        line = text.rstrip("\n")
        if line:
            log.warning("wsgi.errors: %s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


_ERRORS: Final = _ErrorStream()
