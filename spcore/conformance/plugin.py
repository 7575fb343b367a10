"""The pytest plugin: driver selection options and the per-driver results table.

It is loaded through the ``pytest11`` entry point wherever spcore is installed, so it must
stay inert in other projects' test runs: its options are namespaced (``--spcore-...``), it
defines no fixtures (those live in ``spcore/conformance/scenarios/conftest.py`` and apply to
the scenarios only), and it prints its table only when scenarios ran.
"""

from __future__ import annotations

import dataclasses
import pkgutil
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run: import the suite only when it runs
    from .harness import DriverFactory

__all__ = [
    "GATEWAY_MARK",
    "STREAM_MARK",
    "DriverChoice",
    "chosen_codecs",
    "chosen_drivers",
    "raise_fd_limit",
]

#: The marker of the scenarios that serve no HTTP (they do not run once per codec).
STREAM_MARK = "spcore_stream"
#: The marker of the scenarios of hosted (ASGI, WSGI) applications: what they test sits above
#: the codec, so they run with one codec (the first chosen), not once per codec.
GATEWAY_MARK = "spcore_gateway"
_DRIVER_OPTION = "spcore_driver"
_FACTORY_OPTION = "spcore_driver_factory"
_HTTP_OPTION = "spcore_http"
_CHOICES_KEY = pytest.StashKey[list["DriverChoice"]]()
_RESULTS_PLUGIN = "spcore-conformance-results"


@dataclasses.dataclass(frozen=True)
class DriverChoice:
    """A driver the suite runs against: a registered one or a third party's factory."""

    name: str
    factory: DriverFactory | None  # None: it cannot run here
    reason: str  # the probe's sentence

    @property
    def available(self) -> bool:
        return self.factory is not None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("spcore-conformance", "spcore driver conformance suite")
    group.addoption(
        "--spcore-driver",
        action="append",
        dest=_DRIVER_OPTION,
        metavar="NAME",
        help="run the conformance scenarios against this registered driver (repeatable; "
        "'all' = every registered driver; default: all, unless a factory is given)",
    )
    group.addoption(
        "--spcore-driver-factory",
        action="append",
        dest=_FACTORY_OPTION,
        metavar="MODULE:CALLABLE",
        help="run them against a third-party driver: CALLABLE(server) returns an object with "
        "bind(), run() and stop() like spcore.drivers.base.Driver (repeatable)",
    )
    group.addoption(
        "--spcore-http",
        action="append",
        dest=_HTTP_OPTION,
        metavar="CODEC",
        help="run the HTTP scenarios with this HTTP codec (h11, httptools; repeatable; "
        "default: every codec installed here)",
    )


def pytest_configure(config: pytest.Config) -> None:
    names = config.getoption(_DRIVER_OPTION) or []
    factories = config.getoption(_FACTORY_OPTION) or []
    if names or factories:  # asked for explicitly: check now, before any collection
        config.stash[_CHOICES_KEY] = _choose(names, factories)
    if not config.pluginmanager.has_plugin(_RESULTS_PLUGIN):
        config.pluginmanager.register(Results(), _RESULTS_PLUGIN)
    config.addinivalue_line("markers", f"{STREAM_MARK}: an spcore scenario that serves no HTTP")
    config.addinivalue_line(
        "markers", f"{GATEWAY_MARK}: an spcore scenario of a hosted app (run with one codec)"
    )


def chosen_codecs(config: pytest.Config) -> list[str]:
    """The HTTP codecs the HTTP scenarios run with."""
    from spcore.http.codecs import CODECS, available_codecs

    names = config.getoption(_HTTP_OPTION) or available_codecs()
    for name in names:
        if name not in CODECS:
            raise pytest.UsageError(f"--spcore-http: unknown codec {name!r} ({', '.join(CODECS)})")
        if name not in available_codecs():
            raise pytest.UsageError(f"--spcore-http: {name} is not installed here")
    return list(dict.fromkeys(names))


def chosen_drivers(config: pytest.Config) -> list[DriverChoice]:
    """The drivers this run covers, in order (available or not)."""
    if _CHOICES_KEY not in config.stash:
        config.stash[_CHOICES_KEY] = _choose([], [])
    return config.stash[_CHOICES_KEY]


