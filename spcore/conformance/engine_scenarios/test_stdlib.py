"""Over real sockets: the engine as a server for the standard library's ``ssl`` client, as a
client of its server, and refusing ``openssl s_client``'s TLS 1.2 renegotiation."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from spcore.conformance.enginekit import EngineOverSocket, records, s_client
from spcore.conformance.harness import PKI
from spcore.tls import (
    Alert,
    ClientContext,
    ClientTLS,
    CloseNotify,
    EngineFactory,
    RaggedEOF,
    ServerContext,
    TLSError,
)
from spcore.tls.config import TLSVersion

T = TypeVar("T")
MiB = 1024 * 1024
TIMEOUT = 10.0


def in_thread(function: Callable[[], T]) -> concurrent.futures.Future[T]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function)
    pool.shutdown(wait=False)
    return future


def recv_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 65536))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclasses.dataclass
class Exchange:
    """Our socket and theirs, and a MiB for each direction."""

    ours: socket.socket
    theirs: socket.socket
    up: bytes
    down: bytes


@pytest.fixture
def exchange(request: pytest.FixtureRequest) -> Iterator[Exchange]:
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    rng = random.Random(request.node.name)
    with a, b:
        yield Exchange(a, b, rng.randbytes(MiB), rng.randbytes(MiB))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_server_engine_with_a_stdlib_client(
    engine: EngineFactory, pki: PKI, exchange: Exchange, version: TLSVersion
) -> None:
    ours, theirs, up, down = exchange.ours, exchange.theirs, exchange.up, exchange.down

    def stdlib_client() -> tuple[bytes, bytes, str | None, str | None]:
        tls = pki.client_context(version).wrap_socket(theirs, server_hostname="localhost")
        tls.sendall(up)
        received = recv_exactly(tls, MiB)
        after = tls.recv(1)  # b"": the server's close_notify
        negotiated, alpn = tls.version(), tls.selected_alpn_protocol()
        tls.unwrap()  # our close_notify in return
        return received, after, negotiated, alpn

    peer = in_thread(stdlib_client)
    server = ServerContext(pki.server_tls(), engine).new_engine()
    link = EngineOverSocket(server, ours)
    link.handshake()
    assert link.read(MiB) == up
    link.send(down)
    link.close()
    received, after, negotiated, alpn = peer.result(timeout=2 * TIMEOUT)
    assert received == down and after == b""
    assert negotiated == f"TLSv{version}" and alpn == "http/1.1"
    assert isinstance(link.wait_end(), CloseNotify)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_engine_with_a_stdlib_server(
    engine: EngineFactory, pki: PKI, exchange: Exchange, version: TLSVersion
) -> None:
    ours, theirs, up, down = exchange.ours, exchange.theirs, exchange.up, exchange.down

    def stdlib_server() -> tuple[bytes, bytes]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki.server.certfile, pki.server.keyfile)
        tls = ctx.wrap_socket(theirs, server_side=True)
        received = recv_exactly(tls, MiB)
        tls.sendall(down)
        after = tls.recv(1)  # b"": the client's close_notify
        tls.unwrap()
        return received, after

    peer = in_thread(stdlib_server)
    config = ClientTLS(trust=pki.ca_file, max_version=version)
    client = ClientContext(config, engine).new_engine("localhost")
    link = EngineOverSocket(client, ours)
    link.handshake()
    assert client.info is not None and client.info.version == f"TLSv{version}"
    link.send(up)
    assert link.read(MiB) == down
    link.close()
    assert isinstance(link.wait_end(), CloseNotify)
    received, after = peer.result(timeout=2 * TIMEOUT)
    assert received == up and after == b""


def test_tls12_renegotiation_attempt_is_refused_without_hanging(
    engine: EngineFactory, pki: PKI
) -> None:
    with s_client(pki.ca_file, "-tls1_2") as client:
        server = ServerContext(pki.server_tls(), engine).new_engine()
        link = EngineOverSocket(server, client.sock, TIMEOUT)
        link.handshake()
        assert server.info is not None and server.info.version == "TLSv1.2"
        before = len(link.flights)
        client.write(b"R\n")  # s_client's command: renegotiate
        started = time.monotonic()
        try:
            link.wait_end()  # TimeoutError (a hang) or anything else fails the test
            outcome: object = link.end
        except TLSError as exc:
            outcome = exc
        assert time.monotonic() - started < TIMEOUT
    assert b"RENEGOTIATING" in client.stderr
    # Our answer to the new ClientHello was an alert (no_renegotiation, a warning).
    answer = b"".join(link.flights[before:])
    assert [kind for kind, _ in records(answer)][:1] == [0x15]
    # s_client gives up with a fatal alert (GnuTLS, still expecting the handshake, answers
    # it with unexpected_message); anything but a TLSError would be a crash.
    assert isinstance(outcome, TLSError | RaggedEOF | CloseNotify)
    if isinstance(outcome, TLSError):
        assert not outcome.during_handshake
        assert outcome.alert_sent or outcome.alert is Alert.HANDSHAKE_FAILURE
