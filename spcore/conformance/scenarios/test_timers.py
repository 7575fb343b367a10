"""User timers over real sockets: a session's periodic timer, one cancelled before it is due,
and the server-wide timer sending a heartbeat to every session, all run by the core's
deadlines through the driver's one timer per connection (and the server's)."""

from __future__ import annotations

import socket
import time

import pytest

from spcore.conformance.harness import Serve, Transport, wait_until
from spcore.stream import DeferredSession, Session, StreamHandler
from spcore.timers import Timer

pytestmark = pytest.mark.spcore_stream  # (plugin.STREAM_MARK): not once per HTTP codec
AnySession = Session | DeferredSession
TICK = 0.1


class Ticks(StreamHandler):
    """Says ``tick 1``..``tick 3``, ``TICK`` seconds apart, then closes."""

    def start(self, session: AnySession) -> None:
        session.data["n"] = 0
        session.data["timer"] = session.call_later(TICK, self.tick, every=TICK)

    def tick(self, session: AnySession) -> None:
        session.data["n"] += 1
        session.send(b"tick %d" % session.data["n"])
        if session.data["n"] == 3:
            session.data["timer"].cancel()
            session.close()


class BlockingTicks(Ticks):
    blocking = True


@pytest.mark.parametrize("transport", ["plain", "tls1.3"])
@pytest.mark.parametrize("handler", [Ticks, BlockingTicks], ids=["inline", "blocking"])
def test_a_periodic_session_timer(serve: Serve, transport: Transport, handler: type) -> None:
    with serve(handler=handler, transport=transport) as served, served.connect() as client:
        started = time.monotonic()
        assert client.read_to_eof() == b"tick 1\r\ntick 2\r\ntick 3\r\n"
        assert time.monotonic() - started >= 3 * TICK * 0.9  # (a timer never fires early)


class CancelOnRequest(StreamHandler):
    """Arms a one-shot in half a second; ``cancel`` cancels it."""

    def start(self, session: AnySession) -> None:
        session.data["timer"] = session.call_later(0.5, lambda s: s.send(b"too late"))

    def message(self, session: AnySession, message: bytes) -> None:
        session.data["timer"].cancel()
        session.send(b"cancelled")


def test_a_cancelled_timer_never_fires(serve: Serve) -> None:
    with serve(handler=CancelOnRequest) as served, served.connect() as client:
        client.send(b"cancel\n")
        assert client.read_until(b"\r\n") == b"cancelled\r\n"
        client.sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            client.recv()  # what the timer would have sent, half a second in


def test_a_server_timer_sends_a_heartbeat_to_every_session(serve: Serve) -> None:
    with serve(handler=StreamHandler) as served:
        clients = [served.connect() for _ in range(3)]
        try:
            wait_until(lambda: len(served.sessions) == 3, 5.0, "3 sessions")
            timers: list[Timer] = []

            def arm() -> None:
                beat = served.server.call_later(
                    TICK, lambda now: served.sessions.broadcast(b"beat"), every=TICK
                )
                timers.append(beat)

            assert served.server.call_soon_threadsafe(arm)
            for client in clients:
                assert client.read_exact(12) == b"beat\r\nbeat\r\n"
            assert served.server.call_soon_threadsafe(lambda: timers[0].cancel())
        finally:
            for client in clients:
                client.close()
