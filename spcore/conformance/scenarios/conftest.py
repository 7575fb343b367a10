"""Fixtures of the scenarios: ``driver`` (one per chosen driver), ``tls_engine``,
``http_codec`` (one per chosen HTTP codec, for every scenario but the stream ones; the first
only for those of hosted applications, which sit above the codec), ``serve`` and ``pki``.

A scenario marked ``transports(...)`` runs once per transport, each TLS transport once per
chosen TLS engine, and every scenario once per driver and (when it serves HTTP) codec: the
engines and codecs are parameters of the same scenarios, never a copy. A second engine meets
a second codec on one driver only (``plugin.scenario_cases``). The fixtures live here rather
than in the auto-loaded plugin so that fixture names as common as ``driver`` never leak into
other projects' test runs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Generator
from itertools import compress

import pytest

from spcore.conformance import harness
from spcore.conformance.harness import PKI, Serve
from spcore.conformance.plugin import (
    GATEWAY_MARK,
    STREAM_MARK,
    DriverChoice,
    EngineChoice,
    chosen_codecs,
    chosen_drivers,
    chosen_engines,
    full_matrix,
    raise_fd_limit,
    scenario_cases,
)


def pytest_configure(config: pytest.Config) -> None:
    raise_fd_limit()  # only when the scenarios are collected: this conftest loads with them


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize each scenario by its transports (``transports`` marker), TLS engines,
    drivers and HTTP codecs, combined as ``plugin.scenario_cases`` says."""
    config = metafunc.config
    marker = metafunc.definition.get_closest_marker("transports")
    takes_driver = "driver" in metafunc.fixturenames
    if marker is None and not takes_driver:
        return
    definition = metafunc.definition
    stream = definition.get_closest_marker(STREAM_MARK) is not None
    takes_codec = takes_driver and "serve" in metafunc.fixturenames and not stream
    codecs = chosen_codecs(config)
    if definition.get_closest_marker(GATEWAY_MARK):
        codecs = codecs[:1]
    cases = scenario_cases(
        marker.args if marker is not None else None,
        chosen_engines(config),
        chosen_drivers(config) if takes_driver else [None],
        codecs if takes_codec else [None],
        full=full_matrix(config),
    )
    taken = (marker is not None, marker is not None, takes_driver, takes_codec)
    names = list(compress(("transport", "tls_engine", "driver", "http_codec"), taken))
    values = [tuple(compress((c.transport, c.engine, c.driver, c.codec), taken)) for c in cases]
    indirect = [name for name in names if name != "transport"]
    metafunc.parametrize(names, values, ids=[c.id for c in cases], indirect=indirect)


@pytest.fixture
def http_codec(request: pytest.FixtureRequest) -> str:
    """The HTTP codec under test ("auto" for the scenarios that serve no HTTP)."""
    return getattr(request, "param", "auto")


@pytest.fixture
def driver(request: pytest.FixtureRequest) -> DriverChoice:
    """The driver under test; one that cannot run here skips with its probe's reason."""
    choice: DriverChoice = request.param
    if not choice.available:
        pytest.skip(f"{choice.name}: {choice.reason}")
    return choice


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report an unavailable driver's skips at one place, so they fold into one summary line."""
    report: pytest.TestReport = yield
    callspec = getattr(item, "callspec", None)
    choice = callspec.params.get("driver") if callspec is not None else None
    if report.skipped and isinstance(choice, DriverChoice) and not choice.available:
        report.longrepr = (  # type: ignore[assignment]  # no line: pytest folds these
            str(pathlib.Path(__file__).parent),
            None,
            f"{choice.name}: {choice.reason}",
        )
    return report


@pytest.fixture
def tls_engine(request: pytest.FixtureRequest) -> EngineChoice | None:
    """The TLS engine of a scenario's TLS transport (None for plain ones and scenarios that
    serve no TLS); one that cannot run here skips with its reason."""
    choice: EngineChoice | None = getattr(request, "param", None)
    if choice is not None and not choice.available:
        pytest.skip(f"TLS engine {choice.name}: {choice.reason}")
    return choice


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return harness.make_pki(tmp_path_factory.mktemp("spcore-pki"))


@pytest.fixture
def serve(
    driver: DriverChoice, pki: PKI, http_codec: str, tls_engine: EngineChoice | None
) -> Serve:
    """``with serve(app, transport=..., limits=...) as served:`` runs the driver under test,
    its HTTP listeners on the scenario's codec and its TLS listeners on its TLS engine.

    See ``spcore.conformance.harness.Serve`` for the arguments and the checks made on exit.
    """
    assert driver.factory is not None
    engine = tls_engine.factory if tls_engine is not None else None
    return Serve(driver.factory, pki, http=http_codec, engine=engine or "openssl")
