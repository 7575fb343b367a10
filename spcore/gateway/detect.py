"""Which interface an application speaks: ASGI 3, WSGI, or spcore's own ``app(request)``.

Decided once, at start, from the object itself (as uvicorn and hypercorn do): an ASGI 3
application is a coroutine function of ``(scope, receive, send)``, or an object whose
``__call__`` is one; a WSGI application a callable of ``(environ, start_response)``; an
spcore application a callable of ``(request)``. What fits none (an ASGI 2 class, a callable
with the wrong number of arguments) is an ``InterfaceError`` with a one-line reason, so that a
mismatch stops the server at start instead of answering 500 to every request.
"""

from __future__ import annotations

import enum
import functools
import inspect
from typing import Any

__all__ = ["Interface", "InterfaceError", "detect"]


class Interface(enum.Enum):
    ASGI = "asgi"
    WSGI = "wsgi"
    SPCORE = "spcore"

    @property
    def title(self) -> str:
        """How the start line names it: ``ASGI 3``, ``WSGI``, ``spcore``."""
        return {"asgi": "ASGI 3", "wsgi": "WSGI", "spcore": "spcore"}[self.value]


class InterfaceError(ValueError):
    """The application does not speak the interface it must (one line, for the user)."""


_ARITY = {Interface.SPCORE: 1, Interface.WSGI: 2, Interface.ASGI: 3}
_SIGNATURES = (
    "app(request) for spcore, app(environ, start_response) for WSGI, "
    "async app(scope, receive, send) for ASGI 3"
)


def detect(app: object, interface: str = "auto") -> Interface:
    """The interface ``app`` speaks; ``interface`` ("asgi", "wsgi", "spcore") insists on one
    and checks that ``app`` can speak it."""
    if inspect.isclass(app):
        raise InterfaceError(_class_message(app))
    if not callable(app):
        raise InterfaceError(f"it is a {type(app).__name__}, not a callable: {_SIGNATURES}")
    arity = _arity(app)
    coroutine = _is_coroutine(app)
    if interface == "auto":
        if coroutine:
            if arity not in (3, None):
                raise InterfaceError(_arity_message(arity, "an ASGI 3 app (scope, receive, send)"))
            return Interface.ASGI
        for kind, count in _ARITY.items():
            if arity == count:
                return kind
        if arity is None:
            raise InterfaceError("its arguments cannot be inspected; name it with --interface")
        raise InterfaceError(_arity_message(arity, _SIGNATURES))
    try:
        kind = Interface(interface)
    except ValueError:
        raise InterfaceError(f"unknown interface {interface!r} (asgi, wsgi, spcore)") from None
    if coroutine and kind is not Interface.ASGI:
        raise InterfaceError(f"it is a coroutine function, an ASGI app, not {kind.title}")
    if arity is not None and arity != _ARITY[kind]:
        raise InterfaceError(_arity_message(arity, f"a {kind.title} app takes {_ARITY[kind]}"))
    return kind


def _class_message(app: type[Any]) -> str:
    return (
        f"{app.__name__} is a class: an ASGI 2 application, or an application factory (give "
        "--factory to call it first); ASGI 2 apps can be wrapped with "
        "asgiref.compatibility.guarantee_single_callable"
    )


def _arity_message(arity: int, expected: str) -> str:
    return f"it takes {arity} argument{'s' if arity != 1 else ''}: {expected}"


def _is_coroutine(app: object) -> bool:
    while isinstance(app, functools.partial):
        app = app.func
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 (an instance's __call__)
    return call is not None and inspect.iscoroutinefunction(call)


def _arity(app: object) -> int | None:
    """How many positional arguments ``app`` is called with (None when it cannot be told)."""
    try:
        signature = inspect.signature(app)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None  # *args: any count
        positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.default is parameter.empty:
            count += 1
    return count
