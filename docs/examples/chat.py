"""A chat room (SPServer's chat example): every line goes to the other sessions, and a
server-wide timer sends a heartbeat to all of them.

    python docs/examples/chat.py [PORT] [HEARTBEAT]

listens on 127.0.0.1 (port 7000 unless given; 0 picks a free one), sends ``* heartbeat``
every HEARTBEAT seconds (default 30) until Ctrl-C. Try it with two ``nc 127.0.0.1 7000``.
"""

from __future__ import annotations

import signal
import sys

import spcore
import spcore.drivers


class Chat(spcore.StreamHandler):
    idle_timeout = 600.0

    def start(self, session: spcore.Session) -> None:
        session.data["name"] = b"guest%d" % session.id
        session.send(b"welcome, " + session.data["name"] + b" (/nick NAME to rename, /quit)")
        session.broadcast(b"* " + session.data["name"] + b" joined")

    def message(self, session: spcore.Session, message: bytes) -> None:
        name = session.data["name"]
        if message.startswith(b"/nick ") and message[6:].strip():
            session.data["name"] = message[6:].strip()
            session.broadcast(b"* " + name + b" is now " + session.data["name"], include_self=True)
        elif message == b"/quit":
            session.send(b"bye")
            session.close()  # after the reply
        else:
            session.broadcast(b"<" + name + b"> " + message)

    def close(self, session: spcore.Session) -> None:
        session.broadcast(b"* " + session.data["name"] + b" left")


def main(argv: list[str]) -> None:
    port = int(argv[0]) if argv else 7000
    heartbeat = float(argv[1]) if len(argv) > 1 else 30.0
    room = spcore.Sessions()
    server = spcore.Server([spcore.stream_listener(Chat, port=port, sessions=room)])
    # The server-wide timer: no thread, no sleep; the core's deadline, run by the driver.
    server.call_later(heartbeat, lambda now: room.broadcast(b"* heartbeat"), every=heartbeat)
    driver = spcore.drivers.choose("auto")(server)
    port = driver.bind()[0].address[1]
    signal.signal(signal.SIGINT, lambda *_: driver.stop())
    print(f"chat on tcp://127.0.0.1:{port}/ with the {driver.name} driver", flush=True)
    driver.run()


if __name__ == "__main__":
    main(sys.argv[1:])
