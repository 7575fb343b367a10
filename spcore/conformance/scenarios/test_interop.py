"""Real clients against the driver: curl, openssl s_client, gnutls-cli and Python's
http.client. A client that is not installed skips its scenarios, naming the program."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import pathlib
import subprocess
import tempfile
import time
from collections.abc import Sequence

from spcore.conformance.apps import still_serving, suite_app
from spcore.conformance.clients import pattern, program, run_program
from spcore.conformance.harness import PKI, Serve, Served, Transport, tls_version, transports

TLS_VERSIONS = transports("tls1.2", "tls1.3")
GET_AND_CLOSE = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
TIMEOUT = 20.0


def _interact(command: Sequence[str], steps: Sequence[tuple[float, bytes]]) -> bytes:
    """Run an interactive client, writing each step's bytes after its delay, and keep its
    stdin open until it exits: the server closing the connection must end it (closing stdin
    would make some clients quit before the response arrives)."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT
        )
        assert process.stdin is not None
        try:
            for delay, data in steps:
                time.sleep(delay)
                try:
                    process.stdin.write(data)
                    process.stdin.flush()
                except BrokenPipeError:
                    break  # the client has already ended
            process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        output.seek(0)
        return output.read()


# --- curl ----------------------------------------------------------------------------------


def _curl(served: Served, pki: PKI, *args: str) -> subprocess.CompletedProcess[bytes]:
    curl = program("curl")
    scheme = "http" if served.transport == "plain" else "https"
    version = {"plain": [], "tls1.2": ["--tlsv1.2", "--tls-max", "1.2"], "tls1.3": ["--tlsv1.3"]}
    url_args = [a.replace("URL", f"{scheme}://127.0.0.1:{served.port}") for a in args]
    command = [curl, "-sS", "--cacert", str(pki.ca_file), *version[served.transport], *url_args]
    return run_program(command)


@transports("plain", "tls1.2", "tls1.3")
def test_curl_get(serve: Serve, pki: PKI, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        result = _curl(served, pki, "-w", r"\n%{http_version} %{ssl_verify_result}", "URL/hello")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"Hello, world!\n1.1 0"


@transports("plain", "tls1.3")
def test_curl_upload_and_download(
    serve: Serve, pki: PKI, transport: Transport, tmp_path: pathlib.Path
) -> None:
    body = pattern(11, 3_000_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    with serve(suite_app, transport=transport) as served:
        # curl sends "Expect: 100-continue" for a body this large.
        result = _curl(served, pki, "-T", str(upload), "URL/sha256")
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == f"{hashlib.sha256(body).hexdigest()} {len(body)}"
        result = _curl(served, pki, "URL/pattern?n=3000000", "URL/chunked?n=100000")
        assert result.returncode == 0, result.stderr
        assert result.stdout == pattern(0, 3_000_000) + pattern(0, 100_000)


# --- openssl s_client ----------------------------------------------------------------------


def _s_client(served: Served, pki: PKI, *args: str) -> list[str]:
    openssl = program("openssl")
    version = "-tls1_2" if served.transport == "tls1.2" else "-tls1_3"
    return [
        openssl,
        "s_client",
        "-connect",
        f"127.0.0.1:{served.port}",
        "-servername",
        "localhost",
        "-CAfile",
        str(pki.ca_file),
        "-verify_return_error",
        version,
        *args,
    ]


@TLS_VERSIONS
def test_openssl_s_client_get(serve: Serve, pki: PKI, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        output = _interact(_s_client(served, pki, "-quiet"), [(0, GET_AND_CLOSE)])
        assert b"HTTP/1.1 200 OK" in output, output
        assert output.endswith(b"Hello, world!"), output
        still_serving(served)


@transports("tls1.2")
def test_openssl_s_client_renegotiation_refused(
    serve: Serve, pki: PKI, transport: Transport
) -> None:
    """A TLS 1.2 client asking to renegotiate is refused; nobody hangs, the server goes on."""
    with serve(suite_app, transport=transport) as served:
        # s_client's "R" command renegotiates; a later request may or may not get through.
        steps = [(0.5, b"R\n"), (0.5, GET_AND_CLOSE)]
        output = _interact(_s_client(served, pki), steps)
        assert b"RENEGOTIATING" in output, output
        assert b"no renegotiation" in output, output  # the server's alert reached it
        still_serving(served)


@transports("tls1.3")
def test_openssl_s_client_key_update(serve: Serve, pki: PKI, transport: Transport) -> None:
    """TLS 1.3 KeyUpdate (asking the server to update too), then a request on the new keys."""
    with serve(suite_app, transport=transport) as served:
        # s_client's "K" command sends a KeyUpdate asking the server to update its keys too.
        output = _interact(_s_client(served, pki), [(0.5, b"K\n"), (0.3, GET_AND_CLOSE)])
        assert b"KEYUPDATE" in output, output
        assert b"HTTP/1.1 200 OK" in output and b"Hello, world!" in output, output
        still_serving(served)


# --- gnutls-cli ----------------------------------------------------------------------------


@TLS_VERSIONS
def test_gnutls_cli_get(serve: Serve, pki: PKI, transport: Transport) -> None:
    gnutls = program("gnutls-cli")
    priority = (
        "NORMAL:-VERS-ALL:+VERS-TLS1.2"
        if transport == "tls1.2"
        else "NORMAL:-VERS-ALL:+VERS-TLS1.3"
    )
    with serve(suite_app, transport=transport) as served:
        command = [
            gnutls,
            "--x509cafile",
            str(pki.ca_file),
            "--port",
            str(served.port),
            "--sni-hostname",
            "localhost",
            "--verify-hostname",
            "localhost",
            "--priority",
            priority,
            "127.0.0.1",
        ]
        output = _interact(command, [(0, GET_AND_CLOSE)])
        assert b"HTTP/1.1 200 OK" in output, output
        assert b"Hello, world!" in output, output
        still_serving(served)


# --- Python's http.client ------------------------------------------------------------------


@transports("plain", "tls1.2", "tls1.3")
def test_python_http_client(serve: Serve, pki: PKI, transport: Transport) -> None:
    with serve(suite_app, transport=transport) as served:
        connection: http.client.HTTPConnection
        if transport == "plain":
            connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        else:
            context = pki.client_context(tls_version(transport))
            connection = http.client.HTTPSConnection(
                "127.0.0.1", served.port, timeout=10, context=context
            )
        try:
            connection.request("GET", "/hello")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"Hello, world!")
            pieces = [pattern(i * 5000, 5000) for i in range(40)]
            connection.request("POST", "/echo", body=iter(pieces), encode_chunked=True)
            response = connection.getresponse()
            assert response.read() == b"".join(pieces)
            connection.request("GET", "/pattern?n=1000000")
            assert connection.getresponse().read() == pattern(0, 1_000_000)
        finally:
            connection.close()
        assert served.server.stats.connections_total == 1
