"""An in-memory driver for tests: a server ``Connection`` wired to a client stack, no sockets.

``MemLink`` plays the driver's part exactly as the contract says (feed input while told to
read, carry out every action of ``next_action()``, run jobs, fire the timer from a fake clock)
and the client's part with an optional client TLS engine. Bytes can be delivered in
whole buffers or split into chunks of any size, down to one byte, and the client's socket
can stop taking output (``window``, ``let_client_read``) to exercise back-pressure.
"""

from __future__ import annotations

from collections.abc import Callable

import h11

from spcore.actions import Action, Close, Exit, Read, RunJobs, Send, SetTimer, ShutWrite, Sync
from spcore.connection import Connection
from spcore.jobs import Job
from spcore.layer import ProtocolLayer
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


class Driven:
    """A connection's driver side in memory: what its actions said (reading, the timer, the
    ``Send`` in flight, closed), carried out by ``carry_out``; a subclass says what a socket
    does with a ``Send`` (``push``: True if the kernel took it), with jobs, with the shut
    write side and with the close."""

    conn: Connection

    def __init__(self) -> None:
        self.reading = False
        self.timer: float | None = None
        self.sending: Send | None = None
        self.closed = False

    def carry_out(self) -> bool:
        """Carry out the connection's actions until it has none; whether anything happened."""
        if self.closed:
            return False
        progressed = self.push()
        conn = self.conn
        while not self.closed and (action := conn.next_action()) is not None:
            progressed = True
            kind = type(action)
            if kind is Send:
                self.sending = action  # type: ignore[assignment]
                self.push()
            elif kind is Read:
                self.reading = action.on  # type: ignore[union-attr]
            elif kind is SetTimer:
                self.timer = action.at  # type: ignore[union-attr]
            elif kind is RunJobs:
                self.jobs(action.jobs)  # type: ignore[union-attr]
            elif kind is ShutWrite:
                self.shut()
            elif kind is Close:
                self.close()
        return progressed

    def push(self) -> bool:
        raise NotImplementedError

    def jobs(self, jobs: tuple[Job, ...]) -> None:
        raise NotImplementedError

    def shut(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class MemLink(Driven):
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
        super().__init__()
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
        self.jobs_pending: list[Job] = []
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
        """Move the fake clock and fire the connection's timer if it is due."""
        self.clock.now += seconds
        timer = self.timer
        if timer is not None and timer <= self.clock.now and not self.closed:
            self.timer = None
            self.conn.on_deadline(self.clock.now)
        self.pump()

    def take_jobs(self) -> list[Job]:
        """The jobs ``RunJobs`` handed over and nobody ran yet (with ``run_jobs=False``)."""
        self.sync()
        jobs, self.jobs_pending = self.jobs_pending, []
        return jobs

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
        if self.reading and self.to_server:
            size = len(self.to_server) if self.chunk is None else self.chunk
            data = bytes(self.to_server[:size])
            del self.to_server[:size]
            conn.receive_data(data, self.clock.now)
            return True
        if self.reading and self.server_eof_pending and not self.to_server:
            self.server_eof_pending = False
            conn.receive_data(b"", self.clock.now)
            return True
        if self.run_jobs and self.jobs_pending:
            jobs, self.jobs_pending = self.jobs_pending, []
            for job in jobs:
                job.run()
                conn.job_done(job, self.clock.now)
            return True
        return progressed

    def sync(self) -> bool:
        """What a driver does after each call: this connection's actions, then the server's
        (the woken connections' actions)."""
        progressed = self._sync_one()
        for link in self._woken_links():
            progressed |= link._sync_one()
        return progressed

    def _woken_links(self) -> list[MemLink]:
        links = []
        while (action := self.server.next_action()) is not None:
            if isinstance(action, Sync):
                link = getattr(action.conn, "_memlink", None)
                if link is not None and link is not self:
                    links.append(link)
            elif isinstance(action, Exit):
                break
        return links

    def _sync_one(self) -> bool:
        """Carry out the connection's actions until it has none."""
        self.conn._memlink = self  # type: ignore[attr-defined]
        return self.carry_out()

    def jobs(self, jobs: tuple[Job, ...]) -> None:
        self.jobs_pending.extend(jobs)

    def shut(self) -> None:
        self._client_eof()

    def close(self) -> None:
        self.closed = True
        self.conn.connection_lost(None, self.clock.now)
        self._client_eof()

    def push(self) -> bool:
        """Hand the client's socket what its window takes of the Send in flight."""
        send = self.sending
        if send is None or self.closed:
            return False
        total = send.nbytes if self.window is None else min(send.nbytes, self.window)
        if not total:
            return False  # the client reads nothing: the Send stays in flight
        data = b"".join(bytes(b) for b in send.buffers)[:total]
        step = total if self.chunk is None else self.chunk
        for start in range(0, total, step):
            self._deliver(data[start : start + step])
        if self.window is not None:
            self.window -= total
        self.sending = None
        self.conn.sent(total, self.clock.now)
        return True

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
    http: str = "auto",
    **limits: object,
) -> Server:
    """A started server with one HTTP listener running ``app`` through the codec ``http``."""
    from spcore.config import Limits
    from spcore.http.protocol import HTTPProtocol

    listener = Listener(
        protocol=lambda: HTTPProtocol(app, http=http),  # type: ignore[arg-type]
        tls=tls,
        tls_engine=tls_engine,
    )
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


