"""Stream handlers (SPServer's model): line echo, broadcast to the other sessions, a reply
followed by a close, and a blocking handler whose calls run as jobs."""

from __future__ import annotations

import time

import pytest

from spcore.conformance.clients import Client
from spcore.conformance.harness import Serve, Served, Transport, transports, wait_until
from spcore.stream import DeferredSession, Session, StreamHandler

pytestmark = pytest.mark.spcore_stream  # (plugin.STREAM_MARK): not once per HTTP codec
TRANSPORTS = transports("plain", "tls1.3")
AnySession = Session | DeferredSession


class Echo(StreamHandler):
    def message(self, session: AnySession, message: bytes) -> None:
        session.send(message)


class Broadcast(StreamHandler):
    """Sends each line to every other session and tells the sender how many got it."""

    def message(self, session: AnySession, message: bytes) -> None:
        count = session.broadcast(message)
        session.send(b"sent to %d" % count)


class ReplyThenClose(StreamHandler):
    def message(self, session: AnySession, message: bytes) -> None:
        session.send(b"bye " + message)
        session.close()


class SlowEcho(StreamHandler):
    """A blocking handler: each call runs on the driver's worker threads."""

    blocking = True

    def message(self, session: AnySession, message: bytes) -> None:
        time.sleep(0.005)
        session.send(message.upper())


def _sessions(served: Served, n: int) -> None:
    wait_until(lambda: len(served.sessions) == n, 5.0, f"{n} sessions")


@TRANSPORTS
def test_line_echo(serve: Serve, transport: Transport) -> None:
    with serve(handler=Echo, transport=transport) as served, served.connect() as client:
        client.send(b"one\ntwo\r\nthr")
        client.send(b"ee\n")
        assert client.read_exact(len(b"one\r\ntwo\r\nthree\r\n")) == b"one\r\ntwo\r\nthree\r\n"
        long_line = bytes(range(97, 123)) * 200
        for start in range(0, len(long_line), 100):
            client.send(long_line[start : start + 100])
        client.send(b"\n")
        assert client.read_until(b"\r\n") == long_line + b"\r\n"


@TRANSPORTS
def test_broadcast_reaches_the_other_sessions(serve: Serve, transport: Transport) -> None:
    with serve(handler=Broadcast, transport=transport) as served:
        clients = [served.connect() for _ in range(3)]
        try:
            _sessions(served, 3)
            sender, *others = clients
            sender.send(b"hello all\n")
            assert sender.read_until(b"\r\n") == b"sent to 2\r\n"
            for other in others:
                assert other.read_until(b"\r\n") == b"hello all\r\n"
            others[1].close()
            _sessions(served, 2)
            sender.send(b"again\n")
            assert sender.read_until(b"\r\n") == b"sent to 1\r\n"
            assert others[0].read_until(b"\r\n") == b"again\r\n"
        finally:
            for client in clients:
                client.close()


@TRANSPORTS
def test_reply_then_close(serve: Serve, transport: Transport) -> None:
    """The client sees the whole reply, then a clean end of stream (close_notify on TLS)."""
    with serve(handler=ReplyThenClose, transport=transport) as served:
        with served.connect() as client:
            client.send(b"ping\n")
            assert client.read_to_eof() == b"bye ping\r\n"
        served.wait_drained()


@TRANSPORTS
def test_blocking_handler(serve: Serve, transport: Transport) -> None:
    lines = [b"line %d" % i for i in range(40)]
    with serve(handler=SlowEcho, transport=transport) as served, served.connect() as client:
        client.send(b"".join(line + b"\n" for line in lines))
        expected = b"".join(line.upper() + b"\r\n" for line in lines)
        assert client.read_exact(len(expected)) == expected


def test_client_closes_its_side(serve: Serve) -> None:
    """After the peer's EOF the session ends and its close() runs: the registry empties."""
    with serve(handler=Echo) as served:
        client: Client = served.connect()
        client.send(b"last words\n")
        assert client.read_until(b"\r\n") == b"last words\r\n"
        client.close()
        served.wait_drained()
        assert not served.sessions
