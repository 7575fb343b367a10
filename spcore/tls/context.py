"""One listener's TLS (or one kind of outgoing connection's): an engine, its configuration,
and the native state built from them, which can be rebuilt and swapped while serving.

The state is built once, not per connection, and each connection's engine keeps a reference
to the state it was made from. ``reload()`` builds a complete new state first (reading every
file again) and only then swaps it in with one assignment: connections accepted afterwards
use the new certificates, keys, client CA, OCSP response and ticket keys, connections already
open keep theirs until they end, and a bad new file raises ``TLSConfigError`` with the old
state still serving. The swap is a single attribute store, so another thread (a signal
handler, a file watcher) may call ``reload()`` while a driver's loop makes engines.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .config import ClientTLS, ServerTLS, Source
from .engine import ClientState, EngineFactory, Feature, ServerState, TLSEngine
from .engines import DEFAULT_ENGINE, resolve
from .tickets import new_ticket_key_file

__all__ = ["ClientContext", "ServerContext"]

C = TypeVar("C", ServerTLS, ClientTLS)
S = TypeVar("S", ServerState, ClientState)


class _Context(Generic[C, S]):
    def __init__(self, config: C, engine: str | EngineFactory, build: Callable[[C], S]) -> None:
        self.factory = resolve(engine)
        self._build: Callable[[C], S] = build
        self._current: tuple[C, S] = (config, build(self._prepare(config)))
        #: How many states have been built: 1, then one more per successful reload.
        self.generation = 1

    def _prepare(self, config: C) -> C:
        return config

    @property
    def config(self) -> C:
        return self._current[0]

    @property
    def state(self) -> S:
        """The state new connections are made from (read it once per connection)."""
        return self._current[1]

    def reload(self, config: C | None = None) -> None:
        """Rebuild the state from ``config`` (default: the current one, files read again) and
        swap it in; on ``TLSConfigError`` nothing changes."""
        config = self.config if config is None else config
        state = self._build(self._prepare(config))
        self._current = (config, state)
        self.generation += 1


class ServerContext(_Context[ServerTLS, ServerState]):
    """A listener's TLS: ``new_engine()`` per accepted connection, ``reload()`` on demand.

    With an engine that takes ticket keys and no ``ticket_key`` configured, a random secret
    is made once here and kept across reloads, so a reload does not void every ticket issued
    so far.
    """

    def __init__(self, config: ServerTLS, engine: str | EngineFactory = DEFAULT_ENGINE) -> None:
        self._fallback_ticket_key: bytes | None = None
        factory = resolve(engine)
        super().__init__(config, factory, factory.server)

    def _prepare(self, config: ServerTLS) -> ServerTLS:
        if config.ticket_key is not None or Feature.TICKET_KEYS not in self.factory.features:
            return config
        if self._fallback_ticket_key is None:
            self._fallback_ticket_key = new_ticket_key_file()
        return dataclasses.replace(config, ticket_key=self._fallback_ticket_key)

    def new_engine(self) -> TLSEngine:
        return self.state.new_engine()

    def watched_files(self) -> list[pathlib.Path]:
        """Files that are replaced while serving (OCSP responses, the ticket key file), which
        a watcher may poll and ``reload()`` on change."""
        config = self.config
        sources: list[Source | None] = [c.ocsp_response for c in config.certificates()]
        sources.append(config.ticket_key)
        return [
            pathlib.Path(os.fspath(s))
            for s in sources
            if s is not None and not isinstance(s, bytes)
        ]


class ClientContext(_Context[ClientTLS, ClientState]):
    """Outgoing connections' TLS (the tunnel's backend side, tests)."""

    def __init__(self, config: ClientTLS, engine: str | EngineFactory = DEFAULT_ENGINE) -> None:
        factory = resolve(engine)
        super().__init__(config, factory, factory.client)

    def new_engine(self, server_name: str | None = None, resume: object | None = None) -> TLSEngine:
        return self.state.new_engine(server_name, resume)
