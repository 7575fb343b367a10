"""One GnuTLS session over in-memory transport functions: the memory-BIO equivalent.

GnuTLS reads and writes through three callbacks given per session: *pull* hands it the
ciphertext we were fed (or ``EAGAIN`` when there is none, ``0`` after EOF), *vec push* takes
what it writes, *pull timeout* says whether pull would return now (it never waits). They are
module-level functions made once; a session finds its buffers through the integer its
transport pointer carries. Nothing may escape from them into C (ctypes would print the
traceback and return garbage): any exception is kept, GnuTLS gets ``EIO``, and the engine
raises it as a ``TLSError`` (or re-raises a ``KeyboardInterrupt``) once the C call returns.

GnuTLS sends no alert by itself when it fails: ``gnutls_alert_send_appropriate`` does, and we
record which one. A server session is created only once the ClientHello is in, so that its
SNI name picks the credentials before GnuTLS reads it (the neutral name table, as for every
engine); a ClientHello we cannot read is left to GnuTLS with the defaults.

Every session is freed exactly once: as soon as nothing more can happen on it (failure, or
both directions closed), or by its finalizer when the engine is dropped mid-handshake.

The states a listener (or a client) builds once from its neutral configuration are here too,
at the end: they make the engines and the engines read them, so one module holds both (their
native objects are in ``native.py``) and neither imports the other back.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import logging
import threading
import weakref
from ctypes import byref, c_int, c_size_t, c_uint, c_void_p
from typing import Any

from ...errors import RemoteProtocolError
from ..alerts import Alert
from ..config import Certificate as CertificateConfig
from ..config import ClientTLS, ServerTLS, TLSConfigError
from ..engine import (
    CloseNotify,
    EngineUnsupported,
    RaggedEOF,
    TLSError,
    TLSEvent,
    TLSInfo,
    VerifyFailure,
    verify_alert,
)
from ..memory import MemoryEngine
from ..names import NameTable
from ..records import ClientHello, ClientHelloReader, alert_record
from ..tickets import derive, read_ticket_key
from . import _lib
from ._lib import Datum, Library
from .native import Credentials, Priority, Protocols, datum

__all__ = ["GnuTLSClientState", "GnuTLSEngine", "GnuTLSServerState"]

log = logging.getLogger("spcore.tls")

#: Plaintext of one record at most (RFC 8446 5.1): GnuTLS never has more to give at once.
_RECORD = 16384
_AGAIN = (_lib.E_AGAIN, _lib.E_INTERRUPTED)
_VERIFY_BITS = (
    (_lib.CERT_REVOKED, VerifyFailure.REVOKED),
    (_lib.CERT_EXPIRED, VerifyFailure.EXPIRED),
    (_lib.CERT_NOT_ACTIVATED, VerifyFailure.NOT_YET_VALID),
    (_lib.CERT_SIGNER_NOT_FOUND, VerifyFailure.UNTRUSTED),
    (_lib.CERT_SIGNER_NOT_CA, VerifyFailure.UNTRUSTED),
    (_lib.CERT_UNEXPECTED_OWNER, VerifyFailure.NAME_MISMATCH),
)


class _Transport:
    """The buffers of one session, reached from the callbacks by its key."""

    __slots__ = ("data", "eof", "error", "out", "out_size", "pos", "session", "verified")

    def __init__(self) -> None:
        self.session: int | None = None
        self.data = b""  # ciphertext fed and not yet pulled, from ``pos``
        self.pos = 0
        self.eof = False
        self.out: list[bytes] = []
        self.out_size = 0
        self.error: BaseException | None = None
        #: The client certificate's verification status (server side), once checked.
        self.verified: int | None = None

    def feed(self, data: bytes) -> None:
        if self.pos < len(self.data):
            data = self.data[self.pos :] + data
        self.data, self.pos = data, 0


_TRANSPORTS: dict[int, _Transport] = {}
_keys = itertools.count(1)
_LIB: Library | None = None  # set by the first session; the callbacks use it


def _failed_in_callback(key: int | None, exc: BaseException) -> int:
    """Keep ``exc`` for the engine and tell GnuTLS the transport failed; never raises."""
    try:
        transport = _TRANSPORTS.get(key or 0)
        if transport is not None:
            if transport.error is None:
                transport.error = exc
            if transport.session is not None and _LIB is not None:
                _LIB.gnutls_transport_set_errno(transport.session, _lib.EIO)
    except BaseException:
        pass
    return -1


def _pull(key: int | None, buffer: int | None, size: int) -> int:
    try:
        transport = _TRANSPORTS[key or 0]
        available = len(transport.data) - transport.pos
        if available <= 0:
            if transport.eof:
                return 0
            assert _LIB is not None and transport.session is not None
            _LIB.gnutls_transport_set_errno(transport.session, _lib.EAGAIN)
            return -1
        count = min(size, available)
        start = transport.pos
        data = transport.data
        # GnuTLS asks for a record header, then its body: small slices, or the whole.
        piece = data if start == 0 and count == len(data) else data[start : start + count]
        ctypes.memmove(buffer or 0, piece, count)
        transport.pos = start + count
        return count
    except BaseException as exc:  # nothing may cross into C
        return _failed_in_callback(key, exc)


def _vec_push(key: int | None, iov: Any, count: int) -> int:
    try:
        transport = _TRANSPORTS[key or 0]
        total = 0
        for i in range(count):
            vector = iov[i]
            size = vector.iov_len
            if size:
                transport.out.append(ctypes.string_at(vector.iov_base, size))
                total += size
        transport.out_size += total
        return total
    except BaseException as exc:
        return _failed_in_callback(key, exc)


def _pull_timeout(key: int | None, _ms: int) -> int:
    try:
        transport = _TRANSPORTS[key or 0]
        return 1 if transport.pos < len(transport.data) or transport.eof else 0
    except BaseException as exc:
        return _failed_in_callback(key, exc)


def _verify_client(session: int | None) -> int:
    """The server's check of a client certificate, during the handshake: none presented is
    fine here (GnuTLS itself refuses that when one is required), one presented must verify
    against the client CA. The status is kept for the error."""
    key = None
    try:
        assert _LIB is not None
        key = _LIB.gnutls_transport_get_ptr(session)
        count = c_uint()
        if not _LIB.gnutls_certificate_get_peers(session, byref(count)) or not count.value:
            return 0
        status = c_uint()
        code = _LIB.gnutls_certificate_verify_peers3(session, None, byref(status))
        verified = status.value if code == 0 else _lib.CERT_INVALID
        _TRANSPORTS[key or 0].verified = verified
        return 0 if verified == 0 else -1
    except BaseException as exc:
        return _failed_in_callback(key, exc)


# Made once, kept for the life of the process: every session points at these.
_PULL = _lib.PULL_FUNC(_pull)
_VEC_PUSH = _lib.VEC_PUSH_FUNC(_vec_push)
_PULL_TIMEOUT = _lib.PULL_TIMEOUT_FUNC(_pull_timeout)
VERIFY_CLIENT = _lib.VERIFY_FUNC(_verify_client)

_buffers = threading.local()


def _read_buffer() -> ctypes.Array[ctypes.c_char]:
    """A record-sized buffer per thread (engines of several drivers may run at once)."""
    buffer: ctypes.Array[ctypes.c_char] | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = ctypes.create_string_buffer(_RECORD)
    return buffer


def _free_session(lib: Library, handle: int, key: int, _owners: object) -> None:
    """Finalizer: ``_owners`` (the state, the name buffer) outlive the session until here."""
    lib.gnutls_deinit(handle)
    _TRANSPORTS.pop(key, None)


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _verify_failure(status: int) -> VerifyFailure:
    for bit, kind in _VERIFY_BITS:
        if status & bit:
            return kind
    return VerifyFailure.INVALID


class GnuTLSEngine(MemoryEngine):
    """A ``TLSEngine`` on a GnuTLS session; made by the states below."""

    engine_name = "gnutls"
    _eof_reason = "GNUTLS_E_PREMATURE_TERMINATION"

    def __init__(
        self,
        state: GnuTLSServerState | GnuTLSClientState,
        *,
        server_side: bool,
        server_name: str | None = None,
        resume: bytes | None = None,
    ) -> None:
        super().__init__(server_side=server_side)
        global _LIB
        self._lib = _LIB = state.lib
        self._state_ref = state
        self._key = next(_keys)
        self._transport = _Transport()
        self._session: int | None = None
        self._free: weakref.finalize[Any, GnuTLSEngine] | None = None
        self._server_name = server_name
        self._saved_resumption: bytes | None = None
        self._hello: ClientHelloReader | None = None
        if server_side:
            self._hello = ClientHelloReader()
        else:
            self._open_client(state, server_name, resume)  # type: ignore[arg-type]

    # -- the session's birth and death -----------------------------------------------------------

    def _new_session(self, flags: int, owners: tuple[object, ...]) -> int:
        lib = self._lib
        handle = c_void_p()
        code = lib.gnutls_init(byref(handle), flags | _lib.NONBLOCK | _lib.NO_SIGNAL)
        if code < 0:
            raise TLSError(f"GnuTLS cannot make a session: {lib.error_text(code)}")
        session = handle.value
        assert session is not None
        self._session = session
        self._transport.session = session
        _TRANSPORTS[self._key] = self._transport
        self._free = weakref.finalize(self, _free_session, lib, session, self._key, owners)
        lib.gnutls_handshake_set_timeout(session, 0)  # the core owns every timeout
        lib.gnutls_transport_set_ptr(session, self._key)
        lib.gnutls_transport_set_pull_function(session, _PULL)
        lib.gnutls_transport_set_vec_push_function(session, _VEC_PUSH)
        lib.gnutls_transport_set_pull_timeout_function(session, _PULL_TIMEOUT)
        return session

    def _setup(self, code: int, what: str) -> None:
        if code < 0:
            raise self._failed(TLSError(f"GnuTLS refused {what}: {self._lib.error_text(code)}"))

    def _open_client(
        self, state: GnuTLSClientState, server_name: str | None, resume: bytes | None
    ) -> None:
        lib = self._lib
        flags = _lib.CLIENT | (_lib.FORCE_CLIENT_CERT if state.has_certificate else 0)
        name = server_name.encode("idna") if server_name else None
        self._name_buffer = ctypes.c_char_p(name)  # must live as long as the session
        session = self._new_session(flags, (state, self._name_buffer))
        self._setup(lib.gnutls_priority_set(session, state.priority.handle), "the priorities")
        self._setup(
            lib.gnutls_credentials_set(session, _lib.CRD_CERTIFICATE, state.credentials.handle),
            "the credentials",
        )
        if name and not _is_ip_address(server_name or ""):  # RFC 6066 3: no IP in SNI
            self._setup(lib.gnutls_server_name_set(session, _lib.NAME_DNS, name, len(name)), "SNI")
        if state.verify:
            lib.gnutls_session_set_verify_cert(session, self._name_buffer, 0)
        if state.alpn.count:
            self._setup(
                lib.gnutls_alpn_set_protocols(session, state.alpn.array, state.alpn.count, 0),
                "ALPN",
            )
        if resume:
            self._setup(lib.gnutls_session_set_data(session, resume, len(resume)), "the session")

    def _open_server(self, hello: ClientHello | None) -> None:
        """Create the server session, configured from the ClientHello when it could be read."""
        lib, state = self._lib, self._server_state
        credentials: Credentials = state.default
        name = hello.server_name if hello is not None else None
        if name is not None:
            chosen = state.names.lookup(name)
            if chosen is not None:
                credentials = chosen
            elif state.strict_sni:
                log.info("TLS: refusing unknown server name %r", name)
                self._transport.out.append(alert_record(Alert.UNRECOGNIZED_NAME))
                self._transport.out_size += 7
                raise self._failed(
                    TLSError(
                        f"TLS handshake failed: unknown server name {name!r}",
                        alert=Alert.UNRECOGNIZED_NAME,
                        alert_sent=True,
                        reason="UNRECOGNIZED_NAME",
                        during_handshake=True,
                    )
                )
        session = self._new_session(_lib.SERVER, (state, credentials))
        self._setup(lib.gnutls_priority_set(session, state.priority.handle), "the priorities")
        self._setup(
            lib.gnutls_credentials_set(session, _lib.CRD_CERTIFICATE, credentials.handle),
            "the credentials",
        )
        if state.client_cert != _lib.CERT_IGNORE:
            # The credentials' verify function (VERIFY_CLIENT) checks what is presented.
            lib.gnutls_certificate_server_set_request(session, state.client_cert)
        if state.alpn.count:
            self._setup(
                lib.gnutls_alpn_set_protocols(
                    session, state.alpn.array, state.alpn.count, _lib.ALPN_SERVER_PRECEDENCE
                ),
                "ALPN",
            )
        if state.ticket_key is not None:
            key = state.ticket_key[0]
            self._setup(lib.gnutls_session_ticket_enable_server(session, byref(key)), "tickets")

    @property
    def _server_state(self) -> GnuTLSServerState:
        return self._state_ref  # type: ignore[return-value]

    def _release(self) -> None:
        if self._free is None or self._session is None:
            return
        if not self._server_side and not self.closed_by_failure:
            self._saved_resumption = self.resumption  # it outlives the session
        self._free()
        self._session = None

    # -- output ----------------------------------------------------------------------------------

    @property
    def _output_size(self) -> int:
        return self._transport.out_size

    def data_to_send(self) -> bytes:
        transport = self._transport
        out = transport.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport.out_size = 0
        return data

    @property
    def resumption(self) -> bytes | None:
        session = self._session
        if session is None:
            return self._saved_resumption
        if self._server_side or self._info is None:
            return None
        lib = self._lib
        if self._info.version == "TLSv1.3" and not (
            lib.gnutls_session_get_flags(session) & _lib.SFLAGS_SESSION_TICKET
        ):
            return None  # the server's tickets have not come in yet
        datum = _lib.Datum()
        if lib.gnutls_session_get_data2(session, byref(datum)) < 0 or not datum.data:
            return None
        try:
            return ctypes.string_at(datum.data, datum.size)
        finally:
            lib.gnutls_free(datum.data)

    # -- the library calls -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._hello is None:
            self._transport.feed(data)
            return
        self._transport.feed(data)  # kept for GnuTLS, whether the peek succeeds or not
        try:
            hello = self._hello.feed(data)
        except RemoteProtocolError:
            hello = None  # unreadable to us: GnuTLS will say what is wrong with it
        else:
            if hello is None:
                return
        self._hello = None
        self._open_server(hello)

    def _feed_eof(self) -> None:
        self._transport.eof = True

    def _call(self, code: int) -> int:
        """Re-raise what a callback caught during the C call that returned ``code``."""
        error = self._transport.error
        if error is not None:
            self._transport.error = None
            if not isinstance(error, Exception):
                self._fail()
                raise error  # KeyboardInterrupt, SystemExit
            raise self._failed(TLSError(f"TLS engine failure in a GnuTLS callback: {error!r}"))
        return code

    def _handshake_step(self) -> bool:
        session = self._session
        if session is None:
            return False  # the server waits for the whole ClientHello
        lib, transport = self._lib, self._transport
        warnings = 0
        while True:
            before = transport.pos
            code = self._call(lib.gnutls_handshake(session))
            if code == 0:
                return True
            if code in _AGAIN:
                # GnuTLS stops after each record of a message split over several: go on
                # while it consumes what is there.
                if before < transport.pos < len(transport.data):
                    continue
                return False
            if lib.gnutls_error_is_fatal(code):
                raise self._error(code, during_handshake=True)
            warnings += 1  # a warning alert does not end a handshake (RFC 8446 6)...
            if warnings > 8:  # ...unless the peer sends nothing else
                raise self._error(_lib.E_UNEXPECTED_PACKET, during_handshake=True)

    def _make_info(self) -> TLSInfo:
        lib, session = self._lib, self._session
        assert session is not None
        suite = lib.gnutls_ciphersuite_get(session)
        return TLSInfo(
            version=_lib.PROTOCOL_NAMES.get(lib.gnutls_protocol_get_version(session), "?"),
            cipher=suite.decode() if suite else "",
            alpn_protocol=self._datum_text(lib.gnutls_alpn_get_selected_protocol),
            server_name=self._peer_server_name() if self._server_side else self._server_name,
            peer_certificate=self._peer_certificate(),
            resumed=bool(lib.gnutls_session_is_resumed(session)),
            ocsp_response=None if self._server_side else self._ocsp_response(),
        )

    def _datum_text(self, getter: Any) -> str | None:
        datum = _lib.Datum()
        if getter(self._session, byref(datum)) < 0 or not datum.data:
            return None
        return ctypes.string_at(datum.data, datum.size).decode("ascii", "replace")

    def _ocsp_response(self) -> bytes | None:
        datum = _lib.Datum()
        if self._lib.gnutls_ocsp_status_request_get(self._session, byref(datum)) < 0:
            return None
        return ctypes.string_at(datum.data, datum.size) if datum.data else None

    def _peer_server_name(self) -> str | None:
        size, kind = c_size_t(256), c_uint()
        buffer = ctypes.create_string_buffer(size.value)
        code = self._lib.gnutls_server_name_get(self._session, buffer, byref(size), byref(kind), 0)
        if code < 0 or kind.value != _lib.NAME_DNS:
            return None
        return buffer.raw[: size.value].decode("ascii", "replace")

    def _peer_certificate(self) -> bytes | None:
        count = c_uint()
        chain = self._lib.gnutls_certificate_get_peers(self._session, byref(count))
        if not chain or count.value == 0:
            return None
        first = chain[0]
        return ctypes.string_at(first.data, first.size)

    def _read(self, events: list[TLSEvent]) -> None:
        session = self._session
        if session is None:
            return
        lib, transport = self._lib, self._transport
        recv = lib.gnutls_record_recv
        buffer = _read_buffer()
        chunks: list[bytes] = []
        while True:
            if transport.pos >= len(transport.data) and not transport.eof:
                # Nothing left that could complete a record (and no plaintext held back: the
                # buffer takes a whole record): skip the call that would only say EAGAIN.
                break
            before = transport.pos
            count = self._call(recv(session, buffer, _RECORD))
            if count > 0:
                chunks.append(ctypes.string_at(buffer, count))
            elif count == 0:
                self._clean_close()
                self._flush(chunks, events)
                events.append(CloseNotify())
                return
            elif count in _AGAIN:
                if transport.pos == before:
                    break
                # A handshake message (a ticket, a KeyUpdate) was consumed: more may follow.
            elif count == _lib.E_PREMATURE_TERMINATION:
                self._ragged()
                self._flush(chunks, events)
                events.append(RaggedEOF())
                return
            elif count == _lib.E_REHANDSHAKE:
                # A renegotiation attempt: refused with a warning, the session goes on.
                lib.gnutls_alert_send(session, _lib.AL_WARNING, Alert.NO_RENEGOTIATION)
            elif (
                count == _lib.E_UNEXPECTED_PACKET_LENGTH
                and transport.eof
                and before == len(transport.data)
            ):
                # EOF in the middle of a record: GnuTLS calls it a decoding error, but it is
                # the transport that ended without close_notify.
                self._ragged()
                self._flush(chunks, events)
                events.append(RaggedEOF())
                return
            elif lib.gnutls_error_is_fatal(count):
                self._flush(chunks, events)
                raise self._error(count, during_handshake=False)
        self._flush(chunks, events)

    def _write(self, data: bytes) -> None:
        session = self._session
        assert session is not None
        lib = self._lib
        data = bytes(data)  # no copy for bytes; a bytearray or memoryview is copied once
        size = len(data)
        if size <= _RECORD:  # one record: the bytes object is the pointer
            count = self._call(lib.gnutls_record_send(session, data, size))
            if count != size:
                raise self._error(count if count < 0 else _lib.E_INTERNAL, during_handshake=False)
            return
        address = ctypes.cast(ctypes.c_char_p(data), c_void_p).value or 0
        lib.gnutls_record_cork(session)  # many records, one push
        sent = 0
        while sent < size:
            count = self._call(lib.gnutls_record_send(session, address + sent, size - sent))
            if count <= 0:
                raise self._error(count, during_handshake=False)
            sent += count
        self._call(lib.gnutls_record_uncork(session, 0))

    def _shutdown(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            code = self._call(self._lib.gnutls_bye(session, _lib.SHUT_WR))
        except TLSError:
            return  # already marked failed; close() never raises
        if code < 0:
            self._fail()

    def key_update(self, request_peer: bool = False) -> None:
        session = self._session
        if session is None or self._info is None or self.closed:
            raise EngineUnsupported("a KeyUpdate needs an open TLS 1.3 session")
        flags = _lib.KU_PEER if request_peer else 0
        code = self._call(self._lib.gnutls_session_key_update(session, flags))
        if code < 0:
            raise EngineUnsupported(f"GnuTLS cannot send a KeyUpdate: {self._lib.error_text(code)}")

    # -- errors ------------------------------------------------------------------------------------

    def _error(self, code: int, *, during_handshake: bool) -> TLSError:
        """The TLSError for a fatal ``code``, after sending the alert it calls for."""
        lib, session = self._lib, self._session
        assert session is not None
        name = lib.error_name(code)
        if code == _lib.E_PREMATURE_TERMINATION:
            text = "connection closed by peer " + (
                "during the TLS handshake" if during_handshake else "without close_notify"
            )
            return self._failed(TLSError(text, reason=name, during_handshake=during_handshake))
        failure, message = self._verification(code)
        alert: Alert | None
        if code == _lib.E_FATAL_ALERT_RECEIVED:
            alert, sent = Alert.lookup(lib.gnutls_alert_get(session)), False
        elif failure is not None:
            # GnuTLS would answer bad_certificate, or decode_error for a missing client
            # certificate under TLS 1.2: send the alert RFC 8446 6.2 names for the reason.
            tls13 = lib.gnutls_protocol_get_version(session) == _lib.PROTOCOL_TLS1_3
            alert = verify_alert(failure, tls13=tls13)
            sent = lib.gnutls_alert_send(session, _lib.AL_FATAL, alert) == 0
        else:
            level = c_int()
            alert = Alert.lookup(lib.gnutls_error_to_alert(code, byref(level)))
            sent = alert is not None and lib.gnutls_alert_send_appropriate(session, code) == 0
        if code != _lib.E_FATAL_ALERT_RECEIVED and not sent:
            alert = None
        text = (
            f"TLS {'handshake' if during_handshake else 'session'} failed: {lib.error_text(code)}"
        )
        if message:
            text += f" ({message})"
        return self._failed(
            TLSError(
                text,
                alert=alert,
                alert_sent=sent,
                reason=name,
                during_handshake=during_handshake,
                verify_failure=failure,
                verify_message=message,
            )
        )

    def _verification(self, code: int) -> tuple[VerifyFailure | None, str | None]:
        server = self._server_side
        if server and code in (_lib.E_NO_CERTIFICATE_FOUND, _lib.E_CERTIFICATE_REQUIRED):
            return VerifyFailure.MISSING, "no certificate was presented"
        lib = self._lib
        if server and code == _lib.E_CERTIFICATE_ERROR and self._transport.verified:
            status = self._transport.verified
        elif not server and code == _lib.E_CERTIFICATE_VERIFICATION_ERROR:
            status = lib.gnutls_session_get_verify_cert_status(self._session)
        else:
            return None, None
        out = _lib.Datum()
        message = None
        if (
            lib.gnutls_certificate_verification_status_print(status, _lib.CRT_X509, byref(out), 0)
            >= 0
        ):
            message = ctypes.string_at(out.data, out.size).decode("utf-8", "replace").strip()
            lib.gnutls_free(out.data)
        return _verify_failure(status), message


# -- the states: what a listener (or a client) builds once, and makes engines from ------------

#: GnuTLS's session ticket encryption key (STEK) size: key name, cipher key, MAC key.
STEK_SIZE = 64
TICKET_PURPOSE = "spcore gnutls session ticket key"


class GnuTLSServerState:
    """One listener: a credentials object per certificate, the SNI table, shared settings."""

    def __init__(self, lib: Library, config: ServerTLS) -> None:
        self.lib = lib
        self.priority = Priority.of(lib, config, server=True)

        def credentials(certificate: CertificateConfig) -> Credentials:
            made = Credentials(lib)
            made.set_certificate(certificate)
            if config.client_ca is not None:
                made.set_trust(config.client_ca, "client CA")
                lib.gnutls_certificate_set_verify_function(made.handle, VERIFY_CLIENT)
            return made

        self.default = credentials(config.certificate)
        self.names: NameTable[Credentials] = NameTable(
            {name: credentials(c) for name, c in config.sni.items()}
        )
        self.strict_sni = config.strict_sni
        self.client_cert = {
            "none": _lib.CERT_IGNORE,
            "optional": _lib.CERT_REQUEST,
            "required": _lib.CERT_REQUIRE,
        }[config.client_cert]
        self.alpn = Protocols(config.alpn)
        self.ticket_key: tuple[Datum, object] | None = None
        if config.ticket_key is not None:
            secret = read_ticket_key(config.ticket_key)
            self.ticket_key = datum(derive(secret, TICKET_PURPOSE, STEK_SIZE))

    def new_engine(self) -> GnuTLSEngine:
        return GnuTLSEngine(self, server_side=True)


class GnuTLSClientState:
    """Outgoing connections: trust anchors, an optional client certificate, SNI, ALPN."""

    def __init__(self, lib: Library, config: ClientTLS) -> None:
        self.lib = lib
        self.priority = Priority.of(lib, config, server=False)
        self.credentials = Credentials(lib)
        if config.verify:
            self.credentials.set_trust(config.trust, "CA")
        self.has_certificate = config.certificate is not None
        if config.certificate is not None:
            if config.certificate.ocsp_response is not None:
                raise TLSConfigError("a client certificate has no OCSP response to staple")
            self.credentials.set_certificate(config.certificate)
        self.verify = config.verify
        self.server_name = config.server_name
        self.alpn = Protocols(config.alpn)

    def new_engine(
        self, server_name: str | None = None, resume: object | None = None
    ) -> GnuTLSEngine:
        if resume is not None and not isinstance(resume, bytes):
            raise TypeError("resume must be the resumption of a gnutls engine")
        return GnuTLSEngine(
            self, server_side=False, server_name=server_name or self.server_name, resume=resume
        )
