"""A third party's TLS engine factory: any registered engine, with every handshake logged.

Certified like any engine (docs/tls-engine.md)::

    PYTHONPATH=docs/examples pytest --pyargs spcore.conformance.engine_scenarios \\
        --spcore-engine-factory logging_engine:ENGINE
"""

from __future__ import annotations

import logging

from spcore.tls import (
    ClientState,
    ClientTLS,
    EngineFactory,
    HandshakeComplete,
    ServerState,
    ServerTLS,
    TLSEngine,
    TLSEvent,
    resolve,
)

log = logging.getLogger("logging_engine")


class LoggedEngine:
    """A ``TLSEngine`` that passes every call on and logs each completed handshake."""

    def __init__(self, inner: TLSEngine) -> None:
        self._inner = inner

    def receive_data(self, data: bytes) -> list[TLSEvent]:
        events = self._inner.receive_data(data)
        for event in events:
            if isinstance(event, HandshakeComplete):
                log.info("handshake: %s %s", event.info.version, event.info.cipher)
        return events

    def __getattr__(self, name: str) -> object:  # everything else, as the inner engine has it
        return getattr(self._inner, name)


class _Server:
    def __init__(self, state: ServerState) -> None:
        self._state = state

    def new_engine(self) -> TLSEngine:
        return LoggedEngine(self._state.new_engine())  # type: ignore[return-value]


class _Client:
    def __init__(self, state: ClientState) -> None:
        self._state = state

    def new_engine(self, server_name: str | None = None, resume: object | None = None) -> TLSEngine:
        return LoggedEngine(self._state.new_engine(server_name, resume))  # type: ignore[return-value]


class LoggingFactory:
    """An ``EngineFactory``: a name, its features, its library, and the two states."""

    name = "logging"

    def __init__(self, inner: EngineFactory) -> None:
        self._inner = inner
        self.features = inner.features

    def library_version(self) -> str:
        return f"logging over {self._inner.library_version()}"

    def server(self, config: ServerTLS) -> ServerState:
        return _Server(self._inner.server(config))

    def client(self, config: ClientTLS) -> ClientState:
        return _Client(self._inner.client(config))


ENGINE = LoggingFactory(resolve("openssl"))
