"""Hosting an application on a driver, whatever interface it speaks (``spcore serve --app``).

The core translates WSGI and ASGI (``spcore.gateway``); this package holds what needs a thread
or an event loop for it: the loop ASGI coroutines run on (``apploop``: a driver's own, or a
companion thread's), the application half of ASGI and its lifespan (``asgi``), and the WSGI
worker's blocking hand-off (``wsgi``). ``host_app()`` puts them together for one application.
"""

from __future__ import annotations

from typing import Any

from spcore.gateway.asgi import ASGIHost
from spcore.gateway.detect import Interface
from spcore.gateway.lifespan import LifespanMode
from spcore.gateway.websocket import MAX_MESSAGE_SIZE
from spcore.gateway.wsgi import WSGIHost
from spcore.http.messages import App

from .apploop import AppLoop, CompanionLoop
from .asgi import AsgiRunner, Lifespan
from .wsgi import BlockingChannel

__all__ = ["Hosted", "app_loop_of", "host_app"]


class Hosted:
    """An application ready to serve: ``app`` is what the HTTP listeners run. ``start()``
    before the driver runs (an ASGI application's startup: ``LifespanError`` if it fails),
    ``stop()`` once ``run()`` returned (its shutdown, then the end of its loop)."""

    def __init__(
        self,
        app: App,
        interface: Interface,
        lifespan: Lifespan | None = None,
        app_loop: AppLoop | None = None,
    ) -> None:
        self.app = app
        self.interface = interface
        self.lifespan = lifespan
        self.app_loop = app_loop

    def start(self) -> None:
        if self.lifespan is not None:
            self.lifespan.startup()

    def stop(self) -> None:
        try:
            if self.lifespan is not None:
                self.lifespan.shutdown()
        finally:
            if self.app_loop is not None:
                self.app_loop.close()


def app_loop_of(driver: object) -> AppLoop:
    """The loop ``driver`` offers applications (``Driver.app_loop()``); a companion thread's
    for a driver that offers none."""
    offer = getattr(driver, "app_loop", None)
    if offer is None:
        return CompanionLoop()
    loop: AppLoop = offer()
    return loop


def host_app(
    target: Any,
    interface: Interface,
    driver: object,
    *,
    root_path: str = "",
    lifespan: LifespanMode = "auto",
    ws_max_size: int = MAX_MESSAGE_SIZE,
    multiprocess: bool = False,
) -> Hosted:
    """Host ``target``, which speaks ``interface`` (``spcore.gateway.detect``), on ``driver``."""
    if interface is Interface.SPCORE:
        return Hosted(target, interface)
    if interface is Interface.WSGI:
        wsgi = WSGIHost(target, BlockingChannel, root_path=root_path, multiprocess=multiprocess)
        return Hosted(wsgi, interface)
    app_loop = app_loop_of(driver)
    cycle = Lifespan(target, app_loop, lifespan)
    asgi = ASGIHost(
        AsgiRunner(target, app_loop),
        root_path=root_path,
        state=cycle.state if lifespan != "off" else None,
        max_message_size=ws_max_size,
    )
    return Hosted(asgi, interface, cycle, app_loop)
