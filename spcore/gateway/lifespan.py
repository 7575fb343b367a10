"""The ASGI lifespan protocol's messages, checked
(https://asgi.readthedocs.io/en/latest/specs/lifespan.html).

The application's lifespan coroutine runs for the server's life on the app loop (the drivers
run it: ``spcore.drivers.gateway.asgi.Lifespan``): it receives ``lifespan.startup`` before
the server accepts anything, answers ``lifespan.startup.complete`` (or ``.failed``), then
receives ``lifespan.shutdown`` once the server has stopped. ``--lifespan`` says what a
failure means: ``on``, the server does not start (exit status 3); ``auto``, an application
that raises before answering the startup does not speak the protocol, and is served without;
``off``, the protocol is not used at all.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Final, Literal

from .asgi import ASGI

__all__ = ["PHASES", "LifespanError", "LifespanMode", "lifespan_outcome", "lifespan_scope"]

LifespanMode = Literal["auto", "on", "off"]
#: The two phases, in order.
PHASES: Final = ("startup", "shutdown")


class LifespanError(Exception):
    """The application's startup or shutdown failed; the message is one line for the user."""


def lifespan_scope(state: dict[str, Any]) -> dict[str, Any]:
    """The lifespan scope; ``state`` is the namespace the requests' scopes get copies of."""
    return {"type": "lifespan", "asgi": ASGI, "state": state}


def lifespan_outcome(phase: str, message: MutableMapping[str, Any]) -> None:
    """What the application answered to ``phase``: return for ``.complete``; raise
    ``LifespanError`` with its message for ``.failed``, or for a message out of place."""
    kind = message.get("type")
    if kind == f"lifespan.{phase}.complete":
        return
    if kind == f"lifespan.{phase}.failed":
        reason = " ".join(str(message.get("message") or "no reason given").split())
        raise LifespanError(f"the application's {phase} failed: {reason}")
    raise LifespanError(
        f"the application answered lifespan.{phase} with {kind!r}, not lifespan.{phase}.complete"
    )
