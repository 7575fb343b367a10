"""The pytest plugin: driver and TLS engine selection options and the per-driver results table.

It is loaded through the ``pytest11`` entry point wherever spcore is installed, so it must
stay inert in other projects' test runs: its options are namespaced (``--spcore-...``), it
defines no fixtures (those live in the conftest of each scenario package and apply to its
scenarios only), and it prints its table only when scenarios ran.
"""

from __future__ import annotations

import dataclasses
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run: import the suite only when it runs
    from spcore.tls.engine import EngineFactory

    from .harness import DriverFactory

__all__ = [
    "DriverChoice",
    "EngineChoice",
    "chosen_drivers",
    "chosen_engines",
    "raise_fd_limit",
]

_DRIVER_OPTION = "spcore_driver"
_FACTORY_OPTION = "spcore_driver_factory"
_ENGINE_OPTION = "spcore_engine"
_ENGINE_FACTORY_OPTION = "spcore_engine_factory"
_CHOICES_KEY = pytest.StashKey[list["DriverChoice"]]()
_ENGINES_KEY = pytest.StashKey[list["EngineChoice"]]()
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


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    """A TLS engine the suites run with: a registered one or a third party's factory."""

    name: str
    factory: EngineFactory | None  # None: it cannot run here
    reason: str
    spec: str  # how a subprocess names it: a registered name or module:attribute

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
        "--spcore-engine",
        action="append",
        dest=_ENGINE_OPTION,
        metavar="NAME",
        help="TLS engine to certify (the engine kit) and to run the TLS scenarios with "
        "(repeatable; 'all' = every registered engine; default: all, unless a factory is given)",
    )
    group.addoption(
        "--spcore-engine-factory",
        action="append",
        dest=_ENGINE_FACTORY_OPTION,
        metavar="MODULE:ATTRIBUTE",
        help="a third-party TLS engine: an EngineFactory object like spcore.tls.gnutls.GNUTLS "
        "(repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    names = config.getoption(_DRIVER_OPTION) or []
    factories = config.getoption(_FACTORY_OPTION) or []
    if names or factories:  # asked for explicitly: check now, before any collection
        config.stash[_CHOICES_KEY] = _choose(names, factories)
    engines = config.getoption(_ENGINE_OPTION) or []
    engine_factories = config.getoption(_ENGINE_FACTORY_OPTION) or []
    if engines or engine_factories:
        config.stash[_ENGINES_KEY] = _choose_engines(engines, engine_factories)
    config.addinivalue_line(
        "markers",
        "transports(*names): run a scenario over these transports (plain, tls1.2, tls1.3), "
        "each TLS one once per chosen TLS engine",
    )
    if not config.pluginmanager.has_plugin(_RESULTS_PLUGIN):
        config.pluginmanager.register(Results(), _RESULTS_PLUGIN)


def chosen_drivers(config: pytest.Config) -> list[DriverChoice]:
    """The drivers this run covers, in order (available or not)."""
    if _CHOICES_KEY not in config.stash:
        config.stash[_CHOICES_KEY] = _choose([], [])
    return config.stash[_CHOICES_KEY]


def _choose(names: list[str], factories: list[str]) -> list[DriverChoice]:
    # spcore.drivers lives in drivers/ (setuptools package-dir), which mypy cannot map from
    # the source tree.
    from spcore.drivers import DRIVERS  # type: ignore[import-not-found, unused-ignore]

    choices = []
    for name in _registered(names, factories, DRIVERS, "driver"):
        spec = DRIVERS[name]
        ok, reason = spec.probe()
        choices.append(DriverChoice(name, spec.load() if ok else None, reason))
    for spec_text in dict.fromkeys(factories):
        choices.append(DriverChoice(spec_text, _load_factory(spec_text), "third-party driver"))
    return choices


def _registered(
    names: list[str], factories: list[str], registry: Mapping[str, Any], kind: str
) -> list[str]:
    """The registered names asked for, in order (``all``: every one; by default all, unless
    only factories were given)."""
    if not names and not factories:
        names = ["all"]
    wanted: list[str] = []
    for name in names:
        for part in name.split(","):
            if part == "all":
                wanted.extend(registry)
            elif part in registry:
                wanted.append(part)
            else:
                known = ", ".join([*registry, "all"])
                raise pytest.UsageError(f"--spcore-{kind}: unknown {kind} {part!r} ({known})")
    return list(dict.fromkeys(wanted))


def chosen_engines(config: pytest.Config) -> list[EngineChoice]:
    """The TLS engines this run covers, in order (available or not)."""
    if _ENGINES_KEY not in config.stash:
        config.stash[_ENGINES_KEY] = _choose_engines([], [])
    return config.stash[_ENGINES_KEY]


def _choose_engines(names: list[str], factories: list[str]) -> list[EngineChoice]:
    from spcore.tls.engines import ENGINES, UnknownEngine, resolve

    choices = []
    for name in _registered(names, factories, ENGINES, "engine"):
        spec = ENGINES[name]
        ok, reason = spec.probe()
        choices.append(EngineChoice(name, spec.load() if ok else None, reason, name))
    for text in dict.fromkeys(factories):
        if ":" not in text:
            raise pytest.UsageError(f"--spcore-engine-factory {text!r}: expected MODULE:ATTRIBUTE")
        try:
            factory = resolve(text)
        except UnknownEngine as exc:
            raise pytest.UsageError(f"--spcore-engine-factory {text!r}: {exc}") from exc
        for needed in ("server", "client", "name", "features"):
            if not hasattr(factory, needed):
                raise pytest.UsageError(
                    f"--spcore-engine-factory {text!r} is not an engine factory (no {needed})"
                )
        choices.append(EngineChoice(str(factory.name), factory, "third-party engine", text))
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
    """Outcome counts per driver (the conformance suite) and per engine under test (the
    engine kit), from each scenario's reports; printed as tables."""

    _KINDS = {"driver": "spcore conformance", "engine": "spcore engine kit"}

    def __init__(self) -> None:
        self._subjects: dict[str, list[tuple[str, str]]] = {}  # nodeid: [(kind, name)]
        self._outcome: dict[str, str] = {}
        self._skip_reason: dict[tuple[str, str], str] = {}

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            return
        subjects = []
        driver = callspec.params.get("driver")
        if isinstance(driver, DriverChoice):
            subjects.append(("driver", driver.name))
        engine = callspec.params.get("engine")
        if isinstance(engine, EngineChoice):
            subjects.append(("engine", engine.name))
        pair = callspec.params.get("pair")  # a kit pairing: it counts for the engines under test
        if pair is not None:
            chosen = {choice.name for choice in chosen_engines(item.config)}
            for side in dict.fromkeys((pair.server.name, pair.client.name)):
                if side in chosen:
                    subjects.append(("engine", side))
        if subjects:
            self._subjects[item.nodeid] = subjects

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        subjects = self._subjects.get(report.nodeid)
        if subjects is None:
            return
        outcome: str = "failed" if report.failed else report.outcome
        if outcome == "passed" and report.when != "call":
            return  # a setup or teardown that passed says nothing: only the call can pass
        previous = self._outcome.get(report.nodeid)
        if previous is None or _RANK[outcome] > _RANK[previous]:
            self._outcome[report.nodeid] = outcome
        longrepr: Any = report.longrepr
        if outcome == "skipped" and isinstance(longrepr, tuple) and len(longrepr) == 3:
            for subject in subjects:
                reason = str(longrepr[2]).removeprefix("Skipped: ")
                self._skip_reason.setdefault(subject, reason)

    def table(self, kind: str = "driver") -> dict[str, dict[str, int]]:
        """``{name: {"passed": n, "failed": n, "skipped": n}}`` in collection order, for the
        drivers (``kind="driver"``) or the engines under test (``"engine"``)."""
        counts: dict[str, dict[str, int]] = {}
        for nodeid, subjects in self._subjects.items():
            for subject_kind, name in subjects:
                if subject_kind != kind:
                    continue
                row = counts.setdefault(name, dict.fromkeys(_RANK, 0))
                outcome = self._outcome.get(nodeid)
                if outcome is not None:
                    row[outcome] += 1
        return counts

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for kind, title in self._KINDS.items():
            counts = self.table(kind)
            if not any(any(row.values()) for row in counts.values()):
                continue  # nothing ran (--collect-only, or no scenario collected)
            write = terminalreporter.write_line
            terminalreporter.section(title)
            width = max(len(name) for name in [*counts, kind])
            write(f"{kind:<{width}}  passed  failed  skipped")
            for name, row in counts.items():
                line = (
                    f"{name:<{width}}  {row['passed']:>6}  {row['failed']:>6}  {row['skipped']:>7}"
                )
                if row["skipped"] and not row["passed"] and not row["failed"]:
                    line += f"  ({self._skip_reason.get((kind, name), 'skipped')})"
                write(
                    line, red=bool(row["failed"]), green=not row["failed"] and bool(row["passed"])
                )
