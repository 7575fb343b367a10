"""What goes beyond one handshake: KeyUpdate, OCSP stapling, session tickets shared by server
processes through a ticket key file (and its rotation), and rebuilding a listener's state.

An engine that lacks an optional feature (``EngineFactory.features``) must say so: it refuses
the configuration (or the call) with ``EngineUnsupported``, never ignores it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator

import pytest

from spcore.conformance.enginekit import (
    RESPONSE,
    Endpoints,
    EngineOverSocket,
    connect,
    feed,
    move,
    names,
    records,
    s_client,
)
from spcore.conformance.harness import PKI, wait_until
from spcore.tls import (
    ApplicationData,
    ClientContext,
    ClientTLS,
    EngineFactory,
    EngineUnsupported,
    Feature,
    ServerContext,
    ServerTLS,
    TLSConfigError,
    TLSEngine,
    resolve,
)
from spcore.tls.config import Certificate, TLSVersion
from spcore.tls.engines import ENGINES
from spcore.tls.tickets import new_ticket_key_file

TIMEOUT = 10.0


# --- KeyUpdate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["client", "server"])
@pytest.mark.parametrize("request_peer", [True, False], ids=["update_requested", "alone"])
def test_key_update_then_data_both_ways(ends: Endpoints, sender: str, request_peer: bool) -> None:
    s, c = ends.server(), ends.client()
    connect(s, c)
    updating, peer = (c, s) if sender == "client" else (s, c)
    factory = ends.client_factory if sender == "client" else ends.server_factory
    if Feature.KEY_UPDATE not in factory.features:
        with pytest.raises(EngineUnsupported):
            updating.key_update(request_peer)
        return
    updating.key_update(request_peer)
    updating.send(b"on new keys")
    assert move(updating, peer) == [ApplicationData(b"on new keys")]
    peer.send(b"reply")
    answer = peer.data_to_send()
    # Asked to update too, the peer sends its own KeyUpdate before the reply (RFC 8446 4.6.3).
    assert len(list(records(answer))) == (2 if request_peer else 1)
    assert feed(answer, updating) == [ApplicationData(b"reply")]


# --- OCSP stapling --------------------------------------------------------------------------------


def _stapling_clients() -> list[EngineFactory]:
    """Registered engines that can ask for a stapled response and report it."""
    found = []
    for spec in ENGINES.values():
        if spec.probe()[0]:
            factory = spec.load()
            if Feature.OCSP_STAPLING in factory.features:
                found.append(factory)
    return found


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_ocsp_response_is_stapled_and_renewed_by_a_reload(
    engine: EngineFactory, pki: PKI, tmp_path: pathlib.Path, version: TLSVersion
) -> None:
    first = pki.ca.ocsp_response(pki.server.certfile, pki.now)
    response_file = tmp_path / "ocsp.der"
    response_file.write_bytes(first)
    config = ServerTLS(PKI.certificate(pki.server, response_file), max_version=version)
    if Feature.OCSP_STAPLING not in engine.features:
        with pytest.raises(EngineUnsupported, match="OCSP"):
            ServerContext(config, engine)
        return
    clients = _stapling_clients()
    if not clients:
        pytest.skip("no registered engine here can ask for a stapled OCSP response")
    context = ServerContext(config, engine)
    client_state = ClientContext(ClientTLS(trust=pki.ca_file), clients[0])

    def stapled() -> bytes | None:
        s, c = context.new_engine(), client_state.new_engine("localhost")
        connect(s, c)
        assert c.info is not None
        return c.info.ocsp_response

    assert stapled() == first
    second = pki.ca.ocsp_response(pki.server.certfile, pki.now + datetime.timedelta(hours=1))
    assert second != first
    response_file.write_bytes(second)
    context.reload()
    assert stapled() == second


def test_an_ocsp_response_for_another_certificate_is_refused(
    engine: EngineFactory, pki: PKI
) -> None:
    wrong = pki.ca.ocsp_response(pki.other.certfile, pki.now)
    config = ServerTLS(PKI.certificate(pki.server, wrong))
    with pytest.raises(TLSConfigError, match="OCSP"):
        ServerContext(config, engine)


def test_openssl_s_client_status_sees_the_stapled_response(engine: EngineFactory, pki: PKI) -> None:
    response = pki.ca.ocsp_response(pki.server.certfile, pki.now)
    config = ServerTLS(PKI.certificate(pki.server, response))
    if Feature.OCSP_STAPLING not in engine.features:
        with pytest.raises(EngineUnsupported, match="OCSP"):
            ServerContext(config, engine)
        return
    context = ServerContext(config, engine)
    with s_client(pki.ca_file, "-status") as client:
        link = EngineOverSocket(context.new_engine(), client.sock)
        link.handshake()
        client.write(b"GET / HTTP/1.1\r\n\r\n")
        link.read_until(b"\r\n\r\n")
        link.send(RESPONSE)
        link.close()
    assert b"OCSP Response Status: successful" in client.stdout, client.stdout
    assert b"Cert Status: good" in client.stdout, client.stdout


# --- ticket keys shared by server processes -----------------------------------------------------


@contextlib.contextmanager
def _server_process(
    spec: str, pki: PKI, ticket_key: pathlib.Path, workdir: pathlib.Path, name: str
) -> Iterator[int]:
    """A kit server process with its own engine state; yields its port; stopped by PID."""
    port_file = workdir / f"{name}.port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-m", "spcore.conformance.enginekit", "--engine", spec]
    command += ["--cert", str(pki.server.certfile), "--key", str(pki.server.keyfile)]
    command += ["--ticket-key", str(ticket_key), "--port-file", str(port_file)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: port_file.exists() or process.poll() is not None, 30.0, f"server {name}")
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"server {name} exited: {err.decode(errors='replace')}")
        yield int(port_file.read_text())
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)


def _fetch(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    """One request; the session to resume next (its tickets have come by then)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = tls.recv(4096)
            assert chunk, "the server closed before answering"
            answer += chunk
        return tls.session, bool(tls.session_reused)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_resumption_across_server_processes_sharing_a_ticket_key(
    engine: EngineFactory, engine_spec: str, pki: PKI, tmp_path: pathlib.Path, version: TLSVersion
) -> None:
    """A ticket from process A resumes on B, which reads the same key file, and not on C,
    started after the file was replaced (C makes a full handshake instead)."""
    keys = tmp_path / "tickets.key"
    keys.write_bytes(new_ticket_key_file())
    if Feature.TICKET_KEYS not in engine.features:
        with pytest.raises(EngineUnsupported, match="ticket"):
            ServerContext(ServerTLS(PKI.certificate(pki.server), ticket_key=keys), engine)
        return
    context = pki.client_context(version)
    with _server_process(engine_spec, pki, keys, tmp_path, "a") as port_a:
        session, reused = _fetch(port_a, context, None)
        assert session is not None and not reused
        with _server_process(engine_spec, pki, keys, tmp_path, "b") as port_b:
            assert _fetch(port_b, context, session)[1], "B did not resume A's ticket"
        keys.write_bytes(new_ticket_key_file())
        with _server_process(engine_spec, pki, keys, tmp_path, "c") as port_c:
            assert not _fetch(port_c, context, session)[1], "C resumed a replaced key's ticket"
        assert _fetch(port_a, context, session)[1]  # A still holds the key it started with


# --- rebuilding a listener's state --------------------------------------------------------------


def test_reload_swaps_the_state_for_new_connections_only(
    engine: EngineFactory, pki: PKI, tmp_path: pathlib.Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(pki.server.certfile.read_bytes())
    key.write_bytes(pki.server.keyfile.read_bytes())
    context = ServerContext(ServerTLS(Certificate(cert, key)), engine)
    client = ClientContext(ClientTLS(verify=False), resolve("openssl"))

    def presented(server: TLSEngine) -> list[str]:
        c = client.new_engine("localhost")
        connect(server, c)
        assert c.info is not None
        return names(c.info.peer_certificate)

    before = context.new_engine()  # accepted before the reload: keeps the old state
    cert.write_bytes(pki.other.certfile.read_bytes())
    key.write_bytes(pki.other.keyfile.read_bytes())
    context.reload()
    assert context.generation == 2
    assert presented(context.new_engine()) == ["other.test"]
    assert "localhost" in presented(before)
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    with pytest.raises(TLSConfigError):
        context.reload()
    assert context.generation == 2  # the bad file changed nothing
    assert presented(context.new_engine()) == ["other.test"]
