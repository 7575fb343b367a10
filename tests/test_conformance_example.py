"""docs/examples/tiny_driver.py, the example a third party starts from, passes the whole
conformance suite, run the way certifying.md tells a third party to run it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

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
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, "\n".join(output.splitlines()[-80:])
    row = next(line for line in result.stdout.splitlines() if line.startswith(FACTORY))
    passed, failed, skipped = (int(n) for n in row.split()[1:4])
    assert (failed, skipped) == (0, 0) and passed > 90, row
