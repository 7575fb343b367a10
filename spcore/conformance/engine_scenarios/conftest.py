"""Fixtures of the engine kit: ``engine`` (one per engine under test), ``pair`` (a server
engine and a client engine, at least one under test), ``pki`` and ``bytewise``.

A scenario taking ``pair`` runs for every pairing of an engine under test with itself and
with every other engine available here, in both roles: OpenSSL client to GnuTLS server and
the reverse, each against itself. Its id reads ``server/client``.
"""

from __future__ import annotations

import dataclasses

import pytest

from spcore.conformance import harness
from spcore.conformance.enginekit import Endpoints
from spcore.conformance.harness import PKI
from spcore.conformance.plugin import EngineChoice, chosen_engines
from spcore.tls.engine import EngineFactory
from spcore.tls.engines import ENGINES


@dataclasses.dataclass(frozen=True)
class Pair:
    server: EngineChoice
    client: EngineChoice

    @property
    def id(self) -> str:
        return f"{self.server.name}/{self.client.name}"


def _peers(config: pytest.Config) -> list[EngineChoice]:
    """The engines under test, then every other registered engine that runs here."""
    chosen = chosen_engines(config)
    names = {choice.name for choice in chosen}
    peers = list(chosen)
    for name, spec in ENGINES.items():
        if name not in names and spec.probe()[0]:
            peers.append(EngineChoice(name, spec.load(), "a peer", name))
    return peers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    chosen = chosen_engines(metafunc.config)
    if "pair" in metafunc.fixturenames:
        pairs: dict[str, Pair] = {}
        for engine in chosen:
            for peer in _peers(metafunc.config):
                for pair in (Pair(engine, peer), Pair(peer, engine)):
                    pairs.setdefault(pair.id, pair)
        metafunc.parametrize("pair", list(pairs.values()), ids=list(pairs), indirect=True)
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", chosen, ids=[c.name for c in chosen], indirect=True)


def _available(choice: EngineChoice) -> EngineChoice:
    if not choice.available:
        pytest.skip(f"TLS engine {choice.name}: {choice.reason}")
    return choice


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> EngineFactory:
    """The factory of the engine under test; one that cannot run here skips with its reason."""
    factory = _available(request.param).factory
    assert factory is not None
    return factory


@pytest.fixture
def engine_spec(request: pytest.FixtureRequest, engine: EngineFactory) -> str:
    """How a server process names the engine under test (``--engine`` of the kit server)."""
    choice: EngineChoice = request.node.callspec.params["engine"]
    return choice.spec


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Pair:
    chosen: Pair = request.param
    _available(chosen.server)
    _available(chosen.client)
    return chosen


@pytest.fixture
def ends(pair: Pair, pki: PKI) -> Endpoints:
    """Server and client engines of the pairing, built from neutral configurations."""
    assert pair.server.factory is not None and pair.client.factory is not None
    return Endpoints(pair.server.factory, pair.client.factory, pki)


@pytest.fixture(params=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    """Deliver ciphertext in whole buffers, or one byte per ``receive_data`` call."""
    return bool(request.param == "bytewise")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return harness.make_pki(tmp_path_factory.mktemp("spcore-engine-pki"))
