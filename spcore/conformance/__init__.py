"""The driver conformance suite and the TLS engine kit, shipped as a pytest plugin.

Every scenario in ``spcore.conformance.scenarios`` runs once per chosen driver (each HTTP one
once per HTTP codec, each TLS transport once per TLS engine: docs/certifying.md says how they
combine) and talks to it only over loopback sockets, with real clients.
The engine kit, ``spcore.conformance.engine_scenarios``, holds engines to the engine
interface, in memory and over sockets. Run them from pytest::

    pytest --pyargs spcore.conformance.scenarios --spcore-driver selectors
    pytest --pyargs spcore.conformance.scenarios --spcore-driver-factory mypkg.io:make_driver
    pytest --pyargs spcore.conformance.engine_scenarios --spcore-engine-factory mypkg.tls:ENGINE

or from Python with ``run()`` and ``run_engine_kit()``. The plugin
(``spcore.conformance.plugin``) is registered through the ``pytest11`` entry point; see
docs/certifying.md and docs/tls-engine.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["ENGINE_SCENARIOS", "SCENARIOS", "run", "run_engine_kit"]

#: The packages holding the scenarios (for ``pytest --pyargs``).
SCENARIOS = "spcore.conformance.scenarios"
ENGINE_SCENARIOS = "spcore.conformance.engine_scenarios"
_PLUGIN = "spcore.conformance.plugin"


def _choices(option: str, names: Sequence[str] | None) -> list[str]:
    """``--spcore-X NAME`` or, for ``module:attribute``, ``--spcore-X-factory``."""
    args: list[str] = []
    for name in names or ():
        args += [f"{option}-factory" if ":" in name else option, name]
    return args


def run(
    drivers: Sequence[str] | None = None,
    pytest_args: Sequence[str] = (),
    engines: Sequence[str] | None = None,
) -> int:
    """Run the suite against ``drivers`` and return pytest's exit code.

    ``drivers`` holds registered driver names (``"all"`` for every one; None: all) and
    third-party factories written ``module:callable``; ``engines`` the TLS engines the TLS
    scenarios run with (names, or ``module:attribute`` for a third party's; None: all).
    pytest prints a table of passed, failed and skipped scenarios per driver at the end. The
    code is 0 only if every scenario that could run passed (a driver that cannot run here is
    skipped, with its reason).
    """
    args = [*_choices("--spcore-driver", drivers), *_choices("--spcore-engine", engines)]
    return _pytest(SCENARIOS, [*args, *pytest_args])


def run_engine_kit(engines: Sequence[str] | None = None, pytest_args: Sequence[str] = ()) -> int:
    """Certify TLS engines: run the engine kit and return pytest's exit code (0: certified).

    ``engines`` holds registered names and ``module:attribute`` factories (None: every
    registered engine). Each is paired with itself and every other engine available here.
    """
    return _pytest(ENGINE_SCENARIOS, [*_choices("--spcore-engine", engines), *pytest_args])


def _pytest(package: str, extra: Sequence[str]) -> int:
    import pytest

    # spcore is imported already, so pytest cannot rewrite its asserts: say nothing about it.
    args = ["--pyargs", package, "-W", "ignore::pytest.PytestAssertRewriteWarning", *extra]
    # The entry point registers the plugin; naming it again with -p would register it twice.
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or "--disable-plugin-autoload" in args:
        args = ["-p", _PLUGIN, *args]
    return int(pytest.main(args))
