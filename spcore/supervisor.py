"""The supervisor of ``spcore serve --workers N``: worker processes sharing the addresses.

Like cli.py this is the program's edge, not the sans-IO core: it starts processes, handles
signals and reads the clock. It holds the listening sockets, never a connection, and does no
protocol work; each worker is a whole ``spcore serve`` with its own driver, serving the
sockets it inherits.

Sockets. With ``reuse_port`` (the default where the kernel balances ``SO_REUSEPORT``: Linux,
FreeBSD) each TCP address gets one socket per worker, all bound here, and the kernel spreads
new connections over them; otherwise, and always for Unix sockets and sockets handed in
(``--fd``, systemd), the workers share one socket. Binding here, not in the workers, means a
busy port is the one-line error it is without workers, ``--port 0`` is one port for all, and
the accept queue of a worker that dies survives it: the connections waiting there are taken
by its replacement instead of being reset, as they would be if the worker had bound the
socket itself.

Workers are new interpreters (``command``), not forks of this process: nothing of the
supervisor's state (threads, locks, a TLS library's, the user's app, which it never imports)
reaches them, as with uvicorn's and hypercorn's ``spawn`` workers. A worker reports on a
socket pair (the link) once it is up; it ends gracefully when the link closes, so workers
never outlive a supervisor that was killed.

The rules:

* Worker 0 starts alone and the others once it is up, so that a mistake only a worker can
  find (an app that fails to import) is reported once.
* A worker that dies is started again: at once if it had run for ``STABLE`` seconds,
  otherwise after a delay that doubles from ``FIRST_DELAY`` up to ``MAX_DELAY``. Each death
  is a log line naming the cause (the exit status, or the signal).
* A worker that exits before it is up has failed to start. With status 2 (a usage error it
  has already printed in one line) or 3 (its application's startup failed, said in one line
  too) the supervisor stops at once with that status; after
  ``MAX_FAILED_STARTS`` failed starts in a row (counted over all workers, reset when any
  worker comes up) it stops with status 1.
* SIGTERM or SIGINT: the listening sockets are closed here and each worker gets SIGTERM and
  drains (the server's graceful shutdown); a worker still running ``stop_timeout`` later is
  killed (status 1). A second SIGTERM/SIGINT kills the workers and exits with status 1.
* SIGHUP is passed on to each worker that is up (its reload hook); one still starting reads
  the files as they are when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

# spcore.drivers lives in drivers/ (setuptools package-dir), which mypy cannot map when it
# checks spcore/ from the source tree; "unused-ignore" keeps this clean where it can.
from .drivers.base import Bound  # type: ignore[import-not-found, unused-ignore]
from .drivers.listening import (  # type: ignore[import-not-found, unused-ignore]
    bind_group,
    bind_listener,
)
from .server import Listener

__all__ = [
    "FIRST_DELAY",
    "MAX_DELAY",
    "MAX_FAILED_STARTS",
    "STABLE",
    "ListenFailed",
    "Supervisor",
    "WorkerSockets",
    "cpu_count",
    "describe_exit",
    "restart_delay",
    "worker_arguments",
]

log = logging.getLogger("spcore.supervisor")

#: A worker that ran this long before it died is restarted at once.
STABLE = 5.0
#: The first delay before restarting a worker that died sooner; it doubles each time.
FIRST_DELAY = 0.1
MAX_DELAY = 5.0
#: Failed starts in a row after which the supervisor gives up.
MAX_FAILED_STARTS = 5
#: The status of a worker (any ``spcore`` command) that stopped on a usage error.
EXIT_USAGE = 2
#: The status of a worker whose application's startup (ASGI lifespan) failed.
EXIT_STARTUP = 3
#: What a worker writes on its link once it is up.
UP = b"up\n"
#: The longest the supervisor waits without checking on its workers.
_POLL = 1.0


def restart_delay(previous: float, lived: float) -> float:
    """The delay before restarting a worker that died after ``lived`` seconds, whose previous
    restart (if any) waited ``previous`` seconds."""
    if lived >= STABLE:
        return 0.0
    return min(MAX_DELAY, max(FIRST_DELAY, 2 * previous))


def describe_exit(status: int) -> str:
    """``exited with status 3``, ``was killed by SIGKILL`` (``Popen.returncode`` form)."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"was killed by {name}"


def worker_arguments(index: int, link: int, sockets: Sequence[tuple[int, bool]]) -> list[str]:
    """The options that make ``spcore serve`` worker ``index`` of a supervisor: its link, and
    each socket it serves (``FD``, or ``FD:plain`` for one without TLS), in listener order."""
    arguments = ["--worker", str(index), "--worker-link", str(link)]
    for fd, plain in sockets:
        arguments += ["--worker-socket", f"{fd}:plain" if plain else str(fd)]
    return arguments


class ListenFailed(Exception):
    """Binding ``listener`` failed with ``error``."""

    def __init__(self, listener: Listener, error: OSError) -> None:
        super().__init__(listener, error)
        self.listener = listener
        self.error = error


