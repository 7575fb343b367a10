"""What the core asks a driver to do: the actions of the driver contract.

In the spirit of h11's ``next_event()``: after any call into the core, the driver asks for the
next action (``Connection.next_action()``, ``Server.next_action()``) and carries it out with
its platform's calls, until the answer is ``None``. Every decision (what to send, when to shut
the write side or close, when to read, which deadline to arm, what to stop) is in the action;
the driver only performs it. See docs/driver-contract.md for what each one means to a driver.

A connection's actions:

* :class:`Send` -- write these buffers. One ``Send`` is in flight at a time: the next comes
  only after ``conn.sent(n, now)`` reported how many of its bytes the kernel took.
* :data:`SHUT_WRITE` -- shut the write side (``shutdown(SHUT_WR)``), now.
* :data:`CLOSE` -- close the socket (whatever is unsent is dropped), then call
  ``conn.connection_lost(error, now)``; it is the last action.
* :class:`Read` -- keep reading (``on``) or stop (back-pressure, end of input).
* :class:`SetTimer` -- call ``conn.on_deadline(now)`` at ``at`` (None: no timer).
* :class:`RunJobs` -- run these jobs on worker threads, each back through ``conn.job_done``.

The server's actions:

* :class:`Accepting` -- poll or post accepts on the listening sockets (``on``), or stop.
* :data:`CLOSE_LISTENERS` -- stop accepting for good and close the listening sockets.
* :class:`Sync` -- ask ``conn`` for its actions: it changed outside its own driver call.
* :class:`SetTimer` -- call ``server.on_deadline(now)`` at ``at``.
* :data:`EXIT` -- the stop sequence is complete: release everything and return from ``run()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from .jobs import Job

__all__ = [
    "CLOSE",
    "CLOSE_LISTENERS",
    "EXIT",
    "READ_OFF",
    "READ_ON",
    "SHUT_WRITE",
    "START_ACCEPTING",
    "STOP_ACCEPTING",
    "Accepting",
    "Action",
    "Close",
    "CloseListeners",
    "Exit",
    "Read",
    "RunJobs",
    "Send",
    "SetTimer",
    "ShutWrite",
    "Sync",
]

Buffer = bytes | memoryview
_C = TypeVar("_C")


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``buffers`` (``nbytes`` in all), in order, gathered if the platform can.

    They stay valid and unchanged until ``conn.sent(n, now)`` reports how many bytes the kernel
    took from their front (a readiness driver: what ``send`` returned; a completion driver: what
    the completion says; a transport that buffers: what it no longer holds). That report ends
    this ``Send``; a rest comes back at the front of the next one.
    """

    buffers: tuple[Buffer, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class ShutWrite:
    """Our output is all out: shut the write side now (the core counts it done)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket now, dropping anything unsent, then call ``connection_lost``."""


@dataclass(frozen=True, slots=True)
class Read:
    """Read from the socket while ``on`` (keep a receive posted); stop when not."""

    on: bool


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``on_deadline(now)`` at driver time ``at``; None cancels. A later ``SetTimer``
    replaces this one; a timer that fired is disarmed until the next one."""

    at: float | None


@dataclass(frozen=True, slots=True)
class RunJobs:
    """Run each job's ``run()`` on a worker thread; hand each back through ``job_done``."""

    jobs: tuple[Job, ...]


@dataclass(frozen=True, slots=True)
class Accepting:
    """Accept new connections while ``on``; stop polling or posting accepts when not."""

    on: bool


@dataclass(frozen=True, slots=True)
class CloseListeners:
    """Stop accepting for good and close every listening socket (the server is stopping)."""


@dataclass(frozen=True, slots=True)
class Sync(Generic[_C]):
    """Ask ``conn`` for its actions: another connection's call, a call handed to the loop or
    the server changed it."""

    conn: _C


@dataclass(frozen=True, slots=True)
class Exit:
    """The server has stopped: every connection is gone. Release everything and return."""


SHUT_WRITE = ShutWrite()
CLOSE = Close()
READ_ON = Read(True)
READ_OFF = Read(False)
START_ACCEPTING = Accepting(True)
STOP_ACCEPTING = Accepting(False)
CLOSE_LISTENERS = CloseListeners()
EXIT = Exit()

#: What ``Connection.next_action()`` returns.
Action = Send | ShutWrite | Close | Read | SetTimer | RunJobs
