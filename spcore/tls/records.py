"""A read-only view of the first TLS records: the ClientHello, before the TLS engine sees it.

The server peeks at the offered SNI, ALPN protocols and versions to choose a certificate or
a protocol stack, and bounds what it buffers before any crypto runs. The bytes themselves
still go to the engine unchanged; this module only reads them. Whatever the peer sends, the
only exception that escapes is ``RecordError``, which names the alert to answer with.

It refuses only what no TLS engine would take (foreign record types, oversized records, a
record that is not a handshake) and leaves every choice a TLS library makes to the engine:
an unknown ``legacy_version`` is the engine's to negotiate (RFC 8446 4.1.2, RFC 5246
Appendix E), and a ClientHello larger than this reader reads is handed over unread, for the
engine to accept or refuse under its own limit and with its own alert.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError
from .alerts import Alert

__all__ = [
    "MAX_CLIENT_HELLO",
    "MAX_RECORD_PAYLOAD",
    "ClientHello",
    "ClientHelloReader",
    "RecordError",
    "alert_record",
]

MAX_RECORD_PAYLOAD = 2**14 + 2048
"""The TLSCiphertext bound of RFC 5246 6.2.3; it also covers TLS 1.3's 2**14 + 256."""

MAX_CLIENT_HELLO = 64 * 1024
"""The largest ClientHello body this reader reads: real ones stay under a few KiB, even with
post-quantum key shares. A larger one is handed to the engine unread (``ClientHello.read``
is False), and the engine's own limit applies (OpenSSL's 128 KiB, GnuTLS's 128 KiB)."""

_HEADER = struct.Struct("!BHH")  # content type, record version, length
_HEADER_SIZE = _HEADER.size
_ALERT = 21
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_HOST_NAME = 0


class RecordError(RemoteProtocolError):
    """The peer's first records break TLS; ``alert`` is the fatal alert to answer with."""

    def __init__(self, msg: str, alert: Alert) -> None:
        super().__init__(msg)
        self.alert = alert


def _is_grease(value: int) -> bool:
    """RFC 8701 reserves 0x0A0A, 0x1A1A, ... 0xFAFA so that peers learn to ignore unknowns."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass(frozen=True)
class ClientHello:
    """The ClientHello fields a server decides on before the handshake."""

    legacy_version: int
    record_version: int
    cipher_suites: tuple[int, ...]
    server_name: str | None
    alpn_protocols: tuple[str, ...]
    supported_versions: tuple[int, ...]
    extensions: tuple[int, ...]
    #: False when the hello was too large to read: only the versions are known then, and
    #: the engine decides.
    read: bool = True

    @property
    def max_version(self) -> int:
        """The highest version offered: supported_versions wins over legacy_version (TLS 1.3)."""
        real = [v for v in self.supported_versions if not _is_grease(v)]
        return max(real) if real else self.legacy_version


def alert_record(description: Alert, *, version: int = 0x0303) -> bytes:
    """A plaintext fatal alert record: what a server sends before any handshake key exists."""
    return _HEADER.pack(_ALERT, version, 2) + bytes((2, description))


def _decode_error(msg: str) -> RecordError:
    return RecordError(msg, Alert.DECODE_ERROR)


class _Cursor:
    """A bounds-checked reader over a window of a buffer: any overrun is a DECODE_ERROR."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    def remaining(self) -> int:
        return self._end - self._pos

    def take(self, size: int) -> bytes:
        if size > self._end - self._pos:
            raise _decode_error("ClientHello truncated")
        start = self._pos
        self._pos += size
        return self._data[start : self._pos]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int, minimum: int = 0, maximum: int | None = None) -> _Cursor:
        """The next length-prefixed vector as a sub-cursor (no copy)."""
        length = self.uint(length_size)
        if length < minimum or (maximum is not None and length > maximum):
            raise _decode_error(f"vector length {length} out of range")
        if length > self._end - self._pos:
            raise _decode_error("vector runs past its container")
        sub = _Cursor(self._data, self._pos, self._pos + length)
        self._pos += length
        return sub

    def uint16_list(self) -> tuple[int, ...]:
        """The rest of the window read as big-endian 16-bit values."""
        count, odd = divmod(self.remaining(), 2)
        if odd:
            raise _decode_error("odd length in a list of 16-bit values")
        return struct.unpack(f"!{count}H", self.take(2 * count))

    def finish(self, what: str) -> None:
        if self._pos != self._end:
            raise _decode_error(f"{self._end - self._pos} trailing bytes in {what}")


def _parse_server_name(data: _Cursor) -> str | None:
    names = data.vector(2, minimum=1)
    data.finish("server_name")
    host: str | None = None
    while names.remaining():
        name_type = names.uint(1)
        name = names.vector(2, minimum=1)
        if name_type != _HOST_NAME:
            continue
        if host is not None:
            raise RecordError("two host names in SNI", Alert.ILLEGAL_PARAMETER)
        raw = name.take(name.remaining())
        # RFC 6066: ASCII, A-labels for IDNs. Refusing spaces and controls keeps logs honest.
        if any(byte < 0x21 or byte > 0x7E for byte in raw):
            raise RecordError("SNI host name is not ASCII", Alert.ILLEGAL_PARAMETER)
        host = raw.decode("ascii")
    return host


def _parse_alpn(data: _Cursor) -> tuple[str, ...]:
    names = data.vector(2, minimum=2)
    data.finish("application_layer_protocol_negotiation")
    protocols: list[str] = []
    while names.remaining():
        name = names.vector(1, minimum=1)
        protocols.append(name.take(name.remaining()).decode("latin-1"))
    return tuple(protocols)