class WorkerSockets:
    """The listening sockets of ``count`` workers: for each listener one shared socket, or
    with ``reuse_port`` one per worker for a TCP address bound here."""

    def __init__(
        self, listeners: Sequence[Listener], count: int, reuse_port: bool, backlog: int
    ) -> None:
        self.bound: list[Bound] = []
        self._per_worker: list[list[Bound]] = [[] for _ in range(count)]
        try:
            for listener in listeners:
                try:
                    if reuse_port and listener.path is None and listener.fd is None:
                        group = [
                            Bound(listener, sock) for sock in bind_group(listener, count, backlog)
                        ]
                    else:
                        group = [Bound(listener, bind_listener(listener, backlog))] * count
                except OSError as exc:
                    raise ListenFailed(listener, exc) from None
                self.bound += dict.fromkeys(group)  # each once, in order
                for mine, bound in zip(self._per_worker, group, strict=True):
                    mine.append(bound)
        except BaseException:
            self.close()
            raise

    def of(self, index: int) -> list[Bound]:
        """Worker ``index``'s sockets, one per listener, in listener order."""
        return self._per_worker[index]

    def close_sockets(self) -> None:
        """Close the sockets; the files of Unix ones stay while workers may listen on them."""
        for bound in self.bound:
            bound.sock.close()

    def close(self) -> None:
        """Close the sockets and remove the files of the Unix ones (the workers are gone)."""
        for bound in self.bound:
            bound.close()


