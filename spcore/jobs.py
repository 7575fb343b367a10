"""Blocking jobs: the half-sync/half-async bridge, done sans-IO.

The core never starts a thread. When application code is marked blocking, the core wraps each
call in a ``Job`` and hands it to the driver (a ``RunJobs`` action); the driver runs
``job.run()`` on a worker thread and gives the finished job back to
``Connection.job_done()`` on its loop thread, where the result is applied. The job is
SPServer's "asynchronous completion token": it carries everything needed to resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Job"]


class Job:
    """One call to run off the loop thread. ``run()`` never raises."""

    __slots__ = ("_fn", "error", "on_done", "result")

    def __init__(self, fn: Callable[[], Any], on_done: Callable[[Job, float], None]) -> None:
        self._fn = fn
        #: Called on the loop thread, through ``Connection.job_done``.
        self.on_done = on_done
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Run the call (on a worker thread), keeping its result or exception."""
        try:
            self.result = self._fn()
        except BaseException as exc:  # handed back to the loop thread, never lost
            self.error = exc
