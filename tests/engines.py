"""The TLS engines for tests that run once per engine: a name each, skipped with the
engine's own reason where it cannot run here."""

from __future__ import annotations

import pytest

from spcore.tls.engines import ENGINES

__all__ = ["ENGINE_NAMES", "skip_unavailable"]

ENGINE_NAMES = list(ENGINES)


def skip_unavailable(name: str) -> str:
    """``name``, or skip the test when that engine cannot run on this machine."""
    available, reason = ENGINES[name].probe()
    if not available:
        pytest.skip(f"TLS engine {name}: {reason}")
    return name
