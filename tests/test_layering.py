"""The rules of the layout, read from the source (ast): the core is sans-IO, the drivers hold
no policy, and no module of the core imports itself back (not even for type checking)."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ROOT / "spcore"
DRIVERS = ROOT / "drivers"
EXAMPLES = ROOT / "docs" / "examples"

#: The core's edges, where the sans-IO rule stops, and why.
EDGES = {
    "cli.py": "the program: signals, the clock that dates the development certificate",
    "cli_tls.py": "the program's TLS options: writes ticket key files, and runs the thread "
    "that watches the TLS files which rotate while serving",
    "cli_access.py": "the access log's writer thread and file",
    "cli_metrics.py": "the admin listener (metrics, health) and its thread",
    "certs.py": "writes and locks certificate files (the time is an argument)",
    "__main__.py": "python -m spcore",
    "supervisor.py": "the program's worker processes: starts, signals and restarts them",
    "conformance": "runs drivers over real sockets, with client threads and timeouts",
}
#: Modules the core never imports: they do I/O, start threads, read or wait on a clock.
IO_MODULES = frozenset(
    {
        "_thread",
        "asyncio",
        "concurrent",
        "multiprocessing",
        "os",
        "queue",
        "select",
        "selectors",
        "signal",
        "socket",
        "subprocess",
        "threading",
        "time",
    }
)
#: Where the core may still import one of them, and what for.
IO_EXCEPTIONS = {
    ("tls/context.py", "os"): "os.fspath of certificate paths",
    ("tls/config.py", "os"): "os.fspath of the configuration's file names (their files are "
    "read when a listener's state is built, never per connection)",
    ("tls/openssl_context.py", "os"): "PEM given in memory reaches ssl's load_cert_chain, which "
    "only reads files, through an anonymous memory file (when a state is built)",
    ("tls/gnutls/_lib.py", "threading"): "a lock, so that libgnutls is loaded once whichever "
    "thread builds the first state (a reload runs on the file watcher's); it starts no thread",
    ("tls/gnutls/session.py", "threading"): "a record-sized read buffer per thread (each "
    "driver's loop thread runs its engines); it starts no thread",
}
#: Calls that read a clock.
CLOCK_CALLS = frozenset({"now", "utcnow", "today", "monotonic", "perf_counter", "time"})


def sources(folder: pathlib.Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(folder.rglob("*.py")):
        yield path.relative_to(folder).as_posix(), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """The top-level module of every absolute import, with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def attribute_calls(
    files: Iterator[tuple[str, ast.Module]],
) -> Iterator[tuple[str, ast.Call, ast.Attribute]]:
    """Every call of an attribute (``x.y(...)``) in ``files``: (file, call, attribute)."""
    for name, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                yield name, node, node.func


def _receiver(node: ast.Attribute) -> str:
    """The last name of what the attribute is taken from (``conn`` in ``self.conn.close``)."""
    return ast.unparse(node.value).split(".")[-1]


def core_sources() -> Iterator[tuple[str, ast.Module]]:
    for name, tree in sources(CORE):
        if name.split("/")[0] not in EDGES:
            yield name, tree


def test_the_core_imports_nothing_that_does_io_threads_or_time() -> None:
    found = [
        f"spcore/{name}:{line} imports {module}"
        for name, tree in core_sources()
        for module, line in imported(tree)
        if module in IO_MODULES and (name, module) not in IO_EXCEPTIONS
    ]
    assert found == []


def test_the_core_reads_no_clock() -> None:
    found = [
        f"spcore/{name}:{call.lineno} calls {ast.unparse(func)}"
        for name, call, func in attribute_calls(core_sources())
        if func.attr in CLOCK_CALLS and _receiver(func) in {"datetime", "date", "time"}
    ]
    assert found == []


# -- the drivers decide nothing ----------------------------------------------------------------

#: What a driver may not call on a connection: the protocol's side of it (deciding to close,
#: to abort, to write, to stop).
POLICY_CALLS = frozenset({"abort", "close", "write", "shutdown", "submit_job"})
#: Where a driver still adds to a clock reading, and why that is no connection's policy.
TIMED_EXCEPTIONS = {
    "proactor.py": "DRAIN_TIMEOUT bounds the wait for the kernel to hand back the cancelled "
    "operations at the very end, when no connection is left",
    "ring.py": "the end of a wait the core's timers asked for, kept across EINTR",
}


