"""The GnuTLS engine: libgnutls through ctypes, no compiled code.

Beyond the neutral settings it staples OCSP responses (``Certificate.ocsp_response``) and
takes session-ticket keys from a file shared by every process (``ServerTLS.ticket_key``), two
things Python's ``ssl`` cannot do; and it can send a TLS 1.3 KeyUpdate.
"""

from __future__ import annotations

from ..config import ClientTLS, ServerTLS
from ..engine import Feature
from . import _lib
from .session import GnuTLSClientState, GnuTLSServerState

__all__ = ["GNUTLS", "GnuTLSFactory", "probe"]


def probe() -> tuple[bool, str]:
    """(runs here, why or why not)."""
    try:
        lib = _lib.load()
    except _lib.GnuTLSUnavailable as exc:
        return False, str(exc)
    return True, f"GnuTLS {lib.version} through ctypes"


class GnuTLSFactory:
    """The GnuTLS engine factory; loads libgnutls on first use."""

    name = "gnutls"
    features = frozenset({Feature.OCSP_STAPLING, Feature.TICKET_KEYS, Feature.KEY_UPDATE})

    def library_version(self) -> str:
        try:
            return f"GnuTLS {_lib.load().version}"
        except _lib.GnuTLSUnavailable:
            return "GnuTLS (not loadable)"

    def server(self, config: ServerTLS) -> GnuTLSServerState:
        return GnuTLSServerState(_lib.load(), config)

    def client(self, config: ClientTLS) -> GnuTLSClientState:
        return GnuTLSClientState(_lib.load(), config)


GNUTLS = GnuTLSFactory()
