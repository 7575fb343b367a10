"""Driving a TLS engine from a plain blocking socket: one HTTPS request (docs/tls-engine.md).

Run it against ``spcore serve``: ``python3 docs/examples/tls_client.py 127.0.0.1 8443 CA.pem``.
"""

from __future__ import annotations

import socket
import sys

from spcore.tls import ApplicationData, ClientContext, ClientTLS, CloseNotify, RaggedEOF


def fetch(host: str, port: int, ca_file: str, engine: str = "openssl") -> bytes:
    tls = ClientContext(ClientTLS(trust=ca_file), engine).new_engine("localhost")
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    tls.send(request)  # queued until the handshake completes
    tls.start()
    received = b""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(tls.data_to_send())  # the ClientHello
        while True:
            data = sock.recv(65536)
            try:
                events = tls.receive_data(data)  # b"" at EOF
            finally:
                sock.sendall(tls.data_to_send())  # handshake, the request, alerts: always
            for event in events:
                if isinstance(event, ApplicationData):
                    received += event.data
                elif isinstance(event, (CloseNotify, RaggedEOF)):
                    return received
            if not data:
                return received


if __name__ == "__main__":
    host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(fetch(host, port, ca, *sys.argv[4:5]).decode(errors="replace"))
