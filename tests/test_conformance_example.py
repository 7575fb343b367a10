"""docs/examples/tiny_driver.py, the example a third party starts from, passes the whole
conformance suite, run the way certifying.md tells a third party to run it (but the outbound
scenarios, which skip: it does not declare that optional capability)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from suiterun import assert_whole_suite_passed

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples"
FACTORY = "tiny_driver:TinyDriver"


def test_the_tiny_driver_passes_the_suite(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--pyargs",
        "spcore.conformance.scenarios",
        "--spcore-driver-factory",
        FACTORY,
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    # Outbound connections are a capability the tiny driver does not declare.
    assert_whole_suite_passed(
        result, FACTORY, skipped_because="does not declare outbound connections"
    )
