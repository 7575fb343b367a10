"""SIGHUP reloads the TLS files of a running ``spcore serve``: new connections get the new
certificate, connections already open go on with theirs, and a file that cannot be used
leaves the previous one serving; with workers, every worker reloads."""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import shutil
import signal
import ssl
from collections.abc import Iterator

import pytest
from conftest import PKI
from netkit import wait_for
from servekit import Endpoint, Served, needs_signals, served

pytestmark = needs_signals

#: Long enough for a signal to be handled and the files read on a busy machine.
WAIT = 20.0
LOCALHOST = ["localhost", "127.0.0.1", "::1"]


class Files:
    """The certificate and key files a server is given, replaced in place like a renewal."""

    def __init__(self, pki: PKI, directory: pathlib.Path) -> None:
        self.pki = pki
        self.directory = directory
        self.cert = directory / "cert.pem"
        self.key = directory / "key.pem"
        self.renewals = 0

    def renew(self) -> int:
        """Issue a new certificate into the files; its serial number."""
        self.renewals += 1
        pair = self.pki.ca.issue(self.directory, f"n{self.renewals}", LOCALHOST, self.pki.now)
        shutil.copyfile(pair.certfile, self.cert)
        shutil.copyfile(pair.keyfile, self.key)
        return serial_of(pair.certfile)

    def args(self) -> list[str]:
        return ["--cert", str(self.cert), "--key", str(self.key), "--log-level", "info"]


def serial_of(certfile: pathlib.Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(certfile.read_bytes()).serial_number


def serial_of_der(der: bytes) -> int:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def connect(endpoint: Endpoint, pki: PKI) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection(
        endpoint.host, endpoint.port, timeout=10, context=pki.client_context()
    )
    conn.connect()
    return conn


def serial(conn: http.client.HTTPSConnection) -> int:
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return serial_of_der(der)


def request(conn: http.client.HTTPConnection, path: str = "/") -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


@contextlib.contextmanager
def serving(
    pki: PKI, directory: pathlib.Path, env: dict[str, str], *more: str
) -> Iterator[tuple[Files, Served, Endpoint, int]]:
    """``spcore serve`` on a certificate just issued: the files, the server, its HTTPS
    endpoint and the certificate's serial number."""
    files = Files(pki, directory)
    old = files.renew()
    with served(["--port", "0", *more, *files.args()], env) as server:
        yield files, server, server.endpoint("https"), old


def reloaded(errors: str, where: str) -> int:
    return errors.count(f"SIGHUP: {where}: TLS files reloaded")


def test_sighup_gives_new_connections_the_new_certificate_and_open_ones_go_on(
    pki: PKI, tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    with serving(pki, tmp_path, env) as (files, server, endpoint, old):
        where = f"127.0.0.1:{endpoint.port}"
        kept = connect(endpoint, pki)
        assert request(kept) == 200 and serial(kept) == old
        new = files.renew()
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloaded(server.errors(), where) == 1, "the reload", WAIT)
        fresh = connect(endpoint, pki)
        assert serial(fresh) == new != old
        assert request(fresh) == 200
        # The keep-alive connection opened before goes on, with its certificate.
        assert request(kept) == 200 and serial(kept) == old
        kept.close()
        fresh.close()
        assert server.stop() == 0


def test_a_bad_new_file_is_one_log_line_and_the_old_certificate_stays(
    pki: PKI, tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    with serving(pki, tmp_path, env) as (files, server, endpoint, old):
        files.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        server.proc.send_signal(signal.SIGHUP)
        what = f"SIGHUP: 127.0.0.1:{endpoint.port}: unusable, still serving the previous"
        wait_for(lambda: what in server.errors(), "the failed reload's line", WAIT)
        lines = [line for line in server.errors().splitlines() if "SIGHUP" in line]
        assert len(lines) == 1 and " ERROR " in lines[0], lines
        assert "Traceback" not in server.errors()
        conn = connect(endpoint, pki)
        assert serial(conn) == old and request(conn) == 200
        conn.close()
        assert server.proc.poll() is None
        assert server.stop() == 0


def test_with_two_workers_each_reloads(
    pki: PKI, tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    from test_workers import workers_answering

    with serving(pki, tmp_path, env, "--workers", "2") as (files, server, endpoint, _):
        where = f"127.0.0.1:{endpoint.port}"
        new = files.renew()
        server.proc.send_signal(signal.SIGHUP)
        for index, pid in enumerate(server.workers):
            line = f"[worker {index}, pid {pid}]: SIGHUP: {where}: TLS files reloaded"
            wait_for(lambda line=line: line in server.errors(), f"worker {index}'s reload", WAIT)
        context = pki.client_context()
        assert set(workers_answering(endpoint, context)) == set(server.workers)
        for _ in range(10):  # connections spread over both workers: each has the new one
            conn = connect(endpoint, pki)
            assert serial(conn) == new
            conn.close()
        assert server.stop() == 0


@pytest.mark.parametrize("option", ["--no-tls"])
def test_sighup_without_tls_says_there_is_nothing_to_reload(
    option: str, env: dict[str, str]
) -> None:
    with served(["--port", "0", option], env) as server:
        server.proc.send_signal(signal.SIGHUP)
        line = "SIGHUP: no TLS listener, nothing to reload"
        wait_for(lambda: line in server.errors(), "the line", WAIT)
        assert server.proc.poll() is None
        assert server.stop() == 0