def _choose(names: list[str], factories: list[str]) -> list[DriverChoice]:
    # spcore.drivers lives in drivers/ (setuptools package-dir), which mypy cannot map from
    # the source tree.
    from spcore.drivers import DRIVERS  # type: ignore[import-not-found, unused-ignore]

    if not names and not factories:
        names = ["all"]
    wanted: list[str] = []
    for name in names:
        for part in name.split(","):
            if part == "all":
                wanted.extend(DRIVERS)
            elif part in DRIVERS:
                wanted.append(part)
            else:
                known = ", ".join([*DRIVERS, "all"])
                raise pytest.UsageError(f"--spcore-driver: unknown driver {part!r} ({known})")
    choices = []
    for name in dict.fromkeys(wanted):
        spec = DRIVERS[name]
        ok, reason = spec.probe()
        choices.append(DriverChoice(name, spec.load() if ok else None, reason))
    for spec_text in dict.fromkeys(factories):
        choices.append(DriverChoice(spec_text, _load_factory(spec_text), "third-party driver"))
    return choices


def _load_factory(spec: str) -> DriverFactory:
    if ":" not in spec:
        raise pytest.UsageError(f"--spcore-driver-factory {spec!r}: expected MODULE:CALLABLE")
    try:
        factory = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise pytest.UsageError(f"--spcore-driver-factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise pytest.UsageError(f"--spcore-driver-factory {spec!r} is not callable")
    result: DriverFactory = factory
    return result


def raise_fd_limit() -> None:
    """Lift the soft file-descriptor limit to the hard one (500 connections need >1024 fds)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to lift
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # macOS refuses more than OPEN_MAX (10240) even below an unlimited hard limit.
    unlimited = hard == resource.RLIM_INFINITY
    for target in (65536, 10240) if unlimited else (hard,):
        if target <= soft:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return


# --- the results table --------------------------------------------------------------------------

_RANK = {"passed": 0, "skipped": 1, "failed": 2}


class Results:
    """Per-driver outcome counts, from each scenario's reports; printed as a table."""

    def __init__(self) -> None:
        self._driver_of: dict[str, str] = {}
        self._outcome: dict[str, str] = {}
        self._skip_reason: dict[str, str] = {}

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        callspec = getattr(item, "callspec", None)
        choice = callspec.params.get("driver") if callspec is not None else None
        if isinstance(choice, DriverChoice):
            self._driver_of[item.nodeid] = choice.name

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        driver = self._driver_of.get(report.nodeid)
        if driver is None:
            return
        outcome: str = "failed" if report.failed else report.outcome
        if outcome == "passed" and report.when != "call":
            return  # a setup or teardown that passed says nothing: only the call can pass
        previous = self._outcome.get(report.nodeid)
        if previous is None or _RANK[outcome] > _RANK[previous]:
            self._outcome[report.nodeid] = outcome
        if outcome == "skipped" and driver not in self._skip_reason:
            longrepr: Any = report.longrepr
            if isinstance(longrepr, tuple) and len(longrepr) == 3:
                self._skip_reason[driver] = str(longrepr[2]).removeprefix("Skipped: ")

    def table(self) -> dict[str, dict[str, int]]:
        """``{driver: {"passed": n, "failed": n, "skipped": n}}`` in collection order."""
        counts: dict[str, dict[str, int]] = {}
        for nodeid, driver in self._driver_of.items():
            row = counts.setdefault(driver, dict.fromkeys(_RANK, 0))
            outcome = self._outcome.get(nodeid)
            if outcome is not None:
                row[outcome] += 1
        return counts

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        counts = self.table()
        if not any(any(row.values()) for row in counts.values()):
            return  # nothing ran (--collect-only, or no scenario collected)
        write = terminalreporter.write_line
        terminalreporter.section("spcore conformance")
        width = max(len(name) for name in counts)
        write(f"{'driver':<{width}}  passed  failed  skipped")
        for driver, row in counts.items():
            line = f"{driver:<{width}}  {row['passed']:>6}  {row['failed']:>6}  {row['skipped']:>7}"
            if row["skipped"] and not row["passed"] and not row["failed"]:
                line += f"  ({self._skip_reason.get(driver, 'skipped')})"
            write(line, red=bool(row["failed"]), green=not row["failed"] and bool(row["passed"]))
