"""Shared fixtures: the conformance suite's throwaway PKI, built once per test session, and
TLS configurations (neutral, for the server and the in-memory client) and stdlib contexts
(for socket clients) made from it."""

from __future__ import annotations

import ssl

import pytest

from spcore.conformance.clients import stdlib_client_context
from spcore.conformance.harness import PKI, make_pki
from spcore.tls import ClientTLS, ServerTLS

__all__ = ["PKI"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_tls(pki: PKI) -> ServerTLS:
    """The server side for ``localhost``, ``127.0.0.1`` and ``::1``."""
    return pki.server_tls()


@pytest.fixture(scope="module")
def client_tls(pki: PKI) -> ClientTLS:
    """An in-memory client (``MemLink``) that trusts the test CA (and nothing else)."""
    return ClientTLS(trust=pki.ca_file)


@pytest.fixture(scope="module")
def stdlib_client(pki: PKI) -> ssl.SSLContext:
    """A standard-library client context for socket tests, trusting the test CA."""
    return stdlib_client_context(pki.ca_file)
