"""An in-memory network for tests: servers' connections joined to each other and to endpoints
the test drives, with a fake clock and no sockets.

``MemNet`` plays the driver for every server added to it, as the contract says: it carries
out each connection's actions and each server's (``Connect`` included), feeds input while
told to read, reports what the "kernel" took, fires timers from the clock. A connection's
bytes cross a ``Pipe`` of bounded capacity (the socket buffers), so a side that stops reading
pushes back on the other. Addresses are whatever the test names: a server's listener
(``listen``), an ``Endpoint`` the test plays (``serve``), a black hole that never answers,
or nothing (refused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memlink import Clock, Driven

from spcore.actions import Accepting, CloseListeners, Connect, Exit, SetTimer, Sync
from spcore.connection import Connection
from spcore.jobs import Job
from spcore.server import Listener, Server
from spcore.tls.config import ClientTLS, ServerTLS
from spcore.tls.context import ClientContext, ServerContext
from spcore.tls.engine import ApplicationData, CloseNotify, RaggedEOF, TLSEngine

Address = Any
#: What one direction of a connection buffers (a socket's send and receive buffers).
CAPACITY = 64 * 1024
READ_SIZE = 64 * 1024


class Pipe:
    """One direction of a stream: bytes in flight, and the writer's FIN."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.data = bytearray()
        self.capacity = capacity
        self.eof = False  # the writer shut its side
        self.reset = False  # the writer reset the connection

    @property
    def room(self) -> int:
        return max(0, self.capacity - len(self.data))


class Node:
    """One end of a connection: ``rx`` brings the peer's bytes, ``tx`` carries ours."""

    def __init__(self, net: MemNet) -> None:
        self.net = net
        self.rx = Pipe()
        self.tx = Pipe()
        self.peer: Node | None = None

    def join(self, other: Node) -> None:
        self.peer, other.peer = other, self
        other.rx = self.tx
        other.tx = self.rx

    def step(self) -> bool:
        raise NotImplementedError


class ConnNode(Node, Driven):
    """A core connection, driven as a driver would."""

    def __init__(self, net: MemNet, conn: Connection) -> None:
        Node.__init__(self, net)
        Driven.__init__(self)
        self.conn = conn
        self.eof_delivered = False
        conn._memnet = self  # type: ignore[attr-defined]

    def step(self) -> bool:
        progressed = self.sync()
        if self.closed:
            return progressed
        rx, now = self.rx, self.net.clock.now
        if rx.reset:
            self.end(ConnectionResetError("reset by peer"))
            return True
        if self.reading and rx.data:
            data = bytes(rx.data[:READ_SIZE])
            del rx.data[:READ_SIZE]
            self.conn.receive_data(data, now)
            return True
        if self.reading and rx.eof and not self.eof_delivered:
            self.eof_delivered = True
            self.conn.receive_data(b"", now)
            return True
        return progressed

    def sync(self) -> bool:
        return self.carry_out()

    def jobs(self, jobs: tuple[Job, ...]) -> None:
        for job in jobs:
            job.run()
            self.conn.job_done(job, self.net.clock.now)

    def shut(self) -> None:
        self.tx.eof = True

    def close(self) -> None:
        self.end(None)

    def end(self, error: BaseException | None) -> None:
        """The socket closes: the peer sees EOF (a reset if ``error`` says so)."""
        self.closed = True
        self.timer = None
        self.tx.eof = True
        self.conn.connection_lost(error, self.net.clock.now)

    def push(self) -> bool:
        send = self.sending
        if send is None or self.closed:
            return False
        room = min(send.nbytes, self.tx.room)
        if not room:
            return False
        data = b"".join(bytes(b) for b in send.buffers)[:room]
        self.tx.data += data
        self.sending = None
        self.conn.sent(room, self.net.clock.now)
        return True

    def fire(self) -> bool:
        timer = self.timer
        if self.closed or timer is None or timer > self.net.clock.now:
            return False
        self.timer = None
        self.conn.on_deadline(self.net.clock.now)
        return True


