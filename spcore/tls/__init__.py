"""TLS: the neutral configuration, the engine interface, the registered engines (OpenSSL
through ``ssl``, GnuTLS through ctypes) and the record reader.

Nothing here imports an engine's library: ``spcore.tls.openssl`` is imported only when the
OpenSSL engine is used, ``spcore.tls.gnutls`` only when GnuTLS is.
"""

from .alerts import Alert
from .config import PROFILES, Certificate, ClientTLS, ServerTLS, TLSConfigError
from .context import ClientContext, ServerContext
from .engine import (
    ApplicationData,
    ClientState,
    CloseNotify,
    EngineFactory,
    EngineUnsupported,
    Feature,
    HandshakeComplete,
    RaggedEOF,
    ServerState,
    TLSClosedError,
    TLSEngine,
    TLSError,
    TLSEvent,
    TLSInfo,
    VerifyFailure,
)
from .engines import ENGINES, UnknownEngine, resolve

__all__ = [
    "ENGINES",
    "PROFILES",
    "Alert",
    "ApplicationData",
    "Certificate",
    "ClientContext",
    "ClientState",
    "ClientTLS",
    "CloseNotify",
    "EngineFactory",
    "EngineUnsupported",
    "Feature",
    "HandshakeComplete",
    "RaggedEOF",
    "ServerContext",
    "ServerState",
    "ServerTLS",
    "TLSClosedError",
    "TLSConfigError",
    "TLSEngine",
    "TLSError",
    "TLSEvent",
    "TLSInfo",
    "UnknownEngine",
    "VerifyFailure",
    "resolve",
]
