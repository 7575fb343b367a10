"""A connection's lifecycle as one state machine: every state, and every transition, in a table.

Modelled on h11's ``_state.py``: the connection fires events; :data:`TRANSITIONS` says which
events each state accepts and where each leads, and anything not in the table is a bug
(``LifecycleError``). ``close()`` in a closing state and ``abort()`` once the close is decided
do nothing (they are idempotent), and ``connection_lost`` does nothing once CLOSED, so the table
has no self-loops.

The path of an accepted connection::

    PROXY ──> SNIFF ──> HELLO ──> HANDSHAKE ──> OPEN        (a TLS listener that expects PROXY)
    OPEN                                                    (a plaintext listener)
    any of those ──close──> FLUSHING ──flushed──> DRAINING ──peer EOF / timer──> CLOSE
                            FLUSHING ──flushed, the peer already ended──────────> CLOSE
    any state ──abort──> CLOSE ──lost──> CLOSED             (and ``lost`` from anywhere)
    CLOSE                                                   (the listener could not build the
                                                             connection's layers)

The peer's side is tracked apart (:class:`Input`): whether its stream ended (TLS
close_notify) and whether its transport did (EOF); FLUSHING's exit depends on it.

The states' timers (:data:`STATE_TIMEOUTS`): the handshake timeout runs from the accept
through every state before OPEN; the close timeout runs in DRAINING. The send timeout (any
output the peer does not take) and the protocol's own timer are not states' and run apart.
"""

from __future__ import annotations

import enum

__all__ = ["STATE_TIMEOUTS", "TRANSITIONS", "Event", "Input", "LifecycleError", "State"]


class _Fast(enum.Enum):
    """Members are singletons: hash them by identity, in C (``Enum.__hash__`` is Python code,
    run on every set or dict lookup of the hot path)."""

    __hash__ = object.__hash__


class State(_Fast):
    PROXY = "reading the PROXY protocol header"
    SNIFF = "telling a TLS ClientHello from plaintext by the first bytes"
    HELLO = "reading the ClientHello before the engine sees it"
    HANDSHAKE = "the TLS engine handshaking"
    OPEN = "the protocol layer running"
    FLUSHING = "closing: our last output (close_notify, an alert) going out; input discarded"
    DRAINING = "our write side shut: reading and discarding until the peer's EOF"
    CLOSE = "the driver is told to close the socket"
    CLOSED = "connection_lost was called: nothing happens any more"


class Event(_Fast):
    TLS_LISTENER = "a PROXY header was read on a TLS listener"
    PLAIN_LISTENER = "a PROXY header was read on a plaintext listener"
    TLS_SNIFFED = "the first bytes are a TLS handshake record"
    OTHER_SNIFFED = "the first bytes are neither TLS nor HTTP: the engine answers them"
    HTTP_SNIFFED = "the first bytes are plain HTTP: answered with a cleartext 400"
    HELLO_READ = "the ClientHello is complete and goes to the engine"
    HELLO_BAD = "the ClientHello is malformed: answered with a plaintext alert"
    HANDSHAKE_DONE = "the TLS handshake completed: the protocol starts"
    CLOSE = "a graceful close: flush, close_notify, shut the write side"
    FLUSHED = "our output is all out: shut the write side, wait for the peer's EOF"
    FLUSHED_AND_DONE = "our output is all out, nothing to wait for (EOF seen, no close timeout)"
    PEER_EOF = "the peer's transport ended"
    TIMEOUT = "the state's timer ran out"
    ABORT = "close at once, dropping what is unsent"
    LOST = "the driver reported the socket closed (connection_lost)"


class Input(_Fast):
    """The peer's side: OPEN -> ENDED (its stream ended: close_notify) -> EOF (its transport
    ended); a plaintext EOF or a ragged TLS EOF goes from OPEN to EOF at once."""

    OPEN = enum.auto()
    ENDED = enum.auto()
    EOF = enum.auto()


class LifecycleError(RuntimeError):
    """An event the table does not allow in the current state: a bug in the core."""


_S, _E = State, Event

#: Every state, the events it accepts and the state each leads to.
TRANSITIONS: dict[State, dict[Event, State]] = {
    _S.PROXY: {
        _E.TLS_LISTENER: _S.SNIFF,
        _E.PLAIN_LISTENER: _S.OPEN,
        _E.TIMEOUT: _S.CLOSE,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.SNIFF: {
        _E.TLS_SNIFFED: _S.HELLO,
        _E.OTHER_SNIFFED: _S.HANDSHAKE,
        _E.HTTP_SNIFFED: _S.FLUSHING,
        _E.TIMEOUT: _S.CLOSE,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.HELLO: {
        _E.HELLO_READ: _S.HANDSHAKE,
        _E.HELLO_BAD: _S.FLUSHING,
        _E.TIMEOUT: _S.CLOSE,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.HANDSHAKE: {
        _E.HANDSHAKE_DONE: _S.OPEN,
        _E.CLOSE: _S.FLUSHING,  # the engine failed: its alert goes out first
        _E.TIMEOUT: _S.CLOSE,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.OPEN: {
        _E.CLOSE: _S.FLUSHING,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.FLUSHING: {
        _E.FLUSHED: _S.DRAINING,
        _E.FLUSHED_AND_DONE: _S.CLOSE,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.DRAINING: {
        _E.PEER_EOF: _S.CLOSE,
        _E.TIMEOUT: _S.CLOSE,
        _E.ABORT: _S.CLOSE,
        _E.LOST: _S.CLOSED,
    },
    _S.CLOSE: {
        _E.LOST: _S.CLOSED,
    },
    _S.CLOSED: {},
}

#: The ``Limits`` field timing each state that has a timer of its own.
STATE_TIMEOUTS: dict[State, str] = {
    _S.PROXY: "handshake_timeout",
    _S.SNIFF: "handshake_timeout",
    _S.HELLO: "handshake_timeout",
    _S.HANDSHAKE: "handshake_timeout",
    _S.DRAINING: "close_timeout",
}

#: States in which a close was decided: ``Transport.closing`` is True, nothing is written.
CLOSING_STATES = frozenset({_S.FLUSHING, _S.DRAINING, _S.CLOSE, _S.CLOSED})
#: States before the protocol layer starts (the handshake timeout runs).
OPENING_STATES = frozenset({_S.PROXY, _S.SNIFF, _S.HELLO, _S.HANDSHAKE})


def next_state(state: State, event: Event) -> State:
    """Where ``event`` leads from ``state``; ``LifecycleError`` if the table forbids it."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise LifecycleError(f"{event.name} cannot happen in state {state.name}") from None
