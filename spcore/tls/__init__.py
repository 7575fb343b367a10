"""TLS: the engine interface, the OpenSSL engine over memory BIOs, and the record reader."""

from .context import client_context, server_context
from .engine import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    RaggedEOF,
    TLSClosedError,
    TLSEngine,
    TLSError,
    TLSEvent,
    TLSInfo,
)
from .openssl import OpenSSLEngine

__all__ = [
    "ApplicationData",
    "CloseNotify",
    "HandshakeComplete",
    "OpenSSLEngine",
    "RaggedEOF",
    "TLSClosedError",
    "TLSEngine",
    "TLSError",
    "TLSEvent",
    "TLSInfo",
    "client_context",
    "server_context",
]
