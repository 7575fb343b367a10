"""Fixtures of the scenarios: ``driver`` (one per chosen driver), ``tls_engine``, ``serve``
and ``pki``.

A scenario marked ``transports(...)`` runs once per transport, and each TLS transport once
per chosen TLS engine: the engines are a parameter of the same scenarios, never a copy.
They live here rather than in the auto-loaded plugin so that fixture names as common as
``driver`` never leak into other projects' test runs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Generator

import pytest

from spcore.conformance import harness
from spcore.conformance.harness import PKI, Serve
from spcore.conformance.plugin import (
    DriverChoice,
    EngineChoice,
    chosen_drivers,
    chosen_engines,
    raise_fd_limit,
)


def pytest_configure(config: pytest.Config) -> None:
    raise_fd_limit()  # only when the scenarios are collected: this conftest loads with them


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is not None:
        engines = chosen_engines(metafunc.config)
        cases: list[tuple[str, EngineChoice | None]] = []
        ids = []
        for transport in marker.args:
            if transport == "plain":
                cases.append((transport, None))
                ids.append(transport)
                continue
            for engine in engines:
                cases.append((transport, engine))
                ids.append(f"{transport}-{engine.name}")
        metafunc.parametrize(("transport", "tls_engine"), cases, ids=ids, indirect=["tls_engine"])
    if "driver" not in metafunc.fixturenames:
        return
    choices = chosen_drivers(metafunc.config)
    metafunc.parametrize("driver", choices, ids=[c.name for c in choices], indirect=True)


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
def serve(driver: DriverChoice, pki: PKI, tls_engine: EngineChoice | None) -> Serve:
    """``with serve(app, transport=..., limits=...) as served:`` runs the driver under test,
    its TLS listeners on the scenario's TLS engine.

    See ``spcore.conformance.harness.Serve`` for the arguments and the checks made on exit.
    """
    assert driver.factory is not None
    engine = tls_engine.factory if tls_engine is not None else None
    return Serve(driver.factory, pki, engine or "openssl")
