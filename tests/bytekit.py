"""Byte helpers for the reader tests: real ClientHellos from the stdlib's TLS client, and the
fuzzers' cutting and mutating of byte strings (with the Hypothesis strategies that drive them).
"""

from __future__ import annotations

import itertools
import ssl

from hypothesis import settings
from hypothesis import strategies as st

#: Reproducible fuzzing: the same examples on every run, and no example database.
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)

Mutation = tuple[str, int, bytes]


def tls_client(
    *,
    server_hostname: str | None = "example.com",
    alpn: list[str] | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A stdlib TLS client over memory BIOs (incoming, outgoing) that has just sent its
    ClientHello."""
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        return client, incoming, outgoing
    raise AssertionError("a client handshake cannot finish without a server")


# Strategies are built once, at import: drawing positions modulo the input's length keeps
# Hypothesis from validating a fresh strategy on every example.


def cut_lists(most: int) -> st.SearchStrategy[list[int]]:
    """Up to eight cut positions for ``split``, each taken modulo the input's length."""
    return st.lists(st.integers(0, most), max_size=8)


def mutation_lists(most: int, blob_size: int, count: int) -> st.SearchStrategy[list[Mutation]]:
    """Up to ``count`` mutations for ``mutate``; positions up to ``most``, blobs of one to
    ``blob_size`` bytes."""
    return st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(0, most),
            st.binary(min_size=1, max_size=blob_size),
        ),
        max_size=count,
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at each position (modulo its length plus one): the chunks join to it."""
    bounds = sorted(cut % (len(data) + 1) for cut in cuts)
    return [data[a:b] for a, b in itertools.pairwise([0, *bounds, len(data)])]


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """``data`` after each mutation: flip a bit, insert or delete bytes, or truncate."""
    out = bytearray(data)
    for op, where, blob in mutations:
        at = where % (len(out) + 1)
        if op == "flip" and at < len(out):
            out[at] ^= 1 << (blob[0] % 8)
        elif op == "insert":
            out[at:at] = blob
        elif op == "delete":
            del out[at : at + len(blob)]
        elif op == "truncate":
            del out[at:]
    return bytes(out)
