"""Outbound connections in memory: the core asks for a connect, the driver reports how it
went, and the connection stacks like an accepted one (plaintext, or a TLS client engine with
SNI and verification), through the lifecycle's client path."""

from __future__ import annotations

import logging

import pytest
from conftest import PKI
from memlink import Recorder
from memnet import MemNet

from spcore.actions import Connect, SetTimer
from spcore.config import Limits
from spcore.connection import Connection
from spcore.layer import ProtocolLayer
from spcore.lifecycle import State
from spcore.listeners import stream_listener
from spcore.remote import Remote
from spcore.server import Listener, Server
from spcore.stream import StreamHandler
from spcore.tls.config import ClientTLS, ServerTLS
from spcore.tls.engine import ClientState, Feature, ServerState, TLSEngine, TLSError

BACKEND = ("127.0.0.1", 7000)
HOLE = ("127.0.0.1", 7001)
NOWHERE = ("127.0.0.1", 7002)


class Echo(StreamHandler):
    def message(self, session, message):  # type: ignore[no-untyped-def]
        session.send(message)


def client_server(**limits: float) -> Server:
    """A server that accepts nothing here: only its outbound connections are tested."""
    return Server([Listener(ProtocolLayer)], Limits(**limits))  # type: ignore[arg-type]


def test_a_plain_outbound_connection_carries_bytes_both_ways() -> None:
    net = MemNet()
    backends = net.serve(BACKEND)
    server = net.add(client_server())
    probe = Recorder()
    conn = server.open_connection(Remote(*BACKEND), probe)
    assert conn.state is State.CONNECTING and conn.outbound and conn.peer == BACKEND
    net.pump()
    assert net.connects == [BACKEND] and conn.state is State.OPEN
    assert probe.conn is conn and conn.local == ("127.0.0.1", 41000)
    conn.write(b"hello")
    net.pump()
    (backend,) = backends
    assert backend.take() == b"hello"
    backend.send(b"back")
    assert bytes(probe.data) == b"back"
    conn.close()
    net.pump()
    assert backend.got_eof and not probe.lost
    backend.shut()
    assert probe.lost == [None] and server.connections == {}
    assert server.stats.connections_outbound == 1 and server.stats.connect_failures == 0


def test_what_is_written_before_the_connect_waits_and_send_first_leads() -> None:
    net = MemNet()
    backends = net.serve(BACKEND)
    net.black_hole(BACKEND)  # connecting takes its time: the send timeout must not run
    server = net.add(client_server(send_timeout=1.0, connect_timeout=5.0))
    probe = Recorder()
    conn = server.open_connection(Remote(*BACKEND), probe, send_first=b"PROXY ...\r\n")
    conn.write(b"early")
    net.advance(3.0)
    assert conn.state is State.CONNECTING and not backends and not probe.lost
    net.release(BACKEND)
    (backend,) = backends
    assert backend.take() == b"PROXY ...\r\nearly" and conn.state is State.OPEN


def test_a_refused_connect_ends_in_connection_lost_with_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = MemNet()
    server = net.add(client_server())
    probe = Recorder()
    with caplog.at_level(logging.INFO, logger="spcore.connection"):
        server.open_connection(Remote(*NOWHERE), probe)
        net.pump()
    assert probe.conn is None  # never made
    (error,) = probe.lost
    assert isinstance(error, ConnectionRefusedError)
    assert server.stats.connect_failures == 1 and server.connections == {}
    assert "to 127.0.0.1:7002>: connect failed: [Errno 111] Connection refused" in caplog.text


def test_the_connect_timeout_is_the_cores(caplog: pytest.LogCaptureFixture) -> None:
    net = MemNet()
    net.black_hole(HOLE)
    server = net.add(client_server(connect_timeout=2.5))
    probe = Recorder()
    conn = server.open_connection(Remote(*HOLE), probe)
    net.pump()
    assert net.node(conn).timer == net.clock.now + 2.5  # told with SetTimer, like any deadline
    with caplog.at_level(logging.INFO, logger="spcore.connection"):
        net.advance(2.4)
        assert probe.lost == []
        net.advance(0.2)
    (error,) = probe.lost
    assert isinstance(error, TimeoutError) and "after 2.5 s" in str(error)
    assert server.stats.timeouts == 1 and server.stats.connect_failures == 1
    assert "connect timed out after 2.5 s" in caplog.text


