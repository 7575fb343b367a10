"""Fixtures of the scenarios: ``driver`` (one per chosen driver), ``http_codec`` (one per
chosen HTTP codec, for every scenario but the stream ones; the first only for those of hosted
applications), ``serve`` and ``pki``.

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
    GATEWAY_MARK,
    STREAM_MARK,
    DriverChoice,
    chosen_codecs,
    chosen_drivers,
    raise_fd_limit,
)


def pytest_configure(config: pytest.Config) -> None:
    raise_fd_limit()  # only when the scenarios are collected: this conftest loads with them


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "driver" not in metafunc.fixturenames:
        return
    choices = chosen_drivers(metafunc.config)
    metafunc.parametrize("driver", choices, ids=[c.name for c in choices], indirect=True)
    definition = metafunc.definition
    if "serve" in metafunc.fixturenames and not definition.get_closest_marker(STREAM_MARK):
        codecs = chosen_codecs(metafunc.config)
        if definition.get_closest_marker(GATEWAY_MARK):
            codecs = codecs[:1]
        metafunc.parametrize("http_codec", codecs, ids=codecs, indirect=True)


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return harness.make_pki(tmp_path_factory.mktemp("spcore-pki"))


@pytest.fixture
def serve(driver: DriverChoice, pki: PKI, http_codec: str) -> Serve:
    """``with serve(app, transport=..., limits=...) as served:`` runs the driver under test.

    See ``spcore.conformance.harness.Serve`` for the arguments and the checks made on exit.
    """
    assert driver.factory is not None
    return Serve(driver.factory, pki, http=http_codec)