def driver_sources() -> Iterator[tuple[str, ast.Module]]:
    yield from ((f"drivers/{name}", tree) for name, tree in sources(DRIVERS))
    for example in ("tiny_driver.py", "blocking_loop.py"):
        path = EXAMPLES / example
        yield f"docs/examples/{example}", ast.parse(path.read_text(), str(path))


def test_no_driver_reads_a_limit() -> None:
    found = [
        f"{name}:{node.lineno}: {ast.unparse(node)}"
        for name, tree in driver_sources()
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr == "limits")
        or (isinstance(node, ast.Name) and node.id == "Limits")
        or (isinstance(node, ast.alias) and node.name == "Limits")
    ]
    assert found == []


def test_no_driver_decides_a_close_an_abort_or_a_write() -> None:
    found = [
        f"{name}:{call.lineno}: {ast.unparse(call)}"
        for name, call, func in attribute_calls(driver_sources())
        if func.attr in POLICY_CALLS and _receiver(func) == "conn"
    ]
    assert found == []


def test_no_driver_sleeps_or_keeps_a_timer_of_its_own() -> None:
    """Its only timers are the core's (``SetTimer``): no sleeping (but a yield of one loop
    pass), no relative timer."""
    found = [
        f"{name}:{call.lineno}: {ast.unparse(func)}"
        for name, call, func in attribute_calls(driver_sources())
        if func.attr == "call_later"
        or (
            ast.unparse(func) in {"time.sleep", "asyncio.sleep"}
            and [ast.unparse(arg) for arg in call.args] != ["0"]
        )
    ]
    assert found == []


def test_no_driver_makes_a_deadline_of_its_own() -> None:
    """No time is made by adding to the driver's clock (but the documented exceptions)."""
    clocks = {"now", "time.monotonic()", "loop.time()", "self._now()"}
    found = [
        f"{name}:{node.lineno}: {ast.unparse(node)}"
        for name, tree in driver_sources()
        if name.split("/")[-1] not in TIMED_EXCEPTIONS
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and {ast.unparse(node.left), ast.unparse(node.right)} & clocks
    ]
    assert found == []


def test_the_exceptions_are_still_needed() -> None:
    """An allowance that nothing uses any more is removed, not kept."""
    assert (DRIVERS / "proactor.py").read_text().count("time.monotonic() + DRAIN_TIMEOUT") == 1
    assert "time.monotonic() + timeout" in (DRIVERS / "uring" / "ring.py").read_text()
    assert "os.fspath" in (CORE / "tls" / "context.py").read_text()
    assert "os.fspath" in (CORE / "tls" / "config.py").read_text()
    assert "os.memfd_create" in (CORE / "tls" / "openssl_context.py").read_text()
    assert "threading.Lock()" in (CORE / "tls" / "gnutls" / "_lib.py").read_text()
    assert "threading.local()" in (CORE / "tls" / "gnutls" / "session.py").read_text()


# -- no import circle ----------------------------------------------------------------------------


def _module_graph() -> dict[str, set[str]]:
    """spcore's modules (the drivers as spcore.drivers) and what each imports, counting
    imports made only for type checking."""
    modules: dict[str, pathlib.Path] = {}
    for base, prefix in ((CORE, "spcore"), (DRIVERS, "spcore.drivers")):
        for path in base.rglob("*.py"):
            parts = [prefix, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            targets: set[str] = set()
            if isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    source = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from package import module`` imports the module; else the source itself
                targets = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
                targets = targets or {source}
            edges.update(target for target in targets if target in modules and target != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_back() -> None:
    graph = _module_graph()
    assert "spcore.connection" in graph and "spcore.drivers.base" in graph
    assert "spcore.server" not in graph["spcore.connection"]  # the old circle, gone
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set()}, None),
    ],
)
def test_the_circle_finder_finds_circles(
    graph: dict[str, set[str]], expected: list[str] | None
) -> None:
    assert _cycle(graph) == expected
