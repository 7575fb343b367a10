"""What is the OpenSSL engine's own, beyond the engine kit (which it passes like every engine):
how it reads records without an exception per read
(https://github.com/python/cpython/issues/123954), its SNI callback's failures, a shutdown
with records left unread, and the safe options of the contexts it builds."""

from __future__ import annotations

import logging
import ssl
import sys
from typing import Any

import pytest
from conftest import PKI

from spcore.conformance.enginekit import connect, expect_error, move, records
from spcore.tls import Alert, ApplicationData, ClientContext, ClientTLS, CloseNotify, ServerContext
from spcore.tls.openssl import OpenSSLEngine
from spcore.tls.openssl_context import OpenSSLClientState, OpenSSLServerState

TLS12 = ssl.TLSVersion.TLSv1_2


def server(pki: PKI, **options: Any) -> OpenSSLEngine:
    engine = ServerContext(pki.server_tls(**options)).new_engine()
    assert isinstance(engine, OpenSSLEngine)
    return engine


def client(pki: PKI, hostname: str = "localhost") -> OpenSSLEngine:
    engine = ClientContext(ClientTLS(trust=pki.ca_file)).new_engine(hostname)
    assert isinstance(engine, OpenSSLEngine)
    return engine


class CountingSSLObject:
    """Wraps an ``SSLObject``, counting ``read`` calls and the WantRead exceptions they raise."""

    def __init__(self, inner: ssl.SSLObject) -> None:
        self._inner = inner
        self.reads = 0
        self.want_read = 0

    def read(self, *args: Any) -> bytes:
        self.reads += 1
        try:
            return self._inner.read(*args)
        except ssl.SSLWantReadError:
            self.want_read += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("partial_tail", [False, True], ids=["whole_records", "partial_tail"])
def test_reading_several_records_costs_at_most_one_want_read(pki: PKI, partial_tail: bool) -> None:
    s, c = server(pki), client(pki)
    connect(s, c)
    wire = b""
    for i in range(8):
        c.send(b"record-%d;" % i)
        wire += c.data_to_send()
    if partial_tail:
        c.send(b"late")
        wire += c.data_to_send()[:7]
    counter = CountingSSLObject(s._ssl)
    s._ssl = counter  # type: ignore[assignment]
    events = s.receive_data(wire)
    assert len(events) == 1 and isinstance(events[0], ApplicationData)
    assert counter.want_read == int(partial_tail)  # the buffers are checked first
    assert counter.reads <= 8 + 1


def test_close_with_unread_application_data_still_sends_close_notify(pki: PKI) -> None:
    """Records waiting unread make OpenSSL's shutdown fail (APPLICATION_DATA_AFTER_CLOSE_NOTIFY)
    after it wrote close_notify; the engine must not raise, and must let the alert out."""
    s, c = server(pki), client(pki)
    connect(s, c)
    c.send(b"unread")
    s._incoming.write(c.data_to_send())  # arrived, never read: bypass receive_data
    s.close()
    assert s.closed
    assert move(s, c) == [CloseNotify()]
    s.close()
    assert s.receive_data(b"whatever") == []


class BrokenTable:
    def lookup(self, name: str) -> Any:
        raise RuntimeError("broken certificate table")


def test_a_failing_sni_callback_fails_the_handshake_cleanly(
    pki: PKI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    state = OpenSSLServerState(pki.server_tls())
    assert state.context.sni_callback is not None
    monkeypatch.setattr(state.context.sni_callback, "table", BrokenTable())
    s, c = state.new_engine(), client(pki)
    c.start()
    with caplog.at_level(logging.ERROR, logger="spcore.tls"):
        server_error = expect_error(lambda: move(c, s))
    assert server_error.reason == "CALLBACK_FAILED" and server_error.during_handshake
    assert server_error.alert is Alert.INTERNAL_ERROR and server_error.alert_sent
    assert "SNI callback failed" in caplog.text and "broken certificate table" in caplog.text
    client_error = expect_error(lambda: move(s, c))
    assert client_error.alert is Alert.INTERNAL_ERROR and not client_error.alert_sent
    assert unraisable == []


def test_a_client_alert_sent_in_plaintext_is_read_from_the_record(pki: PKI) -> None:
    """OpenSSL's reason for a refused certificate does not say which alert went out; the
    engine reads it back from the plaintext alert record (under TLS 1.3 too: OpenSSL's client
    switches its write side to the handshake keys only for its second flight)."""
    s, c = server(pki), client(pki, "wrong.test")
    c.start()
    move(c, s)
    error = expect_error(lambda: move(s, c))
    alert = c.data_to_send()
    assert [kind for kind, _ in records(alert)] == [0x15]
    assert error.alert is Alert(alert[-1]) is Alert.BAD_CERTIFICATE


def _contexts(pki: PKI) -> list[ssl.SSLContext]:
    return [
        OpenSSLServerState(pki.server_tls()).context,
        OpenSSLClientState(ClientTLS(trust=pki.ca_file)).context,
    ]


def test_contexts_have_safe_options(pki: PKI) -> None:
    for ctx in _contexts(pki):
        assert ctx.minimum_version == TLS12
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert not ctx.options & getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


def test_only_the_profiles_forward_secret_aead_suites_for_tls12(pki: PKI) -> None:
    for ctx in _contexts(pki):
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert len(tls12) == 6  # Mozilla intermediate without its DHE suites
        for cipher in tls12:
            assert cipher["aead"] and cipher["kea"] == "kx-ecdhe", cipher["name"]


def test_an_engine_option_replaces_the_cipher_list(pki: PKI) -> None:
    config = ClientTLS(trust=pki.ca_file, engine_options={"openssl": {"ciphers": "ECDHE+AESGCM"}})
    names = {c["name"] for c in OpenSSLClientState(config).context.get_ciphers()}
    assert "ECDHE-ECDSA-CHACHA20-POLY1305" not in names and "ECDHE-ECDSA-AES128-GCM-SHA256" in names
