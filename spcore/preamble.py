"""What may come before TLS: a PROXY protocol header, then the first bytes worth sniffing.

Behind a load balancer the real client address arrives as a PROXY protocol header (v1 text or
v2 binary, as HAProxy specifies them) ahead of everything else; a tunnel sends one to its
backend the same way (``proxy_header``). After it, a TLS listener looks
at the first bytes: OpenSSL meets a plain HTTP request with reason ``HTTP_REQUEST`` and sends
nothing, so we recognise it first and answer in cleartext, as nginx does.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Literal

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ProxyError",
    "ProxyHeaderReader",
    "ProxyInfo",
    "ProxyVersion",
    "Sniff",
    "plaintext_http_rejection",
    "proxy_header",
    "sniff",
]


class Sniff(enum.Enum):
    """What the first bytes of a connection look like."""

    TLS = "tls"
    HTTP = "http"
    OTHER = "other"


_HTTP_METHODS = tuple(
    method + b" "
    for method in (
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"PATCH",
        b"CONNECT",
        b"TRACE",
        b"PRI",
    )
)


def sniff(first: bytes) -> Sniff | None:
    """Classify the first bytes; None means too few bytes to decide yet (at most 8 are needed).

    TLS is a handshake record header (0x16 0x03 0x00..0x04); HTTP is a known method token and a
    space. Anything else is OTHER, which the TLS engine will refuse with an alert.
    """
    if not first:
        return None
    if first[0] == 0x16:
        if len(first) >= 2 and first[1] != 0x03:
            return Sniff.OTHER
        if len(first) < 3:
            return None
        return Sniff.TLS if first[2] <= 0x04 else Sniff.OTHER
    undecided = False
    for token in _HTTP_METHODS:
        if first.startswith(token):
            return Sniff.HTTP
        undecided = undecided or token.startswith(first)
    return None if undecided else Sniff.OTHER


_PLAIN_HTTP_BODY = (
    b"400 Bad Request: this port speaks HTTPS; you sent plain HTTP. Use https:// to reach it.\n"
)
_PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_PLAIN_HTTP_BODY)).encode("ascii") + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + _PLAIN_HTTP_BODY
)


def plaintext_http_rejection() -> bytes:
    """The cleartext 400 that answers plain HTTP sent to a TLS port, before closing."""
    return _PLAIN_HTTP_RESPONSE


class ProxyError(RemoteProtocolError):
    """The PROXY protocol header is missing or malformed; the connection must be dropped."""


@dataclass(frozen=True)
class ProxyInfo:
    """The addresses a PROXY header carries.

    ``protocol`` is "TCP4" or "TCP6" (addresses set), "UNKNOWN" (v1 UNKNOWN or v2 UNSPEC) or
    "LOCAL" (v2 health check from the proxy itself); in the last two, use the socket's own
    addresses.
    """

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    protocol: str


_V1_PREFIX = b"PROXY "
_V1_MAX_LINE = 107  # the spec's worst case, "PROXY UNKNOWN" + two full IPv6 addresses, CRLF
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_HEADER = struct.Struct("!12sBBH")  # signature, version|command, family|transport, length
_V2_MAX_PAYLOAD = 4096  # addresses (at most 216 bytes) plus TLVs; HAProxy's own are far smaller
_V2_LOCAL, _V2_PROXY = 0, 1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM, _DGRAM = 1, 2

_IPAddress = type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]


def _v1_endpoint(address: str, port: str, family: _IPAddress) -> tuple[str, int]:
    # ipaddress accepts IPv6 scope ids ("fe80::1%eth0"); the PROXY protocol does not.
    if "%" in address:
        raise ProxyError(f"bad address {address!r} in PROXY v1 header")
    try:
        parsed = family(address)
    except ValueError:
        raise ProxyError(f"bad address {address!r} in PROXY v1 header") from None
    if not (port.isdigit() and len(port) <= 5 and (port == "0" or port[0] != "0")):
        raise ProxyError(f"bad port {port!r} in PROXY v1 header")
    number = int(port)
    if number > 0xFFFF:
        raise ProxyError(f"port {number} out of range in PROXY v1 header")
    return str(parsed), number


def _parse_v1(line: str) -> ProxyInfo:
    """Parse what follows "PROXY " up to the CRLF."""
    protocol, _, rest = line.partition(" ")
    if protocol == "UNKNOWN":
        return ProxyInfo(None, None, "UNKNOWN")  # the spec says to ignore the rest of the line
    if protocol == "TCP4":
        family: _IPAddress = ipaddress.IPv4Address
    elif protocol == "TCP6":
        family = ipaddress.IPv6Address
    else:
        raise ProxyError(f"unknown PROXY v1 protocol {protocol!r}")
    fields = rest.split(" ")
    if len(fields) != 4:
        raise ProxyError("PROXY v1 header needs two addresses and two ports")
    source = _v1_endpoint(fields[0], fields[2], family)
    destination = _v1_endpoint(fields[1], fields[3], family)
    return ProxyInfo(source, destination, protocol)


def _parse_v2(command: int, family_transport: int, payload: bytes) -> ProxyInfo:
    if command == _V2_LOCAL:
        return ProxyInfo(None, None, "LOCAL")  # the spec says to discard the address block
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family > _AF_UNIX or transport > _DGRAM:
        raise ProxyError(f"invalid PROXY v2 family/transport {family_transport:#04x}")
    if family == _AF_UNSPEC:
        return ProxyInfo(None, None, "UNKNOWN")
    if transport != _STREAM or family == _AF_UNIX:
        raise ProxyError(f"unsupported PROXY v2 family/transport {family_transport:#04x}")
    address_type: _IPAddress
    if family == _AF_INET:
        size, address_type, protocol = 4, ipaddress.IPv4Address, "TCP4"
    else:
        size, address_type, protocol = 16, ipaddress.IPv6Address, "TCP6"
    if len(payload) < 2 * size + 4:
        raise ProxyError("PROXY v2 address block too short")
    source = address_type(payload[:size])
    destination = address_type(payload[size : 2 * size])
    source_port, destination_port = struct.unpack_from("!HH", payload, 2 * size)
    # Any TLVs after the addresses are skipped.
    return ProxyInfo((str(source), source_port), (str(destination), destination_port), protocol)


ProxyVersion = Literal["v1", "v2"]


def proxy_header(source: Any, destination: Any, version: ProxyVersion) -> bytes:
    """The PROXY header telling a backend that the connection from ``source`` came in at
    ``destination`` (socket addresses; (host, port, ...) tuples of one IP family). Addresses
    it cannot carry (a Unix socket's, none) give ``UNKNOWN`` (v1) or ``UNSPEC`` (v2), which
    tell the backend to use the connection's own (the spec's section 2.1 and 2.2).

    https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
    """
    endpoints = None
    if isinstance(source, tuple) and isinstance(destination, tuple):
        try:
            pair = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        except ValueError:
            pair = None
        if pair is not None and pair[0].version == pair[1].version:
            endpoints = pair, int(source[1]), int(destination[1])
    if version == "v1":
        if endpoints is None:
            return b"PROXY UNKNOWN\r\n"
        (src, dst), sport, dport = endpoints
        protocol = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {protocol} {src} {dst} {sport} {dport}\r\n".encode("ascii")
    if endpoints is None:
        return _V2_HEADER.pack(_V2_SIGNATURE, 0x20 | _V2_PROXY, _AF_UNSPEC << 4, 0)
    (src, dst), sport, dport = endpoints
    family = _AF_INET if src.version == 4 else _AF_INET6
    block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return (
        _V2_HEADER.pack(_V2_SIGNATURE, 0x20 | _V2_PROXY, family << 4 | _STREAM, len(block)) + block
    )


class ProxyHeaderReader:
    """Strip a required PROXY header (v1 or v2) from the start of a connection.

    ``feed`` returns the header and the bytes that followed it (which belong to the next layer,
    and must not be lost), or None while more bytes are needed. Anything that is not a valid
    header raises ``ProxyError``, decided as early as the bytes allow. The buffer is bounded by
    the header size limits.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._done = False

    def feed(self, data: bytes) -> tuple[ProxyInfo, bytes] | None:
        if self._done:
            raise LocalProtocolError("the PROXY header was already returned; feed the next layer")
        self._buffer += data
        buf = self._buffer
        if buf.startswith(_V2_SIGNATURE):
            parsed = self._read_v2()
        elif buf.startswith(_V1_PREFIX):
            parsed = self._read_v1()
        elif _V2_SIGNATURE.startswith(buf) or _V1_PREFIX.startswith(buf):
            return None
        else:
            raise ProxyError("connection does not start with a PROXY protocol header")
        if parsed is None:
            return None
        info, end = parsed
        rest = bytes(buf[end:])
        self._buffer = bytearray()
        self._done = True
        return info, rest

    def _read_v1(self) -> tuple[ProxyInfo, int] | None:
        buf = self._buffer
        newline = buf.find(b"\n", 0, _V1_MAX_LINE)
        if newline < 0:
            if len(buf) >= _V1_MAX_LINE:
                raise ProxyError(f"PROXY v1 line longer than {_V1_MAX_LINE} bytes")
            return None
        if buf[newline - 1] != 0x0D:
            raise ProxyError("PROXY v1 line not terminated by CRLF")
        try:
            line = buf[len(_V1_PREFIX) : newline - 1].decode("ascii")
        except UnicodeDecodeError:
            raise ProxyError("PROXY v1 line is not ASCII") from None
        return _parse_v1(line), newline + 1

    def _read_v2(self) -> tuple[ProxyInfo, int] | None:
        buf = self._buffer
        if len(buf) < _V2_HEADER.size:
            return None
        _, version_command, family_transport, length = _V2_HEADER.unpack_from(buf)
        if version_command >> 4 != 2:
            raise ProxyError(f"PROXY v2 header with version {version_command >> 4}")
        command = version_command & 0x0F
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyError(f"PROXY v2 header with command {command}")
        if length > _V2_MAX_PAYLOAD:
            raise ProxyError(f"PROXY v2 header of {length} bytes")
        end = _V2_HEADER.size + length
        if len(buf) < end:
            return None
        payload = bytes(buf[_V2_HEADER.size : end])
        return _parse_v2(command, family_transport, payload), end
