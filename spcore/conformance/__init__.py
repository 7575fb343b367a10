"""The driver conformance suite, shipped as a pytest plugin.

Every scenario in ``spcore.conformance.scenarios`` runs once per chosen driver and talks to
it only over loopback sockets, with real clients. Run it from pytest::

    pytest --pyargs spcore.conformance.scenarios --spcore-driver selectors
    pytest --pyargs spcore.conformance.scenarios --spcore-driver-factory mypkg.io:make_driver

or from Python with ``run()``. The plugin (``spcore.conformance.plugin``) is registered
through the ``pytest11`` entry point; see docs/certifying.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["SCENARIOS", "run"]

#: The package holding the scenarios (for ``pytest --pyargs``).
SCENARIOS = "spcore.conformance.scenarios"
_PLUGIN = "spcore.conformance.plugin"


def run(drivers: Sequence[str] | None = None, pytest_args: Sequence[str] = ()) -> int:
    """Run the suite against ``drivers`` and return pytest's exit code.

    ``drivers`` holds registered driver names (``"all"`` for every one; None: all) and
    third-party factories written ``module:callable``. pytest prints a table of passed,
    failed and skipped scenarios per driver at the end. The code is 0 only if every scenario
    that could run passed (a driver that cannot run here is skipped, with its reason).
    """
    import pytest

    # spcore is imported already, so pytest cannot rewrite its asserts: say nothing about it.
    args = ["--pyargs", SCENARIOS, "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    for driver in drivers or ():
        option = "--spcore-driver-factory" if ":" in driver else "--spcore-driver"
        args += [option, driver]
    args += list(pytest_args)
    # The entry point registers the plugin; naming it again with -p would register it twice.
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or "--disable-plugin-autoload" in args:
        args = ["-p", _PLUGIN, *args]
    return int(pytest.main(args))