def _parse_supported_versions(data: _Cursor) -> tuple[int, ...]:
    versions = data.vector(1, minimum=2).uint16_list()
    data.finish("supported_versions")
    return versions


def _parse_client_hello(body: bytes, record_version: int) -> ClientHello:
    """Parse a ClientHello body (RFC 8446 4.1.2; extensions optional as in RFC 5246)."""
    cur = _Cursor(body)
    legacy_version = cur.uint(2)  # any value: the engine negotiates (RFC 5246 Appendix E)
    cur.take(32)  # random
    cur.vector(1, maximum=32)  # legacy_session_id
    cipher_suites = cur.vector(2, minimum=2).uint16_list()
    cur.vector(1, minimum=1)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    order: list[int] = []
    if cur.remaining():
        extensions = cur.vector(2)
        cur.finish("ClientHello")
        seen: set[int] = set()
        while extensions.remaining():
            ext_type = extensions.uint(2)
            data = extensions.vector(2)
            if ext_type in seen:
                raise RecordError(f"extension {ext_type} sent twice", Alert.ILLEGAL_PARAMETER)
            seen.add(ext_type)
            order.append(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                server_name = _parse_server_name(data)
            elif ext_type == _EXT_ALPN:
                alpn = _parse_alpn(data)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _parse_supported_versions(data)
    return ClientHello(
        legacy_version=legacy_version,
        record_version=record_version,
        cipher_suites=cipher_suites,
        server_name=server_name,
        alpn_protocols=alpn,
        supported_versions=versions,
        extensions=tuple(order),
    )


def _check_record_header(header: bytes) -> tuple[int, int]:
    """Validate a 5-byte record header as soon as it arrives; return (version, length)."""
    content_type, version, length = _HEADER.unpack(header)
    if content_type & 0x80 and header[2] == _CLIENT_HELLO:
        # SSLv2 framing: a 15-bit length with the top bit set, then msg type 1 (client hello).
        raise RecordError("SSLv2-style ClientHello", Alert.PROTOCOL_VERSION)
    if content_type != _HANDSHAKE:
        raise RecordError(
            f"record type {content_type} before the handshake",
            Alert.UNEXPECTED_MESSAGE,
        )
    if version >> 8 != 3:
        raise RecordError(f"record version {version:#06x}", Alert.PROTOCOL_VERSION)
    if length > MAX_RECORD_PAYLOAD:
        raise RecordError(f"record of {length} bytes", Alert.RECORD_OVERFLOW)
    if length == 0:
        # RFC 8446 5.1: zero-length handshake fragments are forbidden.
        raise RecordError("empty handshake record", Alert.UNEXPECTED_MESSAGE)
    return version, length


class ClientHelloReader:
    """Feed the first bytes of a connection; returns the ClientHello once it is complete.

    Handles a ClientHello fragmented over several records and records split across ``feed``
    calls. Each record header is checked as soon as its five bytes are in, so an oversized or
    foreign record is refused before its payload is buffered. Once complete, further calls
    return the same ClientHello (the caller keeps and forwards the bytes itself); after an
    error, further calls raise the same error.
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes of the record being received, header included
        self._handshake = bytearray()  # reassembled handshake-layer bytes
        self._record_version: int | None = None
        self._hello: ClientHello | None = None
        self._error: RecordError | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        """Add bytes; return the ClientHello when complete, None while more bytes are needed."""
        if self._hello is not None:
            return self._hello
        if self._error is not None:
            raise self._error
        self._pending += data
        try:
            self._hello = self._advance()
        except RecordError as exc:
            self._error = exc
            raise
        if self._hello is not None:
            self._pending = bytearray()
        return self._hello

    def _advance(self) -> ClientHello | None:
        buf = self._pending
        pos = 0
        try:
            while len(buf) - pos >= _HEADER_SIZE:
                version, length = _check_record_header(bytes(buf[pos : pos + _HEADER_SIZE]))
                end = pos + _HEADER_SIZE + length
                if len(buf) < end:
                    return None
                if self._record_version is None:
                    self._record_version = version
                self._handshake += buf[pos + _HEADER_SIZE : end]
                pos = end
                hello = self._parse_handshake(self._record_version)
                if hello is not None:
                    return hello
            return None
        finally:
            # Dropping only whole consumed records keeps one-byte feeding linear: what stays
            # pending is always less than one record.
            del buf[:pos]

    def _parse_handshake(self, record_version: int) -> ClientHello | None:
        """Parse the handshake message once all its fragments are in."""
        hs = self._handshake
        if len(hs) < 4:
            return None
        if hs[0] != _CLIENT_HELLO:
            raise RecordError(
                f"handshake message {hs[0]} instead of ClientHello",
                Alert.UNEXPECTED_MESSAGE,
            )
        length = int.from_bytes(hs[1:4], "big")
        if length > MAX_CLIENT_HELLO:
            return self._unread(record_version)
        if len(hs) < 4 + length:
            return None
        if len(hs) > 4 + length:
            # RFC 8446 5.1: the ClientHello must end on a record boundary.
            raise RecordError("data after the ClientHello in its record", Alert.UNEXPECTED_MESSAGE)
        return _parse_client_hello(bytes(hs[4:]), record_version)

    def _unread(self, record_version: int) -> ClientHello:
        """Too large to read: the engine gets it as it is (and its own limit applies)."""
        hs = self._handshake
        legacy_version = int.from_bytes(hs[4:6], "big") if len(hs) >= 6 else record_version
        self._handshake = bytearray()
        return ClientHello(
            legacy_version=legacy_version,
            record_version=record_version,
            cipher_suites=(),
            server_name=None,
            alpn_protocols=(),
            supported_versions=(),
            extensions=(),
            read=False,
        )