class ByHand:
    """A connection driven by hand: ``actions()`` carries out what the core asks for and
    returns it; a ``Send`` waits in ``sending`` until ``take()`` reports it sent."""

    def __init__(self, conn: Connection, now: float = 1000.0) -> None:
        self.conn = conn
        self.now = now
        self.reading = False
        self.timer: float | None = None
        self.sending: Send | None = None
        self.shut = False
        self.closed = False
        self.jobs: list[Job] = []

    def actions(self) -> list[Action]:
        """Every action the connection has now (up to a ``Close``), each carried out."""
        done: list[Action] = []
        while not self.closed and (action := self.conn.next_action()) is not None:
            done.append(action)
            if isinstance(action, Send):
                self.sending = action
            elif isinstance(action, Read):
                self.reading = action.on
            elif isinstance(action, SetTimer):
                self.timer = action.at
            elif isinstance(action, RunJobs):
                self.jobs.extend(action.jobs)
            elif isinstance(action, ShutWrite):
                self.shut = True
            elif isinstance(action, Close):
                self.closed = True
        return done

    def take(self, n: int | None = None) -> bytes:
        """Let the kernel take ``n`` bytes (all) of the Send in flight; what it took."""
        self.actions()
        send = self.sending
        if send is None:
            return b""
        data = b"".join(bytes(b) for b in send.buffers)
        n = len(data) if n is None else n
        self.sending = None
        self.conn.sent(n, self.now)
        self.actions()
        return data[:n]

    def drain(self) -> bytes:
        """Take every Send until none is left: a socket that takes everything."""
        out = bytearray()
        while chunk := self.take():
            out += chunk
        return bytes(out)


class Recorder(ProtocolLayer):
    """A protocol layer that records every call; ``echo`` writes back what it reads."""

    def __init__(self, *, echo: bool = False, close_on: bytes | None = None) -> None:
        self.echo = echo
        self.close_on = close_on
        self.conn: Connection | None = None
        self.made_after_handshake: bool | None = None
        self.data = bytearray()
        self.eofs: list[bool] = []
        self.lost: list[BaseException | None] = []
        self.timers = 0
        self.resumed = 0
        self.shutdowns = 0

    def connection_made(self, conn: Connection, now: float) -> None:
        self.conn = conn
        self.made_after_handshake = conn.tls is None or conn.tls.handshake_complete

    def data_received(self, data: bytes, now: float) -> None:
        assert self.conn is not None
        self.data += data
        if self.echo:
            self.conn.write(data)
        if self.close_on is not None and self.close_on in self.data:
            self.conn.close()

    def eof_received(self, clean: bool, now: float) -> None:
        self.eofs.append(clean)

    def resume_writing(self, now: float) -> None:
        self.resumed += 1

    def timer_expired(self, now: float) -> None:
        self.timers += 1
        self.deadline = None

    def shutdown(self, now: float) -> None:
        self.shutdowns += 1

    def connection_lost(self, error: BaseException | None) -> None:
        self.lost.append(error)
