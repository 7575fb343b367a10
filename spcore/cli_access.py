"""The access log's writer: ``--access-log [FILE|-]`` and ``--access-log-format``.

The core hands one ``AccessRecord`` per response to the sink it was given, on the loop thread
(``spcore.http.access``). Here that sink puts it on a bounded queue and returns; one writer
thread formats the records and writes them. The loop never waits for the disk: when the
queue is full (the writer fell behind), the record is counted as dropped, and the count is
logged by the writer as soon as it catches up, and shown by the metrics endpoint.

Lines are written with one ``write(2)`` per batch on a file opened ``O_APPEND``, so several
workers can share one log file without tearing each other's lines. ``reopen()`` (on SIGHUP)
opens the file again, after logrotate moved it away.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Final

from .http.access import AccessRecord

__all__ = ["CAPACITY", "AccessLog"]

log = logging.getLogger("spcore.access")

#: Records the queue holds before the next ones are dropped.
CAPACITY: Final = 8192
#: A batch is written once it reaches this many bytes.
BATCH_BYTES: Final = 64 * 1024

_STOP: Final = "stop"
_REOPEN: Final = "reopen"


class AccessLog:
    """A sink for access records that never blocks its caller (see the module docstring).

    ``path`` "-" is standard output. ``open_fd`` opens the file (a test may hand in one that
    stalls).
    """

    def __init__(
        self,
        path: str,
        format: Callable[[AccessRecord], str],
        capacity: int = CAPACITY,
        open_fd: Callable[[str], int] | None = None,
    ) -> None:
        self._path = path
        self._format = format
        self._capacity = capacity
        self._open = open_fd or _open
        self._fd = self._open(path)  # an OSError here is the caller's to report
        #: Records dropped because the queue was full (read from any thread).
        self.dropped = 0
        self._reported = 0
        # SimpleQueue: its put is reentrant (a signal handler may put ``_REOPEN``) and costs
        # no lock; only the loop thread puts records, so qsize() bounds them.
        self._queue: queue.SimpleQueue[AccessRecord | str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spcore-access-log", daemon=True)
        self._thread.start()

    def __call__(self, record: AccessRecord) -> None:
        if self._queue.qsize() >= self._capacity:
            self.dropped += 1
        else:
            self._queue.put(record)

    def reopen(self) -> None:
        """Open the file again (after a rotation); safe to call from a signal handler."""
        self._queue.put(_REOPEN)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._report()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item: AccessRecord | str | None = get()
            batch: list[str] = []
            size = 0
            while isinstance(item, AccessRecord):
                line = self._format(item)
                batch.append(line)
                size += len(line) + 1
                if size >= BATCH_BYTES:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
                    break
            if batch:
                self._write(("\n".join(batch) + "\n").encode("utf-8", "backslashreplace"))
            self._report()
            if item == _STOP:
                self._close_fd()
                return
            if item == _REOPEN:
                self._reopen()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.error("cannot write the access log %s: %s", self._path, exc.strerror)

    def _report(self) -> None:
        dropped = self.dropped
        if dropped != self._reported:
            log.warning(
                "access log: %d line(s) dropped so far (%d since the last report): the "
                "writer fell behind",
                dropped,
                dropped - self._reported,
            )
            self._reported = dropped

    def _reopen(self) -> None:
        try:
            fd = self._open(self._path)
        except OSError as exc:
            log.error("cannot reopen the access log %s: %s", self._path, exc.strerror)
            return
        self._close_fd()
        self._fd = fd

    def _close_fd(self) -> None:
        if self._path != "-":
            os.close(self._fd)


def _open(path: str) -> int:
    if path == "-":
        return 1
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o644)
