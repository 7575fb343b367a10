"""spcore's I/O drivers and their registry.

Each driver says whether it can run here and why not; ``choose("auto")`` picks the best one
available on this platform. Driver modules are imported only when probed or chosen, so a
missing platform feature never breaks ``import spcore.drivers``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from .base import Driver

__all__ = ["DRIVERS", "Driver", "DriverSpec", "UnknownDriver", "choose", "probe_all"]


class UnknownDriver(LookupError):
    """No driver has that name, or it cannot run here."""


@dataclass(frozen=True)
class DriverSpec:
    name: str
    module: str  # relative to this package
    cls: str
    model: str

    def load(self) -> type[Driver[Any]]:
        module = importlib.import_module(f"{__name__}.{self.module}")
        driver: type[Driver[Any]] = getattr(module, self.cls)
        return driver

    def probe(self) -> tuple[bool, str]:
        try:
            return self.load().probe()
        except Exception as exc:  # a driver that cannot even import is unavailable
            return False, f"cannot load: {exc}"


DRIVERS: dict[str, DriverSpec] = {
    spec.name: spec
    for spec in (
        DriverSpec("uring", "uring.driver", "UringDriver", "completion (io_uring)"),
        DriverSpec("iocp", "iocp.driver", "IocpDriver", "completion (IOCP)"),
        DriverSpec("selectors", "selector", "SelectorsDriver", "readiness (selectors)"),
        DriverSpec("asyncio", "aio", "AsyncioDriver", "asyncio Protocol/Transport"),
        DriverSpec("uvloop", "aio", "UvloopDriver", "asyncio Protocol/Transport on uvloop"),
    )
}

#: The order ``auto`` tries, best first, per platform.
_PREFERENCE = {
    "win32": ("iocp", "asyncio", "selectors"),
    "linux": ("uring", "selectors", "asyncio"),
}
_DEFAULT_PREFERENCE = ("selectors", "asyncio")


def probe_all() -> list[tuple[DriverSpec, bool, str]]:
    """Every registered driver with whether it runs here and why (not)."""
    return [(spec, *spec.probe()) for spec in DRIVERS.values()]


def choose(name: str = "auto") -> type[Driver[Any]]:
    """The driver class called ``name``, or the best available one for ``"auto"``."""
    if name == "auto":
        reasons = []
        for candidate in _PREFERENCE.get(sys.platform, _DEFAULT_PREFERENCE):
            ok, why = DRIVERS[candidate].probe()
            if ok:
                return DRIVERS[candidate].load()
            reasons.append(f"{candidate}: {why}")
        raise UnknownDriver("no driver can run here (" + "; ".join(reasons) + ")")
    spec = DRIVERS.get(name)
    if spec is None:
        known = ", ".join(DRIVERS)
        raise UnknownDriver(f"unknown driver {name!r} (known: {known}, auto)")
    ok, why = spec.probe()
    if not ok:
        raise UnknownDriver(f"driver {name!r} cannot run here: {why}")
    return spec.load()
