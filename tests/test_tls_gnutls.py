"""What is the GnuTLS engine's own, beyond the engine kit: every native resource freed
exactly once whatever happens to the connection, no Python exception ever crossing into C,
records read without a wasted call, and its configuration errors."""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import PKI

from spcore.conformance.enginekit import connect, expect_error, move
from spcore.tls import (
    Certificate,
    ClientContext,
    ClientTLS,
    ServerContext,
    ServerTLS,
    TLSConfigError,
)
from spcore.tls.gnutls import GNUTLS, _lib, probe

if not probe()[0]:
    pytest.skip(f"the gnutls engine cannot run here: {probe()[1]}", allow_module_level=True)

LIB = _lib.load()
PAIRS = {
    "gnutls_init": "gnutls_deinit",
    "gnutls_certificate_allocate_credentials": "gnutls_certificate_free_credentials",
    "gnutls_priority_init2": "gnutls_priority_deinit",
}


class Ledger:
    """Follows every native handle from its making to its freeing (addresses are reused)."""

    def __init__(self) -> None:
        self.live: set[int] = set()
        self.made = 0
        self.errors: list[str] = []

    def make(self, handle: int) -> None:
        self.made += 1
        self.live.add(handle)

    def free(self, handle: int) -> None:
        if handle not in self.live:
            self.errors.append(f"{handle:#x} freed twice, or never made")
        self.live.discard(handle)

    def check(self) -> None:
        assert self.made, "nothing was made: the test did not exercise the engine"
        assert not self.errors
        assert not self.live, f"{len(self.live)} handle(s) never freed"


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    books = Ledger()

    def making(original: Callable[..., int]) -> Callable[..., int]:
        def wrapper(pointer: Any, *args: Any) -> int:
            code = original(pointer, *args)
            if code == 0:
                books.make(pointer._obj.value)
            return code

        return wrapper

    def freeing(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(handle: int) -> None:
            books.free(handle)
            original(handle)

        return wrapper

    for make, free in PAIRS.items():
        monkeypatch.setattr(LIB, make, making(getattr(LIB, make)))
        monkeypatch.setattr(LIB, free, freeing(getattr(LIB, free)))
    yield books
    gc.collect()


def _contexts(pki: PKI) -> tuple[ServerContext, ClientContext]:
    return ServerContext(pki.server_tls(), GNUTLS), ClientContext(
        ClientTLS(trust=pki.ca_file), GNUTLS
    )


def test_every_resource_is_freed_exactly_once_whatever_ends_the_session(
    pki: PKI, ledger: Ledger
) -> None:
    server_state, client_state = _contexts(pki)
    # A complete session closed both ways.
    s, c = server_state.new_engine(), client_state.new_engine("localhost")
    connect(s, c)
    s.close()
    c.close()
    move(s, c)
    move(c, s)
    # A handshake failure (the client refuses the name).
    s2, c2 = server_state.new_engine(), client_state.new_engine("wrong.test")
    c2.start()
    move(c2, s2)
    expect_error(functools.partial(move, s2, c2))
    # Closed during the handshake, and dropped mid-handshake without a word.
    s3, c3 = server_state.new_engine(), client_state.new_engine("localhost")
    c3.start()
    move(c3, s3)
    s3.close()
    s4, c4 = server_state.new_engine(), client_state.new_engine("localhost")
    c4.start()
    move(c4, s4)
    # A server engine that never saw a ClientHello holds no session at all.
    server_state.new_engine()
    del s, c, s2, c2, s3, c3, s4, c4, server_state, client_state
    gc.collect()
    ledger.check()


def test_a_session_outlives_a_reload_of_its_listener(pki: PKI, ledger: Ledger) -> None:
    server_state, client_state = _contexts(pki)
    s, c = server_state.new_engine(), client_state.new_engine("localhost")
    c.start()
    move(c, s)
    server_state.reload()  # the old credentials stay alive while s uses them
    gc.collect()
    connect(s, c)
    c.send(b"still here")
    assert move(c, s)[0].data == b"still here"  # type: ignore[union-attr]
    del s, c, server_state, client_state
    gc.collect()
    ledger.check()


def test_an_exception_in_a_callback_never_reaches_c(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    server_state, client_state = _contexts(pki)
    s, c = server_state.new_engine(), client_state.new_engine("localhost")
    c.start()
    hello = c.data_to_send()

    def broken(*args: object) -> None:
        raise RuntimeError("the transport broke")

    s.receive_data(hello)  # the session now exists and waits for the client's Finished
    monkeypatch.setattr(LIB, "gnutls_transport_set_errno", broken)  # pull calls it on EAGAIN
    move(s, c)
    c_out = c.data_to_send()
    error = expect_error(lambda: s.receive_data(c_out[:3]))
    assert "the transport broke" in str(error) and s.closed
    assert unraisable == []


def test_a_keyboard_interrupt_in_a_callback_comes_out_after_the_c_call(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_state, client_state = _contexts(pki)
    s, c = server_state.new_engine(), client_state.new_engine("localhost")
    c.start()
    s.receive_data(c.data_to_send())

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LIB, "gnutls_transport_set_errno", interrupted)
    move(s, c)
    with pytest.raises(KeyboardInterrupt):
        s.receive_data(c.data_to_send()[:3])
    assert s.closed


def test_records_are_read_without_a_wasted_call(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    server_state, client_state = _contexts(pki)
    s, c = server_state.new_engine(), client_state.new_engine("localhost")
    connect(s, c)
    wire = b""
    for i in range(8):
        c.send(b"record-%d;" % i)
        wire += c.data_to_send()
    calls = []
    recv = LIB.gnutls_record_recv

    def counting(*args: Any) -> int:
        calls.append(1)
        result: int = recv(*args)
        return result

    monkeypatch.setattr(LIB, "gnutls_record_recv", counting)
    assert len(s.receive_data(wire)) == 1
    assert len(calls) == 8  # one per record, no call just to learn there is nothing more


def test_configuration_errors_name_what_is_wrong(pki: PKI, tmp_path: Any) -> None:
    bad_priority = pki.server_tls(engine_options={"gnutls": {"priority": "NORMAL:+NOPE"}})
    with pytest.raises(TLSConfigError, match=r"priority string at '.*NOPE"):
        ServerContext(bad_priority, GNUTLS)
    with pytest.raises(TLSConfigError, match="unknown gnutls engine option"):
        ServerContext(pki.server_tls(engine_options={"gnutls": {"ciphers": "x"}}), GNUTLS)
    keys = tmp_path / "tickets.key"
    keys.write_text("not base64 at all!\n")
    with pytest.raises(TLSConfigError, match=r"ticket key file .* is unusable"):
        ServerContext(ServerTLS(pki.certificate(pki.server), ticket_key=keys), GNUTLS)
    mismatched = Certificate(pki.server.certfile, pki.other.keyfile)
    with pytest.raises(TLSConfigError, match=r"certificate file .* with its key: .*not match"):
        ServerContext(ServerTLS(mismatched), GNUTLS)


def test_a_missing_library_is_reported_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lib, "_SONAMES", ("libgnutls-nowhere.so.99",))
    monkeypatch.setattr(_lib.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(_lib.GnuTLSUnavailable, match="libgnutls30 is not installed"):
        _lib._open()
    monkeypatch.undo()
    monkeypatch.setattr(_lib, "MINIMUM_VERSION", "99.0.0")
    with pytest.raises(_lib.GnuTLSUnavailable, match="too old"):
        _lib._open()
