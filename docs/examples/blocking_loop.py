"""The whole spcore stack driven by a plain blocking socket loop, one connection at a time."""

import socket
import time

import spcore


def serve_one(listening: socket.socket, server: spcore.Server) -> None:
    sock, peer = listening.accept()
    now = time.monotonic
    conn = server.accept(server.listeners[0], peer, sock.getsockname(), now())
    while not conn.should_close:
        if out := conn.outgoing():
            conn.sent(sock.sendmsg(out), now())
        elif conn.write_eof:
            sock.shutdown(socket.SHUT_WR)
            conn.write_eof_done(now())
        elif jobs := conn.take_jobs():
            for job in jobs:
                job.run()  # a real driver runs these on worker threads
                conn.job_done(job, now())
        else:
            deadline = conn.deadline
            sock.settimeout(None if deadline is None else max(0.0, deadline - now()))
            try:
                conn.receive_data(sock.recv(65536), now())
            except TimeoutError:
                conn.on_deadline(now())
    sock.close()
    conn.connection_lost(None, now())