@dataclass
class _Slot:
    """One worker position: the process filling it now, and its restart state."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    started_at: float = 0.0
    up: bool = False
    #: The delay the last restart waited (the back-off doubles it).
    delay: float = 0.0
    #: When to start it again (None: running, or not to restart).
    due: float | None = None


class Supervisor:
    """Run ``count`` workers until a signal stops them; ``run()`` returns the exit status.

    ``command`` is the command line of a worker, to which ``worker_arguments`` are added;
    ``announce`` is called with the workers' pids once all of them are up for the first time.
    """

    def __init__(
        self,
        count: int,
        sockets: WorkerSockets,
        command: Sequence[str],
        *,
        stop_timeout: float,
        announce: Callable[[list[int]], None],
    ) -> None:
        self._slots = [_Slot(index) for index in range(count)]
        self._sockets = sockets
        self._command = list(command)
        self._stop_timeout = stop_timeout
        self._announce = announce
        self._signals: deque[int] = deque()
        self._failed_starts = 0
        self._announced = False
        self._stop_deadline: float | None = None
        self._status = 0

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        try:
            with self._signal_handlers(wake_w.fileno()):
                self._start(self._slots[0], time.monotonic())
                while self._alive() or self._stop_deadline is None:
                    self._step(wake_r)
                return self._status
        finally:
            self._kill_all()
            self._sockets.close()
            wake_r.close()
            wake_w.close()

    def _step(self, wake: socket.socket) -> None:
        links = {slot.link: slot for slot in self._slots if slot.link is not None}
        readable, _, _ = select.select([wake, *links], [], [], self._timeout(time.monotonic()))
        with contextlib.suppress(BlockingIOError):
            while wake.recv(512):
                pass
        now = time.monotonic()
        while self._signals:
            self._on_signal(self._signals.popleft(), now)
        for sock in readable:
            slot = links.get(sock)
            if slot is not None and slot.link is sock:  # (a second signal may have killed it)
                self._on_link(slot, now)
        self._reap(now)
        self._start_due(now)
        self._enforce_stop_timeout(now)

    def _timeout(self, now: float) -> float:
        deadlines = [slot.due for slot in self._slots if slot.due is not None]
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        return min([_POLL, *(max(0.0, deadline - now) for deadline in deadlines)])

    def _alive(self) -> bool:
        return any(slot.proc is not None for slot in self._slots)

    # -- workers ------------------------------------------------------------------------------

    def _start(self, slot: _Slot, now: float) -> None:
        slot.due = None
        slot.started_at = now
        slot.up = False
        sockets = [(b.sock.fileno(), b.listener.tls is None) for b in self._sockets.of(slot.index)]
        mine, theirs = socket.socketpair()
        try:
            command = self._command + worker_arguments(slot.index, theirs.fileno(), sockets)
            slot.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno(), *(fd for fd, _ in sockets)],
            )
        except OSError as exc:
            mine.close()
            log.error("cannot start worker %d: %s", slot.index, exc.strerror or exc)
            self._failed_start(slot, None, now)
            return
        finally:
            theirs.close()
        slot.link = mine
        log.debug("worker %d started as pid %d", slot.index, slot.proc.pid)

    def _on_link(self, slot: _Slot, now: float) -> None:
        assert slot.link is not None and slot.proc is not None
        try:
            message = slot.link.recv(64)
        except OSError:
            message = b""
        if not message:  # the worker is ending; _reap sees it go
            slot.link.close()
            slot.link = None
            return
        if message != UP or slot.up:
            log.warning("worker %d sent %r on its link; ignored", slot.index, message)
            return
        slot.up = True
        self._failed_starts = 0
        log.info("worker %d (pid %d) is up", slot.index, slot.proc.pid)
        if self._stop_deadline is not None:
            return
        if slot.index == 0 and not self._announced:
            for other in self._slots[1:]:
                if other.proc is None and other.due is None:
                    self._start(other, now)
        if not self._announced and all(s.up for s in self._slots):
            self._announced = True
            self._announce([s.proc.pid for s in self._slots if s.proc is not None])

    def _reap(self, now: float) -> None:
        for slot in self._slots:
            if slot.proc is None or (status := slot.proc.poll()) is None:
                continue
            pid = slot.proc.pid
            slot.proc = None
            if slot.link is not None:
                slot.link.close()
                slot.link = None
            cause = describe_exit(status)
            if self._stop_deadline is not None:
                log.info("worker %d (pid %d) %s", slot.index, pid, cause)
            elif not slot.up:
                self._failed_start(slot, (pid, status), now)
            else:
                self._restart_later(slot, f"worker {slot.index} (pid {pid}) {cause}", now)

    def _failed_start(self, slot: _Slot, exit: tuple[int, int] | None, now: float) -> None:
        """``exit``: the (pid, status) of a worker that ended before it was up (None: it could
        not even be started)."""
        self._failed_starts += 1
        what = f"worker {slot.index} could not be started"
        if exit is not None:
            pid, status = exit
            if status in (EXIT_USAGE, EXIT_STARTUP):  # it printed why; a retry would again
                self._give_up(status, now)
                return
            what = f"worker {slot.index} (pid {pid}) {describe_exit(status)} before it was up"
        if self._failed_starts >= MAX_FAILED_STARTS:
            log.error("%s: %d failed starts in a row; stopping", what, self._failed_starts)
            self._give_up(1, now)
            return
        self._restart_later(slot, what, now)

    def _restart_later(self, slot: _Slot, what: str, now: float) -> None:
        lived = now - slot.started_at
        slot.delay = restart_delay(slot.delay, lived)
        slot.due = now + slot.delay
        when = f"in {slot.delay:.1f} s" if slot.delay else "now"
        log.warning("%s after %.1f s; restarting it %s", what, lived, when)

    def _start_due(self, now: float) -> None:
        for slot in self._slots:
            if slot.due is not None and slot.due <= now and self._stop_deadline is None:
                self._start(slot, now)

    # -- stopping -----------------------------------------------------------------------------

    def _give_up(self, status: int, now: float) -> None:
        self._status = status
        self._begin_stop(now)

    def _begin_stop(self, now: float) -> None:
        if self._stop_deadline is not None:
            return
        self._stop_deadline = now + self._stop_timeout
        self._sockets.close_sockets()  # new clients are refused once the workers close theirs
        for slot in self._slots:
            slot.due = None
            if slot.proc is not None:
                self._send(slot, signal.SIGTERM)

    def _enforce_stop_timeout(self, now: float) -> None:
        if self._stop_deadline is None or now < self._stop_deadline:
            return
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.warning(
                    "worker %d (pid %d) did not stop within %.0f s; killing it",
                    slot.index,
                    slot.proc.pid,
                    self._stop_timeout,
                )
                self._send(slot, signal.SIGKILL)
                self._status = self._status or 1
        self._stop_deadline = now + _POLL  # reap them, then check again

    def _kill_all(self) -> None:
        for slot in self._slots:
            if slot.proc is not None:
                self._send(slot, signal.SIGKILL)
                slot.proc.wait()
                slot.proc = None
            if slot.link is not None:
                slot.link.close()
                slot.link = None

    @staticmethod
    def _send(slot: _Slot, signum: int) -> None:
        assert slot.proc is not None
        with contextlib.suppress(ProcessLookupError):  # it has just exited
            slot.proc.send_signal(signum)

    # -- signals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signal_handlers(self, wakeup_fd: int) -> Iterator[None]:
        """Handlers only note the signal; the loop acts on it (the wake-up fd ends its wait)."""

        def note(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)

        handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD]
        previous: dict[int, Any] = {sig: signal.signal(sig, note) for sig in handled}
        old_wakeup = signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, now: float) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap follows
        if signum == signal.SIGHUP:
            up = [slot for slot in self._slots if slot.up and slot.proc is not None]
            log.info("SIGHUP: passing it on to %d worker(s)", len(up))
            for slot in up:
                self._send(slot, signal.SIGHUP)
            return
        if self._stop_deadline is None:
            _say("spcore: shutting down gracefully (signal again to exit at once)")
            self._begin_stop(now)
            return
        _say("spcore: second signal, exiting at once")
        self._status = 1
        self._kill_all()


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, line.encode() + b"\n")


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
