"""Server names to per-name values (certificates, contexts, credentials): the SNI lookup.

One lookup for every engine, so the rules cannot differ between them: names compare without
case and without a trailing dot, and ``*.example.com`` covers exactly one more label
(``a.example.com``, not ``example.com`` nor ``a.b.example.com``; RFC 6125 6.4.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

__all__ = ["NameTable"]

T = TypeVar("T")


class NameTable(Generic[T]):
    """Exact names first, then the wildcard for the name's parent."""

    def __init__(self, by_name: Mapping[str, T]) -> None:
        self._exact = {name.lower(): v for name, v in by_name.items() if not name.startswith("*.")}
        self._wildcard = {
            name.lower()[2:]: v for name, v in by_name.items() if name.startswith("*.")
        }

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcard)

    def lookup(self, name: str) -> T | None:
        name = name.lower().rstrip(".")
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        _, _, parent = name.partition(".")
        return self._wildcard.get(parent) if parent else None
