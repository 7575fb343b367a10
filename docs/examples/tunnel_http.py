"""spcore's tunnel in front of a plain HTTP server: HTTPS in, plain HTTP out (terminate).

    python docs/examples/tunnel_http.py [PORT]

starts Python's own ``http.server`` on a free port of 127.0.0.1, plain HTTP, and in front
of it the tunnel, on 127.0.0.1 (port 8443 unless given; 0 picks a free one) with the
cached development certificate, until Ctrl-C. ``curl -k https://127.0.0.1:8443/`` reaches
the plain server through it. From the command line the same is::

    spcore tunnel --accept 127.0.0.1:8443 --connect 127.0.0.1:8000
"""

from __future__ import annotations

import datetime
import http.server
import signal
import sys
import threading

import spcore
import spcore.drivers
from spcore.certs import dev_certificate
from spcore.tls import Certificate, ServerTLS
from spcore.tunnel import Tunnel


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from a plain HTTP server, path {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


class Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away mid-request (through the tunnel): nothing to report


def main(argv: list[str]) -> None:
    backend = Backend(("127.0.0.1", 0), Hello)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    pair = dev_certificate(datetime.datetime.now(datetime.timezone.utc))
    tls = ServerTLS(Certificate(pair.certfile, pair.keyfile))  # ALPN: http/1.1
    tunnel = Tunnel(spcore.Remote("127.0.0.1", backend.server_address[1]))
    port = int(argv[0]) if argv else 8443
    server = spcore.Server([tunnel.listener(port=port, tls=tls)])
    driver = spcore.drivers.choose("auto")(server)
    port = driver.bind()[0].address[1]
    signal.signal(signal.SIGINT, lambda *_: driver.stop())
    print(
        f"tunnel from https://127.0.0.1:{port}/ to http://127.0.0.1:{backend.server_address[1]}/"
        f" with the {driver.name} driver",
        flush=True,
    )
    try:
        driver.run()
    finally:
        backend.shutdown()
        backend.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