class Endpoint(Node):
    """A socket the test plays: it sends, reads (or does not: ``reading = False``), shuts
    its side, resets; optionally through a TLS engine of its own."""

    def __init__(self, net: MemNet, tls: TLSEngine | None = None) -> None:
        super().__init__(net)
        self.tls = tls
        self.received = bytearray()  # plaintext the test has not taken yet
        self.got_eof = False  # the peer's FIN (or, TLS, its close_notify) arrived
        self.clean_eof: bool | None = None  # TLS: close_notify (True) or ragged (False)
        self.tls_error: Exception | None = None
        self.reading = True
        self.rx_ended = False  # the transport's EOF was taken
        self._outgoing = bytearray()  # what waits for room in the pipe
        self._shut = False
        if tls is not None:
            tls.start()
            self._flush_tls()

    def send(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.send(data)
            self._flush_tls()
        else:
            self._outgoing += data
        self.net.pump()

    def shut(self, *, close_notify: bool = True) -> None:
        """Shut our side (after close_notify, on TLS, when asked)."""
        if self.tls is not None and close_notify:
            self.tls.close()
            self._flush_tls()
        self._shut = True
        self.net.pump()

    def reset(self) -> None:
        self.tx.reset = True
        self.net.pump()

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        return data

    def step(self) -> bool:
        progressed = False
        if self._outgoing and self.tx.room:
            n = self.tx.room
            self.tx.data += self._outgoing[:n]
            del self._outgoing[:n]
            progressed = True
        if self._shut and not self._outgoing and not self.tx.eof:
            self.tx.eof = True
            progressed = True
        if not self.reading:
            return progressed
        if self.rx.data:
            data = bytes(self.rx.data)
            self.rx.data.clear()
            self._deliver(data)
            return True
        if self.rx.eof and not self.rx_ended:
            self.rx_ended = True
            if self.tls is None:
                self.got_eof = True
            elif self.clean_eof is None:
                self._deliver(b"")  # a ragged EOF, unless close_notify came first
            return True
        return progressed

    def _deliver(self, data: bytes) -> None:
        if self.tls is None:
            self.received += data
            return
        try:
            events = self.tls.receive_data(data)
        except Exception as exc:  # the test looks at it
            self.tls_error = exc
            self.clean_eof = False
            events = []
        for event in events:
            if isinstance(event, ApplicationData):
                self.received += event.data
            elif isinstance(event, CloseNotify):
                self.got_eof, self.clean_eof = True, True
            elif isinstance(event, RaggedEOF):
                self.got_eof, self.clean_eof = True, False
        self._flush_tls()

    def _flush_tls(self) -> None:
        assert self.tls is not None
        self._outgoing += self.tls.data_to_send()


class MemNet:
    """The driver of every server added, and the network between them."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.servers: list[Server] = []
        self.nodes: list[Node] = []
        self._listeners: dict[Address, tuple[Server, Listener] | Callable[[], Endpoint]] = {}
        self._held: dict[Address, list[ConnNode]] = {}  # connects a black hole holds
        self.server_timers: dict[Server, float | None] = {}
        self.exited: set[Server] = set()
        self.connects: list[Address] = []  # every Connect carried out, in order

    # -- the test's side -------------------------------------------------------------------

    def add(self, server: Server, *addresses: Address) -> Server:
        """Drive ``server``; its listeners listen on ``addresses`` (in order)."""
        server.start(self.clock.now, 1_700_000_000.0)
        self.servers.append(server)
        # (a listener without an address listens nowhere: a server that only connects out)
        for address, listener in zip(addresses, server.listeners, strict=False):
            self._listeners[address] = (server, listener)
        self.pump()
        return server

    def serve(self, address: Address, tls: ServerTLS | None = None) -> list[Endpoint]:
        """The test accepts on ``address``: the endpoints connected there, in order."""
        accepted: list[Endpoint] = []
        context = None if tls is None else ServerContext(tls)

        def make() -> Endpoint:
            engine = None if context is None else context.new_engine()
            endpoint = Endpoint(self, engine)
            accepted.append(endpoint)
            return endpoint

        self._listeners[address] = make
        return accepted

    def black_hole(self, address: Address) -> None:
        """Connects to ``address`` do not complete (a full backlog, a dropped SYN) until
        ``release``."""
        self._held.setdefault(address, [])

    def release(self, address: Address) -> None:
        """The black hole answers: the connects it held complete, to what listens now."""
        for node in self._held.pop(address, []):
            if not node.closed:
                self._complete(node, address)
        self.pump()

    def unlisten(self, address: Address) -> None:
        self._listeners.pop(address, None)

    def dial(
        self,
        address: Address,
        tls: ClientTLS | None = None,
        server_hostname: str = "localhost",
    ) -> Endpoint:
        """A client endpoint connected to the server listening on ``address``."""
        engine = None
        if tls is not None:
            engine = ClientContext(tls).new_engine(server_hostname)
        client = Endpoint(self, engine)
        self.nodes.append(client)
        server, listener = self._listeners[address]  # type: ignore[misc]
        node = ConnNode(
            self, server.accept(listener, ("127.0.0.1", 40000), address, self.clock.now)
        )
        node.join(client)
        self.nodes.append(node)
        self.pump()
        return client

    def advance(self, seconds: float) -> None:
        """Move the clock, firing what is due on the way (in steps of at most a second)."""
        end = self.clock.now + seconds
        while True:
            self.pump()
            due = [t for t in self._timers() if t <= end]
            if not due:
                break
            self.clock.now = max(self.clock.now, min(due))
            self._fire()
        self.clock.now = end
        self.pump()

    def pump(self, rounds: int = 100_000) -> None:
        for _ in range(rounds):
            progressed = False
            for server in self.servers:
                if server not in self.exited:
                    progressed |= self._follow(server)
            for node in list(self.nodes):
                progressed |= node.step()
            if not progressed:
                return
        raise AssertionError("MemNet did not settle")

    def node(self, conn: Connection) -> ConnNode:
        node: ConnNode = conn._memnet  # type: ignore[attr-defined]
        return node

    # -- the driver's side -----------------------------------------------------------------

    def _follow(self, server: Server) -> bool:
        progressed = False
        while (action := server.next_action()) is not None:
            progressed = True
            kind = type(action)
            if kind is Sync:
                node = getattr(action.conn, "_memnet", None)  # type: ignore[union-attr]
                if node is not None:
                    node.sync()
            elif kind is Connect:
                self._connect(action.conn, action.address)  # type: ignore[union-attr]
            elif kind is SetTimer:
                self.server_timers[server] = action.at  # type: ignore[union-attr]
            elif kind is Exit:
                self.exited.add(server)
                return progressed
            else:
                assert kind in (Accepting, CloseListeners), action
        return progressed

    def _connect(self, conn: Connection, address: Address) -> None:
        self.connects.append(address)
        node = ConnNode(self, conn)
        self.nodes.append(node)
        if address in self._held:
            self._held[address].append(node)
            node.sync()  # it waits: only its timer ends it
        else:
            self._complete(node, address)

    def _complete(self, node: ConnNode, address: Address) -> None:
        conn, now = node.conn, self.clock.now
        target = self._listeners.get(address)
        if target is None:
            node.end(ConnectionRefusedError(111, "Connection refused"))
        elif callable(target):
            endpoint = target()
            self.nodes.append(endpoint)
            node.join(endpoint)
            conn.connected(("127.0.0.1", 41000), now)
            node.sync()
        else:
            server, listener = target
            accepted = ConnNode(self, server.accept(listener, ("127.0.0.1", 41000), address, now))
            self.nodes.append(accepted)
            node.join(accepted)
            conn.connected(("127.0.0.1", 41000), now)
            node.sync()
            accepted.sync()

    def _timers(self) -> list[float]:
        due = [n.timer for n in self.nodes if isinstance(n, ConnNode) and n.timer is not None]
        return due + [t for t in self.server_timers.values() if t is not None]

    def _fire(self) -> None:
        now = self.clock.now
        for node in list(self.nodes):
            if isinstance(node, ConnNode):
                node.fire()
        for server, at in list(self.server_timers.items()):
            if at is not None and at <= now:
                self.server_timers[server] = None
                server.on_deadline(now)
