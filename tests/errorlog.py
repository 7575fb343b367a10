"""A check that nothing under the ``spcore`` logger logs at ERROR while a block runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from spcore.conformance.harness import ErrorLog


@contextmanager
def no_error_logs() -> Iterator[None]:
    """Nothing logged at ERROR (so nothing reached the "internal error" catch-all, and no
    handler failed).

    A handler of our own rather than ``caplog``, which hypothesis would share across examples.
    """
    handler = ErrorLog()
    logger = logging.getLogger("spcore")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == []
