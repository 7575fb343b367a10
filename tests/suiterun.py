"""Running the conformance suite in a subprocess and reading its results table."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys


def run_python(code: str, cwd: pathlib.Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in ``cwd``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_suite(
    runner: str,
    names: list[str],
    pytest_args: list[str],
    cwd: pathlib.Path,
    timeout: float = 240.0,
    path: pathlib.Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``spcore.conformance.<runner>(names, pytest_args)`` in a fresh interpreter (with ``path``
    on sys.path first, for a third party's module)."""
    prelude = f"sys.path.insert(0, {str(path)!r}); " if path is not None else ""
    args = ["-p", "no:cacheprovider", *pytest_args]
    code = (
        f"import sys; {prelude}import spcore.conformance as suite; "
        f"sys.exit(suite.{runner}({names!r}, {args!r}))"
    )
    return run_python(code, cwd, timeout)


def tail(result: subprocess.CompletedProcess[str], lines: int = 80) -> str:
    """The end of a run's output (stdout, then stderr): enough to see why it failed."""
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def table_row(output: str, driver: str) -> list[str]:
    """The driver's row of the results table: [passed, failed, skipped, ...]."""
    for line in output.splitlines():
        if line.startswith(driver + " "):
            return line.split()[1:]
    raise AssertionError(f"no table row for {driver}:\n{output}")


def assert_whole_suite_passed(
    result: subprocess.CompletedProcess[str], driver: str, *, skipped_because: str | None = None
) -> None:
    """The run succeeded, and every scenario (more than 90) passed for ``driver``: none failed,
    and none was skipped but, with ``skipped_because``, those whose skip reason (the run must
    show reasons: ``-rs``) says that (a capability the driver does not have)."""
    assert result.returncode == 0, tail(result)
    row = table_row(result.stdout, driver)
    passed, failed, skipped = (int(n) for n in row[:3])
    assert failed == 0 and passed > 90, row
    reasons = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", result.stdout, re.MULTILINE)
    if skipped_because is None:
        assert skipped == 0, reasons
        return
    assert skipped == sum(int(n) for n, _ in reasons) > 0, (row, reasons)
    assert all(skipped_because in reason for _, reason in reasons), reasons
