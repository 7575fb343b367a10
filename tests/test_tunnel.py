"""The tunnel's relay in memory (spcore.tunnel), on a fake clock: terminate, originate and TLS
to TLS; back-pressure both ways; half-close carried across; PROXY headers; a backend that is
down, slow to answer, or gone mid-stream; the idle timeout."""

from __future__ import annotations

import hashlib
import logging

import pytest
from conftest import PKI
from memnet import Endpoint, MemNet

from spcore.config import Limits
from spcore.preamble import ProxyHeaderReader
from spcore.remote import Remote
from spcore.server import Server
from spcore.tls.config import ClientTLS, ServerTLS
from spcore.tunnel import Tunnel

FRONT = ("127.0.0.1", 8443)
BACKEND = ("127.0.0.1", 8080)
HIGH_WATER = 64 * 1024


def tunnel_net(
    tunnel: Tunnel, *, tls_in: ServerTLS | None = None, **limits: float
) -> tuple[MemNet, Server]:
    net = MemNet()
    server = Server([tunnel.listener(tls=tls_in)], Limits(**limits))  # type: ignore[arg-type]
    net.add(server, FRONT)
    return net, server


def relay(tls_in: ServerTLS | None) -> tuple[MemNet, Server, list[Endpoint]]:
    """A plain tunnel, TLS in if given, to a backend the test plays."""
    net, server = tunnel_net(Tunnel(Remote(*BACKEND)), tls_in=tls_in)
    return net, server, net.serve(BACKEND)


def dial(net: MemNet, pki: PKI, tls: bool) -> Endpoint:
    return net.dial(FRONT, tls=ClientTLS(trust=pki.ca_file) if tls else None)


@pytest.mark.parametrize(
    ("tls_in", "tls_out"),
    [(True, False), (False, True), (True, True), (False, False)],
    ids=["terminate", "originate", "tls-to-tls", "plain"],
)
def test_bytes_go_both_ways(pki: PKI, server_tls: ServerTLS, tls_in: bool, tls_out: bool) -> None:
    trust = ClientTLS(trust=pki.ca_file, server_name="localhost") if tls_out else None
    backend = Remote(*BACKEND, tls=trust)
    net, server = tunnel_net(Tunnel(backend), tls_in=server_tls if tls_in else None)
    backends = net.serve(BACKEND, tls=server_tls if tls_out else None)
    client = dial(net, pki, tls_in)
    client.send(b"to the backend")
    (far,) = backends
    assert far.take() == b"to the backend"
    far.send(b"to the client")
    assert client.take() == b"to the client"
    if tls_out:
        (_, backend_side) = server.connections.values()
        assert (
            backend_side.tls_info is not None and backend_side.tls_info.server_name == "localhost"
        )
    assert server.stats.connections_outbound == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_backend_learns_the_client_from_a_proxy_header(
    pki: PKI, server_tls: ServerTLS, version: str
) -> None:
    backend = Remote(*BACKEND, tls=ClientTLS(trust=pki.ca_file, server_name="localhost"))
    net, _ = tunnel_net(Tunnel(backend, proxy_header=version))  # type: ignore[arg-type]
    backends = net.serve(BACKEND)  # raw: to see the header before the TLS ClientHello
    dial(net, pki, False)
    (far,) = backends
    parsed = ProxyHeaderReader().feed(far.take())
    assert parsed is not None
    info, rest = parsed
    assert info.source == ("127.0.0.1", 40000) and info.destination == FRONT
    assert rest.startswith(b"\x16\x03")  # then the TLS handshake


def _pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("slow", ["backend", "client"])
def test_a_slow_side_slows_the_other_and_the_tunnel_holds_little(
    pki: PKI, server_tls: ServerTLS, slow: str
) -> None:
    net, server = tunnel_net(
        Tunnel(Remote(*BACKEND)),
        tls_in=server_tls,
        write_high_water=HIGH_WATER,
        write_low_water=HIGH_WATER // 4,
    )
    backends = net.serve(BACKEND)
    client = dial(net, pki, True)
    client.send(b"hello")
    (far,) = backends
    far.take()
    writer, reader = (client, far) if slow == "backend" else (far, client)
    reader.reading = False
    payload = _pattern(8 * 1024 * 1024)
    writer.send(payload)
    held = sum(conn.output_size for conn in server.connections.values())
    assert held <= 2 * HIGH_WATER + 64 * 1024  # not the 8 MiB offered
    assert len(writer._outgoing) > 6 * 1024 * 1024  # the writer was made to wait
    reader.reading = True
    net.pump()
    got = reader.take()
    assert (
        len(got) == len(payload)
        and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    )