def test_a_connection_closed_before_the_driver_connected_it_costs_no_socket() -> None:
    net = MemNet()
    net.serve(BACKEND)
    server = net.add(client_server())
    probe = Recorder()
    conn = server.open_connection(Remote(*BACKEND), probe)
    conn.close()
    net.pump()
    assert net.connects == [] and probe.lost == [None] and server.connections == {}


def test_an_outbound_connection_whose_stack_cannot_be_built_ends_without_a_connect(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        """A client state whose engines cannot be made."""

        def new_engine(self, server_name: str | None = None, resume: object = None) -> TLSEngine:
            raise RuntimeError("no engine today")

    class Factory:
        name = "broken"
        features: frozenset[Feature] = frozenset()

        def library_version(self) -> str:
            return "none"

        def server(self, config: ServerTLS) -> ServerState:
            raise NotImplementedError

        def client(self, config: ClientTLS) -> ClientState:
            return Broken()

    net = MemNet()
    server = net.add(client_server())
    remote = Remote(*BACKEND, tls=ClientTLS(trust=pki.ca_file), tls_engine=Factory())
    probe = Recorder()
    with caplog.at_level(logging.ERROR):
        server.open_connection(remote, probe)
        net.pump()
    assert net.connects == [] and server.connections == {} and server.stats.errors == 1
    assert "could not build this connection's stack" in caplog.text


def test_outbound_connections_do_not_count_against_max_connections() -> None:
    net = MemNet()
    net.serve(BACKEND)
    server = net.add(client_server(max_connections=1))
    for _ in range(3):
        server.open_connection(Remote(*BACKEND), Recorder())
    net.pump()
    assert len(server.connections) == 3 and server.accepting


def test_the_stop_cuts_a_connect_in_progress() -> None:
    net = MemNet()
    net.black_hole(HOLE)
    server = net.add(client_server())
    probe = Recorder()
    server.open_connection(Remote(*HOLE), probe)
    net.pump()
    server.request_stop(net.clock.now)
    net.pump()
    assert probe.lost == [None] and server in net.exited


def test_only_its_timer_is_told_while_connecting() -> None:
    server = client_server(connect_timeout=4.0)
    server.start(100.0, 0.0)
    conn = server.open_connection(Remote(*BACKEND), Recorder(), send_first=b"first")
    conn.write(b"queued")
    assert conn.next_action() == SetTimer(104.0)
    assert conn.next_action() is None and not conn.reading
    assert server.next_action() == Connect(conn, BACKEND)


def test_the_lifecycle_of_a_connect_is_connecting_then_handshake_then_open(
    pki: PKI, server_tls: ServerTLS
) -> None:
    net = MemNet()
    backend = Server([stream_listener(Echo, tls=server_tls)])
    net.add(backend, BACKEND)
    server = net.add(client_server())
    states: list[State] = []

    class Watch(Recorder):
        def connection_made(self, conn: Connection, now: float) -> None:
            states.append(conn.state)
            super().connection_made(conn, now)

    probe = Watch()
    remote = Remote(*BACKEND, tls=ClientTLS(trust=pki.ca_file, server_name="localhost"))
    conn = server.open_connection(remote, probe)
    states.append(conn.state)
    net.pump()
    assert states == [State.CONNECTING, State.OPEN] and probe.made_after_handshake
    info = conn.tls_info
    assert info is not None and info.server_name == "localhost"
    (accepted,) = backend.connections.values()
    assert accepted.tls_info is not None and accepted.tls_info.server_name == "localhost"
    conn.write(b"over TLS\n")
    net.pump()
    assert bytes(probe.data) == b"over TLS\r\n"


def test_send_first_goes_out_before_the_client_hello(pki: PKI) -> None:
    net = MemNet()
    backends = net.serve(BACKEND)
    server = net.add(client_server())
    remote = Remote(*BACKEND, tls=ClientTLS(trust=pki.ca_file, server_name="localhost"))
    server.open_connection(remote, Recorder(), send_first=b"PROXY UNKNOWN\r\n")
    net.pump()
    (backend,) = backends
    raw = backend.take()
    assert raw.startswith(b"PROXY UNKNOWN\r\n\x16\x03")  # then a TLS handshake record


@pytest.mark.parametrize(
    ("name", "reason"),
    [("wrong.test", "Hostname mismatch"), ("localhost", "unable to get local issuer")],
)
def test_a_server_certificate_that_does_not_verify_fails_the_connection(
    pki: PKI, server_tls: ServerTLS, name: str, reason: str
) -> None:
    net = MemNet()
    net.add(Server([stream_listener(Echo, tls=server_tls)]), BACKEND)
    server = net.add(client_server())
    ca_file = pki.ca_file if name == "wrong.test" else pki.rogue_ca_file
    probe = Recorder()
    server.open_connection(Remote(*BACKEND, tls=ClientTLS(trust=ca_file, server_name=name)), probe)
    net.pump()
    (error,) = probe.lost
    assert probe.conn is None and isinstance(error, TLSError)
    assert error.reason == "CERTIFICATE_VERIFY_FAILED" and reason in str(error)
    assert server.stats.tls_errors == 1


def test_a_half_close_ends_our_side_after_what_was_written_and_input_goes_on() -> None:
    net = MemNet()
    backends = net.serve(BACKEND)
    server = net.add(client_server())
    probe = Recorder()
    conn = server.open_connection(Remote(*BACKEND), probe)
    net.pump()
    (backend,) = backends
    conn.write(b"request")
    conn.write_eof()
    conn.write(b"ignored: our side is over")
    net.pump()
    assert backend.take() == b"request" and backend.got_eof
    backend.send(b"response after our FIN")
    assert bytes(probe.data) == b"response after our FIN" and conn.state is State.OPEN
    backend.shut()
    assert probe.eofs == [True]
    conn.close()  # nothing left to shut: it closes, the peer having ended too
    net.pump()
    assert probe.lost == [None] and server.connections == {}


def test_a_half_close_over_tls_sends_close_notify_and_reads_on(
    pki: PKI, server_tls: ServerTLS
) -> None:
    net = MemNet()
    backends = net.serve(BACKEND, tls=server_tls)
    server = net.add(client_server())
    probe = Recorder()
    remote = Remote(*BACKEND, tls=ClientTLS(trust=pki.ca_file, server_name="localhost"))
    conn = server.open_connection(remote, probe)
    net.pump()
    (backend,) = backends
    conn.write(b"request")
    conn.write_eof()
    net.pump()
    assert backend.take() == b"request" and backend.got_eof and backend.clean_eof
    backend.send(b"the answer")
    assert bytes(probe.data) == b"the answer"
    backend.shut()
    assert probe.eofs == [True]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_half_close_asked_for_while_connecting_happens_once_open(
    pki: PKI, server_tls: ServerTLS, tls: bool
) -> None:
    """A tunnel's client may send its last bytes and its FIN before the backend connected."""
    net = MemNet()
    backends = net.serve(BACKEND, tls=server_tls if tls else None)
    net.black_hole(BACKEND)
    server = net.add(client_server())
    trust = ClientTLS(trust=pki.ca_file, server_name="localhost") if tls else None
    conn = server.open_connection(Remote(*BACKEND, tls=trust), Recorder())
    conn.write(b"all of it")
    conn.write_eof()
    net.pump()
    assert conn.state is State.CONNECTING
    net.release(BACKEND)
    (backend,) = backends
    assert backend.take() == b"all of it" and backend.got_eof
    assert backend.clean_eof is (True if tls else None)  # close_notify on TLS
    backend.send(b"the answer")
    assert conn.state is State.OPEN
