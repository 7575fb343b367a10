"""The pytest plugin: driver, TLS engine and HTTP codec selection options, how the scenarios
combine them, and the per-driver and per-engine results tables.

It is loaded through the ``pytest11`` entry point wherever spcore is installed, so it must
stay inert in other projects' test runs: its options are namespaced (``--spcore-...``), it
defines no fixtures (those live in the conftest of each scenario package and apply to its
scenarios only), and it prints its table only when scenarios ran.
"""

from __future__ import annotations

import dataclasses
import pkgutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run: import the suite only when it runs
    from spcore.tls.engine import EngineFactory

    from .harness import DriverFactory

__all__ = [
    "GATEWAY_MARK",
    "REFERENCE_DRIVER",
    "STREAM_MARK",
    "Case",
    "DriverChoice",
    "EngineChoice",
    "chosen_codecs",
    "chosen_drivers",
    "chosen_engines",
    "full_matrix",
    "raise_fd_limit",
    "scenario_cases",
]

#: The marker of the scenarios that serve no HTTP (they do not run once per codec).
STREAM_MARK = "spcore_stream"
#: The marker of the scenarios of hosted (ASGI, WSGI) applications: what they test sits above
#: the codec, so they run with one codec (the first chosen), not once per codec.
GATEWAY_MARK = "spcore_gateway"
_DRIVER_OPTION = "spcore_driver"
_FACTORY_OPTION = "spcore_driver_factory"
_ENGINE_OPTION = "spcore_engine"
_ENGINE_FACTORY_OPTION = "spcore_engine_factory"
_HTTP_OPTION = "spcore_http"
_FULL_MATRIX_OPTION = "spcore_full_matrix"
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
    group.addoption(
        "--spcore-http",
        action="append",
        dest=_HTTP_OPTION,
        metavar="CODEC",
        help="run the HTTP scenarios with this HTTP codec (h11, httptools; repeatable; "
        "default: every codec installed here)",
    )
    group.addoption(
        "--spcore-full-matrix",
        action="store_true",
        dest=_FULL_MATRIX_OPTION,
        help="run every TLS engine with every HTTP codec on every driver (by default the "
        "engines other than the first meet the codecs other than the first on one driver)",
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


@dataclasses.dataclass(frozen=True)
class Case:
    """One run of a scenario: its transport, TLS engine, driver and HTTP codec (None for a
    parameter the scenario does not take, and for the engine of a plain transport)."""

    transport: str | None
    engine: EngineChoice | None
    driver: DriverChoice | None
    codec: str | None

    @property
    def id(self) -> str:
        engine = self.engine.name if self.engine is not None else None
        driver = self.driver.name if self.driver is not None else None
        return "-".join(p for p in (self.transport, engine, driver, self.codec) if p is not None)


#: The driver on which the engines other than the first meet the codecs other than the first.
REFERENCE_DRIVER = "selectors"


def scenario_cases(
    transports: Sequence[str] | None,
    engines: Sequence[EngineChoice],
    drivers: Sequence[DriverChoice | None],
    codecs: Sequence[str | None],
    *,
    full: bool = False,
) -> list[Case]:
    """Every run of one scenario, in order.

    A scenario runs on every driver with every codec, each of its TLS transports once per
    engine; but a case with both an engine other than the first and a codec other than the
    first runs on the reference driver only (``REFERENCE_DRIVER``), unless ``full``. Every
    pair of parameters still meets, for a fraction of the whole product, which would grow with
    each new part (docs/certifying.md).
    """
    cases = []
    each_transport: Sequence[str | None] = transports or [None]
    for transport in each_transport:
        per_engine: Sequence[EngineChoice | None] = (
            engines if transport not in (None, "plain") else [None]
        )
        for engine in per_engine:
            for driver in drivers:
                for codec in codecs:
                    secondary = engine not in (None, engines[0]) and codec not in (None, codecs[0])
                    reference = driver is None or driver.name == REFERENCE_DRIVER
                    if full or not secondary or reference:
                        cases.append(Case(transport, engine, driver, codec))
    return cases


def full_matrix(config: pytest.Config) -> bool:
    """Whether ``--spcore-full-matrix`` asks for the whole product of the parameters."""
    return bool(config.getoption(_FULL_MATRIX_OPTION))


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
