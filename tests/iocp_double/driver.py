"""The ``iocp`` driver on the Linux Win32 double: a factory for the conformance suite.

    PYTHONPATH=. pytest --pyargs spcore.conformance.scenarios \\
        --spcore-driver-factory tests.iocp_double.driver:make_driver

Each driver gets a double of its own, seeded from ``SPCORE_IOCP_DOUBLE_SEED`` (default 1) plus
the number of drivers made before it in this process, with immediate completions and cancel
races on. ``run()`` stops the double when the driver is done and fails loudly if the double
recorded a violation of the Win32 rules (``Win32Double.violations``).
"""

from __future__ import annotations

import itertools
import os

from spcore.drivers.iocp.driver import IocpDriver
from spcore.drivers.iocp.win32 import Win32Api
from spcore.server import Server

from .win32_double import Win32Double, make_double

__all__ = ["CANCEL_RACE_RATE", "IMMEDIATE_RATE", "DoubledIocpDriver", "make_driver"]

#: How often an operation that can complete at once does (still posting its packet).
IMMEDIATE_RATE = 0.3
#: How often a cancelled receive that has data completes successfully with it.
CANCEL_RACE_RATE = 0.2

_seeds = itertools.count(int(os.environ.get("SPCORE_IOCP_DOUBLE_SEED", "1")))


class DoubledIocpDriver(IocpDriver):
    """``IocpDriver`` over its own double; ``api`` may wrap the double (a test spy)."""

    def __init__(
        self, server: Server, double: Win32Double | None = None, *, api: Win32Api | None = None
    ) -> None:
        if double is None:
            double = make_double(next(_seeds), IMMEDIATE_RATE, CANCEL_RACE_RATE)
        self.double = double
        super().__init__(server, api=double if api is None else api)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.double.close()
        self.double.assert_no_violations()


def make_driver(server: Server) -> IocpDriver:
    """The conformance suite's factory."""
    return DoubledIocpDriver(server)
