"""The codec split holds in the source: only each codec's module imports its library.

Everything else in the HTTP layer (the exchange, the connection-level protocol, the rules)
works through ``spcore.http.codec``'s events, so a third codec, or HTTP/2 later, plugs in
without touching it. Checked on the syntax tree of every module of the package and its
drivers; the tests may use h11 as a client.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "spcore").rglob("*.py"), *(ROOT / "drivers").rglob("*.py")])
OWNERS = {"h11": "spcore/http/h11codec.py", "httptools": "spcore/http/httptoolscodec.py"}


def imported_roots(path: pathlib.Path) -> set[str]:
    """The top-level packages a module imports, wherever in it (functions included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_sources_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in SOURCES}
    assert set(OWNERS.values()) <= names
    assert "spcore/http/exchange.py" in names


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_only_its_codec_imports_a_codec_library(library: str) -> None:
    importers = {
        path.relative_to(ROOT).as_posix() for path in SOURCES if library in imported_roots(path)
    }
    assert importers == {OWNERS[library]}
