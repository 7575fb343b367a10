"""An in-memory driver for tests: a server ``Connection`` wired to a client stack, no sockets.

``MemLink`` plays the driver's part exactly as the contract says (feed, take output, honour
``reading``, ``write_eof`` and ``should_close``, run jobs, fire deadlines from a fake clock)
and the client's part with an optional client TLS engine. Bytes can be delivered in
whole buffers or split into chunks of any size, down to one byte, and the client's socket
can stop taking output (``window``, ``let_client_read``) to exercise back-pressure.
"""

from __future__ import annotations

from collections.abc import Callable

import h11

from spcore.server import Listener, Server
from spcore.tls import ClientContext, ClientTLS, ServerTLS
from spcore.tls.engine import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    RaggedEOF,
    TLSEngine,
    TLSInfo,
)

PEER = ("127.0.0.1", 50000)
LOCAL = ("127.0.0.1", 8443)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now


class MemLink:
    """One connection: client side in the test, server side in the core."""

    def __init__(
        self,
        server: Server,
        listener: Listener | None = None,
        *,
        client: ClientTLS | None = None,
        client_engine: str = "openssl",
        server_hostname: str | None = "localhost",
        chunk: int | None = None,
        clock: Clock | None = None,
        run_jobs: bool = True,
    ) -> None:
        self.server = server
        self.clock = clock or Clock()
        self.chunk = chunk
        self.run_jobs = run_jobs
        self.listener = listener or server.listeners[0]
        self.conn = server.accept(self.listener, PEER, LOCAL, self.clock.now)
        self.client: TLSEngine | None = None
        if self.listener.tls is not None and client is not None:
            self.client = ClientContext(client, client_engine).new_engine(server_hostname)
        self.received = bytearray()  # what the client application read (plaintext)
        self.raw_received = bytearray()  # what reached the client's socket (ciphertext)
        self.client_info: TLSInfo | None = None
        self.client_events: list[object] = []
        self.client_error: Exception | None = None
        self.to_server = bytearray()  # client bytes the server has not read yet
        self.server_eof_pending = False
        self.client_got_eof = False  # the server shut its write side or closed
        self.closed = False
        self.jobs_pending: list[object] = []
        #: How many more bytes the client's socket takes (None: all); 0 = a client not reading.
        self.window: int | None = None
        self.sync()
        if self.client is not None:
            self.client.start()
            self.to_server += self.client.data_to_send()
            self.pump()

    # -- the client side ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """The client application writes ``data``."""
        if self.client is not None:
            self.client.send(data)
            self.to_server += self.client.data_to_send()
        else:
            self.to_server += data
        self.pump()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the wire, bypassing the client's TLS."""
        self.to_server += data
        self.pump()

    def client_close(self, *, notify: bool = True) -> None:
        """The client closes: close_notify (if TLS and asked) then TCP FIN."""
        if self.client is not None and notify:
            self.client.close()
            self.to_server += self.client.data_to_send()
        self.server_eof_pending = True
        self.pump()

    def let_client_read(self, n: int | None) -> None:
        """Let the client's socket take ``n`` more bytes (None: no limit from now on)."""
        self.window = None if n is None else (self.window or 0) + n
        self.pump()

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        return data

    # -- the driver side ------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the fake clock and fire the connection's deadline if it passed."""
        self.clock.now += seconds
        deadline = self.conn.deadline
        if deadline is not None and deadline <= self.clock.now and not self.closed:
            self.conn.on_deadline(self.clock.now)
        self.pump()

    def pump(self, rounds: int = 10_000) -> None:
        for _ in range(rounds):
            if not self._step():
                return
        raise AssertionError("MemLink did not settle")

    def _step(self) -> bool:
        progressed = self.sync()
        conn = self.conn
        if self.closed:
            return progressed
        if conn.reading and self.to_server:
            size = len(self.to_server) if self.chunk is None else self.chunk
            data = bytes(self.to_server[:size])
            del self.to_server[:size]
            conn.receive_data(data, self.clock.now)
            return True
        if conn.reading and self.server_eof_pending and not self.to_server:
            self.server_eof_pending = False
            conn.receive_data(b"", self.clock.now)
            return True
        if self.run_jobs:
            for job in conn.take_jobs():
                job.run()
                conn.job_done(job, self.clock.now)
                progressed = True
        return progressed

    def sync(self) -> bool:
        """What a driver does after each call: close, write, shut down, for this and woken."""
        progressed = False
        for conn_link in [self, *self._woken_links()]:
            progressed |= conn_link._sync_one()
        return progressed

    def _woken_links(self) -> list[MemLink]:
        links = []
        for conn in self.server.take_woken():
            link = getattr(conn, "_memlink", None)
            if link is not None and link is not self:
                links.append(link)
        return links

    def _sync_one(self) -> bool:
        conn = self.conn
        conn._memlink = self  # type: ignore[attr-defined]
        if self.closed:
            return False
        if conn.should_close:
            self.closed = True
            conn.connection_lost(None, self.clock.now)
            self._client_eof()
            return True
        progressed = False
        out = conn.outgoing()
        if out:
            data = b"".join(bytes(b) for b in out)
            total = len(data) if self.window is None else min(len(data), self.window)
            data = data[:total]
            if total:
                step = total if self.chunk is None else self.chunk
                for start in range(0, total, step):
                    self._deliver(data[start : start + step])
                if self.window is not None:
                    self.window -= total
                conn.sent(total, self.clock.now)
                progressed = True
        if conn.write_eof:
            conn.write_eof_done(self.clock.now)
            self._client_eof()
            progressed = True
        return progressed

    def _deliver(self, data: bytes) -> None:
        self.raw_received += data
        if self.client is None:
            self.received += data
            return
        self._client_feed(data)

    def _client_eof(self) -> None:
        if self.client_got_eof:
            return
        self.client_got_eof = True
        if self.client is not None:
            self._client_feed(b"")

    def _client_feed(self, data: bytes) -> None:
        assert self.client is not None
        if self.client_error is not None:
            return
        try:
            events = self.client.receive_data(data)
        except Exception as exc:  # the test inspects it
            self.client_error = exc
            return
        finally:
            self.to_server += self.client.data_to_send()
        for event in events:
            self.client_events.append(event)
            if isinstance(event, ApplicationData):
                self.received += event.data
            elif isinstance(event, HandshakeComplete):
                self.client_info = event.info

    @property
    def client_saw_close_notify(self) -> bool:
        return any(isinstance(e, CloseNotify) for e in self.client_events)

    @property
    def client_saw_ragged_eof(self) -> bool:
        return any(isinstance(e, RaggedEOF) for e in self.client_events)


def http_server(
    app: Callable[..., object],
    *,
    tls: ServerTLS | None = None,
    tls_engine: str = "openssl",
    **limits: object,
) -> Server:
    from spcore.config import Limits
    from spcore.http.protocol import HTTPProtocol

    listener = Listener(protocol=lambda: HTTPProtocol(app), tls=tls, tls_engine=tls_engine)  # type: ignore[arg-type]
    server = Server([listener], Limits(**limits))  # type: ignore[arg-type]
    server.start(1000.0, 1_700_000_000.0)
    return server


def read_response(client: h11.Connection) -> tuple[list[int], h11.Response, bytes]:
    """The next complete response from the data ``client`` was given: its informational
    statuses, its head and its body; an incomplete one fails the test."""
    informational: list[int] = []
    body = bytearray()
    head: h11.Response | None = None
    while True:
        event = client.next_event()
        if isinstance(event, h11.InformationalResponse):
            informational.append(event.status_code)
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return informational, head, bytes(body)
        else:
            raise AssertionError(f"incomplete response: {event!r}")
