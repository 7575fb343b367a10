"""An SMTP-style echo: a message is whatever comes before a line holding a single dot (as
in SMTP's DATA), and each one comes back the same way, after a line saying its size.

    python docs/examples/dot_echo.py [PORT]

listens on 127.0.0.1 (port 2525 unless given; 0 picks a free one) until Ctrl-C. Lines that
start with a dot are dot-stuffed on the wire (RFC 5321 section 4.5.2): the framing unstuffs
what arrives and stuffs what it sends, so the handler sees the message as written.
"""

from __future__ import annotations

import signal
import sys

import spcore
import spcore.drivers


class DotEcho(spcore.StreamHandler):
    def framing(self) -> spcore.Framing:
        return spcore.DotFraming(max_length=64 * 1024)

    def start(self, session: spcore.Session) -> None:
        session.send(b"220 dot echo ready: end each message with a line holding one dot")

    def message(self, session: spcore.Session, message: bytes) -> None:
        if message.strip().upper() == b"QUIT":
            session.send(b"221 bye")
            session.close()
            return
        session.send(b"250 %d bytes:\r\n" % len(message) + message)


def main(argv: list[str]) -> None:
    server = spcore.Server([spcore.stream_listener(DotEcho, port=int(argv[0]) if argv else 2525)])
    driver = spcore.drivers.choose("auto")(server)
    port = driver.bind()[0].address[1]
    signal.signal(signal.SIGINT, lambda *_: driver.stop())
    print(f"dot echo on tcp://127.0.0.1:{port}/ with the {driver.name} driver", flush=True)
    driver.run()


if __name__ == "__main__":
    main(sys.argv[1:])
