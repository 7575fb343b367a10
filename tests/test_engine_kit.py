"""The engine certification kit, once per registered engine, and run against a third party's
engine factory the way its authors would.

As for the driver suite (tests/test_conformance.py), each run goes through
``spcore.conformance.run_engine_kit()`` -- ``pytest --pyargs spcore.conformance.engine_scenarios``
-- in a subprocess, against the package as installed. An engine that cannot run here is
skipped with its probe's reason.
"""

from __future__ import annotations

import pathlib

import pytest
from suiterun import run_suite, table_row, tail

from spcore.tls.engines import ENGINES


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_is_certified(name: str, tmp_path: pathlib.Path) -> None:
    available, reason = ENGINES[name].probe()
    if not available:
        pytest.skip(f"{name}: {reason}")
    result = run_suite("run_engine_kit", [name], ["-q"], tmp_path)
    assert result.returncode == 0, tail(result, 400)
    passed, failed, skipped = (int(n) for n in table_row(result.stdout, name)[:3])
    assert (failed, skipped) == (0, 0) and passed > 150, tail(result)


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_the_documented_third_party_engine_is_certified(tmp_path: pathlib.Path) -> None:
    """docs/examples/logging_engine.py, named the way its authors would, passes the whole kit
    (paired with itself and every registered engine)."""
    result = run_suite("run_engine_kit", ["logging_engine:ENGINE"], ["-q"], tmp_path, path=EXAMPLES)
    assert result.returncode == 0, tail(result, 200)
    passed, failed, skipped = (int(n) for n in table_row(result.stdout, "logging")[:3])
    assert (failed, skipped) == (0, 0) and passed > 150, tail(result)


@pytest.mark.parametrize(
    ("engines", "message"),
    [
        (["nope"], "--spcore-engine: unknown engine 'nope'"),
        (["no_such_module:ENGINE"], "--spcore-engine-factory 'no_such_module:ENGINE'"),
        (["json:dumps"], "is not an engine factory"),
    ],
)
def test_a_bad_engine_choice_is_a_usage_error(
    tmp_path: pathlib.Path, engines: list[str], message: str
) -> None:
    result = run_suite("run_engine_kit", engines, ["-q"], tmp_path, timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, tail(result)
    assert message in result.stderr
