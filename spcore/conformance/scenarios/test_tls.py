"""TLS behaviour a driver must carry through intact: SNI, ALPN, client certificates, alerts
flushed before closing, plaintext HTTP on the TLS port, a ClientHello in tiny pieces."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time

import pytest
from cryptography import x509

from spcore.conformance.apps import still_serving, suite_app
from spcore.conformance.clients import Client, received_alert
from spcore.conformance.harness import PKI, Serve, Transport, tls_version, transports
from spcore.tls.alerts import Alert

TLS_VERSIONS = transports("tls1.2", "tls1.3")


def _names(client: Client) -> list[str]:
    assert client.tls is not None
    der = client.tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def _info(client: Client) -> dict[str, object]:
    response = client.fetch("GET", "/info")
    assert response.status == 200
    tls: dict[str, object] = json.loads(response.body)["tls"]
    return tls


@TLS_VERSIONS
def test_sni_selects_the_certificate(serve: Serve, pki: PKI, transport: Transport) -> None:
    tls = pki.server_tls(sni={"other.test": pki.certificate(pki.other)})
    with serve(suite_app, transport=transport, tls=tls) as served:
        with served.connect(server_hostname="other.test") as client:
            assert _names(client) == ["other.test"]
            assert _info(client)["server_name"] == "other.test"
        with served.connect(server_hostname="localhost") as client:
            assert "localhost" in _names(client)
            assert _info(client)["server_name"] == "localhost"


@TLS_VERSIONS
def test_alpn_selects_http11(serve: Serve, pki: PKI, transport: Transport) -> None:
    version = tls_version(transport)
    context = pki.client_context(version, alpn=("h2", "http/1.1"))
    with serve(suite_app, transport=transport) as served, served.connect(context=context) as client:
        assert client.tls is not None
        assert client.tls.selected_alpn_protocol() == "http/1.1"
        assert _info(client)["alpn"] == "http/1.1"


@TLS_VERSIONS
def test_client_certificate_accepted(serve: Serve, pki: PKI, transport: Transport) -> None:
    version = tls_version(transport)
    tls = pki.server_tls(client_ca=pki.ca_file, client_cert="required")
    context = pki.client_context(version, cert=pki.client)
    with (
        serve(suite_app, transport=transport, tls=tls) as served,
        served.connect(context=context) as client,
    ):
        assert _info(client)["client_certificate"] is True


@TLS_VERSIONS
@pytest.mark.parametrize("presented", ["untrusted", "none"])
def test_client_certificate_rejected(
    serve: Serve, pki: PKI, transport: Transport, presented: str
) -> None:
    """TLS 1.2 fails the handshake; TLS 1.3 completes it and fails the first read. Either
    way the client gets the server's alert (flushed before the close), not a bare EOF: the
    one RFC 8446 names for the reason."""
    version = tls_version(transport)
    tls = pki.server_tls(client_ca=pki.ca_file, client_cert="required")
    cert = pki.rogue_client if presented == "untrusted" else None
    context = pki.client_context(version, cert=cert)
    with serve(suite_app, transport=transport, tls=tls) as served:
        with pytest.raises(ssl.SSLError) as failure:
            client = served.connect(context=context)
            with client:
                assert transport == "tls1.3", "a TLS 1.2 handshake should have failed"
                client.fetch("GET", "/hello")
        assert not isinstance(failure.value, ssl.SSLEOFError), "no alert reached the client"
        expected = {
            ("untrusted", "tls1.2"): Alert.UNKNOWN_CA,
            ("untrusted", "tls1.3"): Alert.UNKNOWN_CA,
            ("none", "tls1.2"): Alert.HANDSHAKE_FAILURE,
            ("none", "tls1.3"): Alert.CERTIFICATE_REQUIRED,
        }[presented, transport]
        assert received_alert(failure.value) is expected, failure.value
        with served.connect(context=pki.client_context(version, cert=pki.client)) as client:
            assert client.fetch("GET", "/hello").status == 200
        served.wait_drained()


@transports("tls1.3")
def test_plain_http_on_the_tls_port(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        with served.connect("plain") as client:
            client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            response = client.read_response()
            assert response.status == 400
            assert b"https" in response.body.lower()
            assert client.closed_by_server()
        still_serving(served)


@transports("tls1.3")
def test_garbage_on_the_tls_port(serve: Serve, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        with served.connect("plain") as client:
            client.send(b"\x00\x01\x02 this is not TLS at all \r\n\r\n")
            try:
                data = client.read_to_eof()
            except ConnectionResetError:
                data = b""
            assert not data.startswith(b"HTTP/"), data  # an alert or nothing, never HTTP
        still_serving(served)


@TLS_VERSIONS
def test_client_hello_in_tiny_pieces(serve: Serve, pki: PKI, transport: Transport) -> None:
    """A handshake whose bytes arrive a few at a time still completes."""
    version = tls_version(transport)
    context = pki.client_context(version)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with serve(suite_app, transport=transport) as served:
        sock = socket.create_connection(served.address[:2], timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            for start in range(0, len(hello), 7):
                sock.sendall(hello[start : start + 7])
                time.sleep(0.002)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    assert data, "the server closed during the handshake"
                    incoming.write(data)
            sock.sendall(outgoing.read())
            tls.write(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            sock.sendall(outgoing.read())
            received = b""
            while b"Hello, world!" not in received:
                data = sock.recv(65536)
                assert data, f"the server closed early: {received!r}"
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    received += tls.read(65536)
            assert tls.version() == ("TLSv1.2" if version == "1.2" else "TLSv1.3")
            assert received.startswith(b"HTTP/1.1 200 ")