@pytest.mark.parametrize("tls_in", [False, True], ids=["plain", "tls"])
def test_a_half_close_is_carried_across_both_ways(
    pki: PKI, server_tls: ServerTLS, tls_in: bool
) -> None:
    net, server, backends = relay(server_tls if tls_in else None)
    client = dial(net, pki, tls_in)
    client.send(b"the whole request")
    client.shut()  # FIN (after close_notify on TLS)
    (far,) = backends
    assert far.take() == b"the whole request" and far.got_eof
    far.send(b"the answer, after the client's FIN")
    assert client.take() == b"the answer, after the client's FIN" and not client.got_eof
    far.shut()
    assert client.got_eof and client.clean_eof is (True if tls_in else None)
    assert server.connections == {}  # both directions over: both closed


def test_a_backend_that_is_down_closes_the_client_with_a_warning(
    pki: PKI, server_tls: ServerTLS, caplog: pytest.LogCaptureFixture
) -> None:
    net, server = tunnel_net(Tunnel(Remote(*BACKEND)), tls_in=server_tls)
    with caplog.at_level(logging.WARNING, logger="spcore.tunnel"):
        client = dial(net, pki, True)
    assert client.got_eof and client.clean_eof  # closed, with close_notify
    assert "cannot connect to the backend 127.0.0.1:8080: [Errno 111]" in caplog.text
    client.shut()
    assert server.connections == {} and server.stats.connect_failures == 1
    backends = net.serve(BACKEND)  # it comes back: the tunnel serves the next client
    again = dial(net, pki, True)
    again.send(b"now it works")
    assert backends[0].take() == b"now it works"


def test_a_backend_that_never_answers_times_out(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    net, server = tunnel_net(Tunnel(Remote(*BACKEND)), connect_timeout=3.0)
    net.black_hole(BACKEND)
    client = dial(net, pki, False)
    client.send(b"waiting")
    with caplog.at_level(logging.WARNING, logger="spcore.tunnel"):
        net.advance(2.9)
        assert not client.got_eof
        net.advance(0.2)
    assert client.got_eof and "connect timed out after 3 s" in caplog.text
    net.advance(Limits().close_timeout)  # the client never closes: its close timeout ends it
    assert server.connections == {}


@pytest.mark.parametrize("tls_in", [False, True], ids=["plain", "tls"])
def test_a_backend_gone_mid_stream_aborts_the_client_and_the_tunnel_goes_on(
    pki: PKI, server_tls: ServerTLS, tls_in: bool
) -> None:
    net, server, backends = relay(server_tls if tls_in else None)
    other = dial(net, pki, tls_in)
    client = dial(net, pki, tls_in)
    client.send(b"first half")
    far = backends[1]
    far.send(b"part of the answer")
    far.reset()
    assert client.take() == b"part of the answer" and client.got_eof
    if tls_in:
        assert client.clean_eof is False  # no close_notify: the truncation shows
    other.send(b"still served")
    assert backends[0].take() == b"still served"
    assert len(server.connections) == 2  # the other pair


def test_a_client_reset_aborts_its_backend_connection(pki: PKI) -> None:
    net, server = tunnel_net(Tunnel(Remote(*BACKEND)))
    backends = net.serve(BACKEND)
    client = dial(net, pki, False)
    client.reset()
    assert backends[0].got_eof and server.connections == {}


def test_an_idle_pair_is_closed_and_traffic_keeps_it_open(pki: PKI) -> None:
    net, server = tunnel_net(Tunnel(Remote(*BACKEND), idle_timeout=10.0))
    backends = net.serve(BACKEND)
    client = dial(net, pki, False)
    for _ in range(3):
        net.advance(6.0)
        backends[0].send(b"tick")  # traffic from either side counts
    assert client.take() == b"tick" * 3 and not client.got_eof
    net.advance(10.5)
    assert client.got_eof and backends[0].got_eof
    client.shut()
    backends[0].shut()
    assert server.connections == {}


def test_max_connections_counts_clients_not_their_backends(pki: PKI) -> None:
    net, server = tunnel_net(Tunnel(Remote(*BACKEND)), max_connections=2)
    net.serve(BACKEND)
    dial(net, pki, False)
    assert server.accepting  # one client and its backend: room for one more client
    dial(net, pki, False)
    assert not server.accepting and len(server.connections) == 4


def test_a_backend_certificate_that_does_not_verify_closes_the_client(
    pki: PKI, server_tls: ServerTLS, caplog: pytest.LogCaptureFixture
) -> None:
    trust = ClientTLS(trust=pki.ca_file, server_name="wrong.test")
    net, _ = tunnel_net(Tunnel(Remote(*BACKEND, tls=trust)))
    net.serve(BACKEND, tls=server_tls)
    with caplog.at_level(logging.INFO):
        client = dial(net, pki, False)
        net.advance(Limits().close_timeout)  # the backend does not answer the alert
    assert client.got_eof
    assert (
        "CERTIFICATE_VERIFY_FAILED" in caplog.text
        and "cannot connect to the backend" in caplog.text
    )
