"""The registered TLS engines, probed like the drivers: which run here, and why not.

An engine is named (``"openssl"``, ``"gnutls"``) or given as an ``EngineFactory`` object (a
third party's). Loading is lazy: naming an engine imports its library only then, so a core
that never uses OpenSSL never imports ``ssl``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

from .config import TLSConfigError
from .engine import EngineFactory

__all__ = ["DEFAULT_ENGINE", "ENGINES", "EngineSpec", "UnknownEngine", "resolve"]

DEFAULT_ENGINE = "openssl"


class UnknownEngine(TLSConfigError):
    """No engine by that name, or it cannot run here (the message says why)."""


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine: where its factory lives and what it is."""

    name: str
    factory: str  # "module:attribute" of the EngineFactory
    summary: str

    def load(self) -> EngineFactory:
        """The factory; raises ``UnknownEngine`` with the reason when it cannot run here."""
        ok, reason = self.probe()
        if not ok:
            raise UnknownEngine(f"the {self.name} engine cannot run here: {reason}")
        return _resolve_name(self.factory)

    def probe(self) -> tuple[bool, str]:
        """(available, a sentence saying what runs or why it cannot)."""
        module_name = self.factory.partition(":")[0]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return False, f"cannot import {module_name}: {exc}"
        probe = getattr(module, "probe", None)
        if probe is None:
            return True, self.summary
        result: tuple[bool, str] = probe()
        return result


def _resolve_name(spec: str) -> EngineFactory:
    return cast(EngineFactory, pkgutil.resolve_name(spec))


ENGINES: Mapping[str, EngineSpec] = MappingProxyType(
    {
        "openssl": EngineSpec(
            "openssl",
            "spcore.tls.openssl_context:OPENSSL",
            "the ssl module's SSLObject over memory BIOs",
        ),
        "gnutls": EngineSpec(
            "gnutls",
            "spcore.tls.gnutls:GNUTLS",
            "libgnutls through ctypes, with in-memory transport functions",
        ),
    }
)


def resolve(engine: str | EngineFactory) -> EngineFactory:
    """The factory for a registered name, ``module:attribute``, or a factory as given."""
    if not isinstance(engine, str):
        return engine
    spec = ENGINES.get(engine)
    if spec is not None:
        return spec.load()
    if ":" in engine:
        try:
            return _resolve_name(engine)
        except (ImportError, AttributeError, ValueError) as exc:
            raise UnknownEngine(f"cannot load the TLS engine {engine!r}: {exc}") from None
    known = ", ".join(ENGINES)
    raise UnknownEngine(f"unknown TLS engine {engine!r} (known: {known}, or module:factory)")
