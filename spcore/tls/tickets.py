"""Session-ticket key files: one secret that every server process serving the same clients
reads, so that a ticket issued by one process resumes on any other (behind a balancer).

The file is text: one base64 line of at least 32 random bytes (``#`` comments and blank lines
are ignored). ``spcore ticket-key FILE`` writes a fresh one atomically. Engines never use the
secret directly: ``derive()`` turns it into key material of the size and purpose an engine
needs (HKDF-SHA256, RFC 5869), so one file serves any engine. The GnuTLS engine hands that
to GnuTLS, which itself derives the key it encrypts tickets with from it and the time, and
moves to a new one every three ticket lifetimes (18 hours by default): every process rotates
in step without talking to the others (RFC 5077 5.5 asks for rotation). Replacing the file
(a servers' watcher reloads it) starts over with a new secret: tickets made under the old
one are then met with a full handshake.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import Source, TLSConfigError, describe, read_source

__all__ = ["MIN_SECRET", "derive", "new_ticket_key_file", "parse_ticket_key", "read_ticket_key"]

MIN_SECRET = 32
_HEADER = b"# spcore session-ticket key: share this file with every server process\n"


def new_ticket_key_file() -> bytes:
    """The content of a fresh key file."""
    return _HEADER + base64.b64encode(secrets.token_bytes(48)) + b"\n"


def parse_ticket_key(data: bytes) -> bytes:
    """The secret in a key file's content; ``ValueError`` says what is wrong."""
    lines = [line.strip() for line in data.splitlines()]
    keys = [line for line in lines if line and not line.startswith(b"#")]
    if len(keys) != 1:
        raise ValueError(f"it holds {len(keys)} keys; it must hold one base64 line")
    try:
        secret = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("its key is not base64") from None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"its key has {len(secret)} bytes; at least {MIN_SECRET} are needed")
    return secret


def read_ticket_key(source: Source) -> bytes:
    try:
        return parse_ticket_key(read_source(source, "ticket key"))
    except ValueError as exc:
        raise TLSConfigError(f"{describe(source, 'ticket key')} is unusable: {exc}") from None


def derive(secret: bytes, purpose: str, size: int) -> bytes:
    """``size`` bytes of key material for ``purpose`` (one per engine and use)."""
    kdf = HKDF(algorithm=hashes.SHA256(), length=size, salt=None, info=purpose.encode())
    return kdf.derive(secret)
