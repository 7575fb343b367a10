"""Hosting the applications people already have: WSGI (PEP 3333) and ASGI 3.0.

What is protocol lives here, sans-IO like the rest of the core: which interface an
application speaks (``detect``), the WSGI environ, ``start_response`` and the worker's side
of a call (``wsgi``), the ASGI scopes and the state machines of its ``http``, ``websocket``
(``websocket``, through wsproto) and ``lifespan`` messages (``asgi``, ``lifespan``). What
needs a thread or an event loop -- the worker blocking on ``wsgi.input``, the coroutines of an
ASGI app and the loop they run on -- is the drivers' (``spcore.drivers.gateway``), which hand
data across threads only through the thread-safe wake-up and bounded buffers.
"""
