"""The engine-neutral TLS configuration: what a listener (or a client) wants, in plain terms.

These are frozen values that no TLS library owns. Every engine builds its native state from
them once per listener (an ``ssl.SSLContext``, GnuTLS credentials and a priority cache...), so
the same configuration serves whichever engine is chosen, and the engine can be swapped
without touching the listener. Files are named here and read when the engine builds its
state, so rebuilding from the same configuration (a reload) picks up renewed files.

Cipher policy is a named profile, defined here by IANA suite names; each engine translates a
profile into its own cipher string. Anything an engine can do beyond the neutral settings goes
in ``engine_options``, keyed by the engine's name, and only that engine reads it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Literal, Union

__all__ = [
    "PROFILES",
    "Certificate",
    "CipherProfile",
    "ClientCertMode",
    "ClientTLS",
    "ServerTLS",
    "Source",
    "TLSConfigError",
    "TLSVersion",
    "describe",
    "read_source",
]

#: A file name, or the file's content itself (PEM text, or DER for an OCSP response).
Source = Union[str, "os.PathLike[str]", bytes]
TLSVersion = Literal["1.2", "1.3"]
ClientCertMode = Literal["none", "optional", "required"]

_VERSIONS: tuple[TLSVersion, ...] = ("1.2", "1.3")
_CLIENT_CERT_MODES = ("none", "optional", "required")
# RFC 1123 labels, a wildcard allowed as the whole leftmost label only.
_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


class TLSConfigError(ValueError):
    """A TLS setting is wrong or a file it names is unusable; the message says which."""


@dataclass(frozen=True)
class CipherProfile:
    """A cipher policy by IANA names: the versions it allows and, per version, the suites.

    Engines map these names onto their own cipher strings; the certification kit checks that
    what an engine negotiates is in the list.
    """

    name: str
    min_version: TLSVersion
    tls12_suites: tuple[str, ...]
    tls13_suites: tuple[str, ...]
    #: Key exchange groups (RFC 8446 4.2.7 / RFC 8422 names), in preference order.
    groups: tuple[str, ...]


_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_GROUPS = ("x25519", "secp256r1", "secp384r1")

#: Mozilla's server-side TLS profiles (https://wiki.mozilla.org/Security/Server_Side_TLS, 5.7).
#: "intermediate" leaves out Mozilla's three DHE-RSA suites: no finite-field group is ever
#: configured for them, every client that offers TLS 1.2 AEAD suites also offers ECDHE, and
#: they would only ever apply to RSA certificates.
PROFILES: Mapping[str, CipherProfile] = MappingProxyType(
    {
        "intermediate": CipherProfile(
            name="intermediate",
            min_version="1.2",
            tls12_suites=(
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            ),
            tls13_suites=_TLS13_SUITES,
            groups=_GROUPS,
        ),
        "modern": CipherProfile(
            name="modern",
            min_version="1.3",
            tls12_suites=(),
            tls13_suites=_TLS13_SUITES,
            groups=_GROUPS,
        ),
    }
)


def describe(source: Source, what: str) -> str:
    """``the certificate file /etc/x.pem``, or ``the certificate given in memory``."""
    if isinstance(source, bytes):
        return f"the {what} given in memory"
    return f"the {what} file {os.fspath(source)}"


def read_source(source: Source, what: str) -> bytes:
    """The bytes of ``source``: read from its file now, or as given."""
    if isinstance(source, bytes):
        return source
    try:
        with open(os.fspath(source), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {describe(source, what)}: {exc.strerror}") from None


@dataclass(frozen=True)
class Certificate:
    """A certificate chain (leaf first) and its private key, as PEM files or PEM bytes.

    ``ocsp_response`` is a DER OCSP response for the leaf, stapled to handshakes by engines that
    can (it is read again whenever the listener's state is rebuilt, so a renewed file is
    picked up by a reload).
    """

    chain: Source
    key: Source
    ocsp_response: Source | None = None

    def read(self) -> tuple[bytes, bytes]:
        """The chain's and the key's PEM bytes."""
        return read_source(self.chain, "certificate"), read_source(self.key, "private key")

    def read_ocsp(self) -> bytes | None:
        if self.ocsp_response is None:
            return None
        return read_source(self.ocsp_response, "OCSP response")

    def describe(self) -> str:
        return describe(self.chain, "certificate")


def _check_common(
    alpn: tuple[str, ...],
    min_version: TLSVersion | None,
    max_version: TLSVersion,
    profile: str,
) -> None:
    if profile not in PROFILES:
        known = ", ".join(PROFILES)
        raise TLSConfigError(f"unknown cipher profile {profile!r} (known: {known})")
    for version in (min_version, max_version):
        if version is not None and version not in _VERSIONS:
            raise TLSConfigError(f"unknown TLS version {version!r} (known: 1.2, 1.3)")
    floor = PROFILES[profile].min_version
    if min_version is not None and min_version < floor:
        raise TLSConfigError(
            f"the {profile} profile allows TLS {floor} and later, not TLS {min_version}"
        )
    if (min_version or floor) > max_version:
        raise TLSConfigError(
            f"the minimum TLS version {min_version or floor} is above the maximum {max_version}"
        )
    for protocol in alpn:
        raw = protocol.encode("ascii", "replace")
        if not 1 <= len(raw) <= 255 or "?" in raw.decode("ascii"):
            raise TLSConfigError(f"ALPN protocol {protocol!r}: 1 to 255 ASCII characters")


def _freeze(options: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({name: MappingProxyType(dict(o)) for name, o in options.items()})


@dataclass(frozen=True, kw_only=True)
class _Common:
    alpn: tuple[str, ...] = ("http/1.1",)
    #: None: the profile's own minimum.
    min_version: TLSVersion | None = None
    max_version: TLSVersion = "1.3"
    profile: str = "intermediate"
    #: Per engine name, settings only that engine reads (``{"gnutls": {"priority": ...}}``).
    engine_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def cipher_profile(self) -> CipherProfile:
        return PROFILES[self.profile]

    @property
    def versions(self) -> tuple[TLSVersion, ...]:
        """The versions allowed, lowest first."""
        low = self.min_version or self.cipher_profile.min_version
        return tuple(v for v in _VERSIONS if low <= v <= self.max_version)

    def options_for(self, engine: str, known: tuple[str, ...]) -> Mapping[str, str]:
        """``engine_options[engine]``, refusing keys that engine does not know."""
        options = self.engine_options.get(engine, {})
        unknown = sorted(set(options) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise TLSConfigError(
                f"unknown {engine} engine option(s) {', '.join(unknown)} (known: {allowed})"
            )
        return options

    def _check(self) -> None:
        object.__setattr__(self, "alpn", tuple(self.alpn))
        object.__setattr__(self, "engine_options", _freeze(self.engine_options))
        _check_common(self.alpn, self.min_version, self.max_version, self.profile)


@dataclass(frozen=True)
class ServerTLS(_Common):
    """How a listener speaks TLS.

    ``sni`` maps server names (``"*.example.com"`` covers one label) to their own certificate;
    ``certificate`` answers every other name, or ``strict_sni`` refuses them with the
    ``unrecognized_name`` alert. ``client_cert`` asks for client certificates verified against
    ``client_ca``. ``ticket_key`` names the session-ticket key file shared by every process
    that serves the same clients (see ``spcore.tls.tickets``); engines that cannot take ticket
    keys refuse it.
    """

    certificate: Certificate
    _: KW_ONLY
    sni: Mapping[str, Certificate] = field(default_factory=dict)
    strict_sni: bool = False
    client_ca: Source | None = None
    client_cert: ClientCertMode = "none"
    ticket_key: Source | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.certificate, Certificate):
            raise TLSConfigError("a TLS server needs a Certificate(chain, key)")
        self._check()
        names: dict[str, Certificate] = {}
        for name, certificate in self.sni.items():
            normal = name.lower().rstrip(".")
            if not _NAME.match(normal):
                raise TLSConfigError(f"SNI name {name!r} is not a host name")
            names[normal] = certificate
        object.__setattr__(self, "sni", MappingProxyType(names))
        if self.client_cert not in _CLIENT_CERT_MODES:
            raise TLSConfigError(
                f"client_cert must be none, optional or required, not {self.client_cert!r}"
            )
        if self.client_cert != "none" and self.client_ca is None:
            raise TLSConfigError(
                f"client_cert={self.client_cert!r} needs client_ca (the CA that signs them)"
            )
        if self.client_cert == "none" and self.client_ca is not None:
            raise TLSConfigError("client_ca is unused with client_cert='none'")

    def certificates(self) -> list[Certificate]:
        """The default certificate, then each SNI one."""
        return [self.certificate, *self.sni.values()]


@dataclass(frozen=True, kw_only=True)
class ClientTLS(_Common):
    """How a client (the tunnel, a test) speaks TLS.

    ``trust`` is the CA bundle to verify servers with (None: the system's store);
    ``verify=False`` accepts any certificate (tests only). ``server_name`` is sent as SNI and
    checked against the certificate, unless a connection names another; an IP address is
    checked but not sent (RFC 6066 3). ``certificate`` is presented when a server asks.
    """

    trust: Source | None = None
    verify: bool = True
    server_name: str | None = None
    certificate: Certificate | None = None

    def __post_init__(self) -> None:
        self._check()
