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

from spcore.drivers import DRIVERS
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
    runs = 1 + 2 * len(ENGINES)  # plain, then TLS 1.2 and 1.3 once per TLS engine
    assert table_row(result.stdout, name)[:3] == ["0", "0", str(runs)], tail(result)
    assert f"SKIPPED [{runs}] " in result.stdout and reason in result.stdout, tail(result)


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
