"""Shared fixtures: a throwaway PKI built once per test session, TLS contexts from it, a
private development-certificate cache for the servers the tests start, and the HTTP codec
parameter."""

from __future__ import annotations

import datetime
import os
import pathlib
import ssl
from dataclasses import dataclass

import pytest
from servekit import SLOW_APP

from spcore.certs import CertificateAuthority, CertPair, dev_certificate
from spcore.http.codecs import CODECS, available_codecs
from spcore.tls import client_context, server_context


@pytest.fixture(params=CODECS)
def http_codec(request: pytest.FixtureRequest) -> str:
    """Each HTTP codec: the HTTP tests run once per codec (one that cannot run is skipped)."""
    name: str = request.param
    if name not in available_codecs():
        pytest.skip(f"the {name} codec is not installed here")
    return name


@dataclass(frozen=True)
class PKI:
    """A CA and the certificates the TLS tests need, all issued at ``now``."""

    now: datetime.datetime
    ca: CertificateAuthority
    ca_file: pathlib.Path
    server: CertPair  # localhost, 127.0.0.1, ::1
    other: CertPair  # other.test
    wild: CertPair  # *.wild.test
    client: CertPair  # clientAuth, issued by the CA
    expired: CertPair  # localhost, expired a day ago
    self_signed: CertPair  # the development certificate: localhost, issued by itself
    rogue_ca_file: pathlib.Path  # a second, untrusted CA
    rogue_client: CertPair  # clientAuth, issued by the rogue CA


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    # Tests may read the clock; only spcore/ may not.
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(now)
    rogue = CertificateAuthority.create(now, name="rogue CA")
    rogue_dir = directory / "rogue"
    rogue_dir.mkdir()
    return PKI(
        now=now,
        ca=ca,
        ca_file=ca.write_ca(directory),
        server=ca.issue(directory, "server", ["localhost", "127.0.0.1", "::1"], now),
        other=ca.issue(directory, "other", ["other.test"], now),
        wild=ca.issue(directory, "wild", ["*.wild.test"], now),
        client=ca.issue(directory, "client", ["client.test"], now, client=True),
        expired=ca.issue(
            directory,
            "expired",
            ["localhost", "127.0.0.1", "::1"],
            now,
            not_before=now - 30 * day,
            not_after=now - day,
        ),
        self_signed=dev_certificate(now, directory / "dev"),
        rogue_ca_file=rogue.write_ca(rogue_dir),
        rogue_client=rogue.issue(
            rogue_dir, "rogue-client", ["rogue-client.test"], now, client=True
        ),
    )


# Module-scoped, not session-scoped: a test module may change its contexts (ALPN, versions...)
# without reaching into another module's.
@pytest.fixture(scope="module")
def server_tls(pki: PKI) -> ssl.SSLContext:
    """The server side for ``localhost``, ``127.0.0.1`` and ``::1``."""
    return server_context(pki.server.certfile, pki.server.keyfile)


@pytest.fixture(scope="module")
def client_tls(pki: PKI) -> ssl.SSLContext:
    """A client that trusts the test CA (and nothing else)."""
    return client_context(cafile=pki.ca_file)


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
