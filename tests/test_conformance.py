"""The conformance suite, once per registered driver, and the plugin's own behaviour.

The repository's pytest run does not collect the scenarios from the source tree (they are
not under ``testpaths``); instead each driver's run here goes through
``spcore.conformance.run()`` -- that is ``pytest --pyargs spcore.conformance.scenarios`` --
in a subprocess. So the suite runs exactly once per driver, against the package as installed
(tox installs a built package, where the source tree's files would be a second copy), and
the path a third party uses is the one tested. A driver that cannot run here is skipped with
its probe's reason.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from suiterun import run_suite, table_row, tail

from spcore.conformance.plugin import REFERENCE_DRIVER, DriverChoice, EngineChoice, scenario_cases
from spcore.drivers import DRIVERS
from spcore.http.codecs import available_codecs
from spcore.tls.engines import ENGINES


def _run_suite(
    drivers: list[str], pytest_args: list[str], cwd: pathlib.Path, timeout: float = 240.0
) -> subprocess.CompletedProcess[str]:
    return run_suite("run", drivers, pytest_args, cwd, timeout)


@pytest.mark.parametrize("name", list(DRIVERS))
def test_driver_conforms(name: str, tmp_path: pathlib.Path) -> None:
    available, reason = DRIVERS[name].probe()
    if not available:
        pytest.skip(f"{name}: {reason}")
    # INFO logs are captured, so a failure report shows why the server closed or refused.
    result = _run_suite([name], ["-q", "--log-level=INFO"], tmp_path)
    assert result.returncode == 0, tail(result, 400)
    passed, failed = (int(n) for n in table_row(result.stdout, name)[:2])
    assert failed == 0 and passed > 0, tail(result)


def test_a_driver_that_cannot_run_is_reported_skipped(tmp_path: pathlib.Path) -> None:
    unavailable = [(name, spec.probe()[1]) for name, spec in DRIVERS.items() if not spec.probe()[0]]
    if not unavailable:
        pytest.skip("every registered driver runs here")
    name, reason = unavailable[0]
    result = _run_suite([name], ["-q", "-rs", "-k", "test_one_request"], tmp_path)
    assert result.returncode == 0, tail(result)
    # Plain with each codec; TLS 1.2 and 1.3 with the first engine and each codec, and with
    # each other engine and the first codec (plugin.scenario_cases).
    runs = len(available_codecs()) + 2 * (len(available_codecs()) + len(ENGINES) - 1)
    assert table_row(result.stdout, name)[:3] == ["0", "0", str(runs)], tail(result)
    assert f"SKIPPED [{runs}] " in result.stdout and reason in result.stdout, tail(result)


# -- how the parameters combine ---------------------------------------------------------------

ENGINE_A, ENGINE_B = (EngineChoice(name, None, "", name) for name in ("engine-a", "engine-b"))
OTHER = DriverChoice("other", object(), "")
REFERENCE = DriverChoice(REFERENCE_DRIVER, object(), "")


def _ids(*drivers: DriverChoice, full: bool = False) -> set[str]:
    engines, codecs = [ENGINE_A, ENGINE_B], ["codec-a", "codec-b"]
    cases = scenario_cases(["plain", "tls1.3"], engines, list(drivers), codecs, full=full)
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids))
    return set(ids)


def test_a_second_engine_meets_a_second_codec_on_the_reference_driver_only() -> None:
    ids = _ids(OTHER, REFERENCE)
    for driver in ("other", REFERENCE_DRIVER):
        for codec in ("codec-a", "codec-b"):
            assert f"plain-{driver}-{codec}" in ids
            assert f"tls1.3-engine-a-{driver}-{codec}" in ids
        assert f"tls1.3-engine-b-{driver}-codec-a" in ids
    assert {i for i in ids if i.startswith("tls1.3-engine-b") and i.endswith("codec-b")} == {
        f"tls1.3-engine-b-{REFERENCE_DRIVER}-codec-b"
    }
    assert len(ids) == 2 * (2 + 3) + 1
    assert len(_ids(OTHER)) == 2 + 3  # alone too (as each driver's run in this file is)


def test_the_full_matrix_runs_every_combination() -> None:
    every = 2 + 2 * 2  # plain with each codec, TLS with each engine and codec
    assert len(_ids(OTHER, REFERENCE, full=True)) == 2 * every
    assert len(_ids(OTHER, full=True)) == every
    no_codec = scenario_cases(["plain", "tls1.2"], [ENGINE_A, ENGINE_B], [OTHER], [None])
    assert [case.id for case in no_codec] == [
        "plain-other",
        "tls1.2-engine-a-other",
        "tls1.2-engine-b-other",
    ]


def test_the_suite_collects_the_combinations_the_docs_describe(tmp_path: pathlib.Path) -> None:
    """The scenarios' parametrization goes through ``scenario_cases``: collected for real,
    one TLS scenario has the cases it computes for the registered parts, in its order."""
    result = _run_suite([], ["--collect-only", "-q", "-k", "test_one_request"], tmp_path)
    assert result.returncode == 0, tail(result)
    collected = [
        line.partition("[")[2].rstrip("]")
        for line in result.stdout.splitlines()
        if "test_http.py::test_one_request[" in line
    ]
    drivers = [DriverChoice(n, object() if s.probe()[0] else None, "") for n, s in DRIVERS.items()]
    engines = [EngineChoice(name, None, "", name) for name in ENGINES]
    cases = scenario_cases(["plain", "tls1.2", "tls1.3"], engines, drivers, available_codecs())
    assert collected == [case.id for case in cases]


def test_an_unknown_driver_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    result = _run_suite(["no-such-driver"], ["-q"], tmp_path, timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, tail(result)
    assert "unknown driver 'no-such-driver'" in result.stderr


def test_a_bad_factory_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    result = _run_suite(["no_such_module:make"], ["-q"], tmp_path, timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, tail(result)
    assert "--spcore-driver-factory 'no_such_module:make'" in result.stderr


def test_the_plugin_is_inert_in_other_projects(tmp_path: pathlib.Path) -> None:
    """Another project's ``driver`` fixture is neither parametrized nor shadowed, and no
    conformance table appears (the plugin loads wherever spcore is installed)."""
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef driver():\n    return 'theirs'\n"
    )
    (tmp_path / "test_theirs.py").write_text(
        "def test_theirs(driver):\n    assert driver == 'theirs'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, tail(result)
    assert "1 passed" in result.stdout
    assert "spcore conformance" not in result.stdout
