"""Shared fixtures: the conformance suite's throwaway PKI, built once per test session, TLS
configurations (neutral, for the server and the in-memory client) and stdlib contexts (for
socket clients) made from it, a private development-certificate cache for the servers the
tests start, and the HTTP codec parameter."""

from __future__ import annotations

import datetime
import os
import pathlib
import ssl

import pytest
from servekit import SLOW_APP

from spcore.certs import dev_certificate
from spcore.conformance.clients import stdlib_client_context
from spcore.conformance.harness import PKI, make_pki
from spcore.http.codecs import CODECS, available_codecs
from spcore.tls import ClientTLS, ServerTLS

__all__ = ["PKI"]


@pytest.fixture(params=CODECS)
def http_codec(request: pytest.FixtureRequest) -> str:
    """Each HTTP codec: the HTTP tests run once per codec (one that cannot run is skipped)."""
    name: str = request.param
    if name not in available_codecs():
        pytest.skip(f"the {name} codec is not installed here")
    return name


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


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A private certificate cache, filled once so each server starts quickly."""
    directory = tmp_path_factory.mktemp("spcore-cache")
    dev_certificate(datetime.datetime.now(datetime.timezone.utc), directory)
    return directory


@pytest.fixture(scope="module")
def env(cache_dir: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "SPCORE_CACHE_DIR": str(cache_dir)}


@pytest.fixture
def slow_app(tmp_path: pathlib.Path) -> pathlib.Path:
    """A directory with ``slowapp:app`` (servekit.SLOW_APP) to serve from."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    return tmp_path
