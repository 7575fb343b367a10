"""The whole spcore stack driven by a plain blocking socket loop, one connection at a time.

    python docs/examples/blocking_loop.py [PORT]

serves HTTPS on 127.0.0.1 (port 8443 unless given; 0 picks a free one) with the cached
development certificate, until Ctrl-C. ``serve_one`` is the loop docs/architecture.md shows:
it carries out the connection's actions, waits for input or its timer when there are none,
and ends the connection through ``connection_lost`` whatever the client does (a reset, a
close at any moment).
"""

from __future__ import annotations

import contextlib
import datetime
import select
import socket
import sys
import time

import spcore
from spcore.actions import Close, Read, RunJobs, Send, SetTimer, ShutWrite
from spcore.certs import dev_certificate
from spcore.tls import Certificate, ServerTLS


def serve_one(listening: socket.socket, server: spcore.Server) -> None:
    sock, peer = listening.accept()
    now = time.monotonic
    conn = server.accept(server.listeners[0], peer, sock.getsockname(), now())
    reading, timer, error = False, None, None  # what the actions said; how it ended
    try:
        while not isinstance(action := conn.next_action(), Close):
            if isinstance(action, Send):
                conn.sent(sock.sendmsg(action.buffers[:512]), now())
            elif isinstance(action, ShutWrite):
                sock.shutdown(socket.SHUT_WR)
            elif isinstance(action, RunJobs):
                for job in action.jobs:
                    job.run()  # a real driver runs these on worker threads
                    conn.job_done(job, now())
            elif isinstance(action, Read):
                reading = action.on
            elif isinstance(action, SetTimer):
                timer = action.at
            else:  # nothing to do: wait for input (while reading) or for the timer
                wait = None if timer is None else max(0.0, timer - now())
                if select.select([sock] if reading else [], [], [], wait)[0]:
                    conn.receive_data(sock.recv(65536), now())
                else:
                    timer = None  # it fired: disarmed until the next SetTimer
                    conn.on_deadline(now())
    except OSError as exc:  # a reset, or a peer already gone: the connection ends all the same
        error = exc
    sock.close()
    conn.connection_lost(error, now())


def hello(request: spcore.Request) -> spcore.Response:
    return spcore.Response(200, body=f"hello from a blocking loop: {request.path}\n")


def main(argv: list[str]) -> None:
    port = int(argv[0]) if argv else 8443
    pair = dev_certificate(datetime.datetime.now(datetime.timezone.utc))
    tls = ServerTLS(Certificate(pair.certfile, pair.keyfile))
    server = spcore.Server([spcore.http_listener(hello, tls=tls)])
    server.start(time.monotonic(), time.time())
    with socket.create_server(("127.0.0.1", port)) as listening:
        print(f"serving https://127.0.0.1:{listening.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
        try:
            while True:
                with contextlib.suppress(ConnectionAbortedError):  # it left while accepted
                    serve_one(listening, server)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
