"""``spcore serve --tls-engine gnutls`` for real: curl, ``openssl s_client``, ``gnutls-cli`` and
Python's ``ssl`` over TLS 1.2 and 1.3 on every driver, the stapled OCSP response, sessions
resumed by a second process sharing the ticket key file, rotated files picked up while
serving; and ``spcore engines`` and ``spcore ticket-key``."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys

import pytest
from conftest import PKI
from servekit import needs_signals, run_spcore, served, spcore
from test_cli import driver  # noqa: F401

from spcore import cli
from spcore.conformance.clients import program, run_program
from spcore.conformance.harness import wait_until
from spcore.tls.tickets import parse_ticket_key

TIMEOUT = 20.0
VERSIONS = ["1.2", "1.3"]


@pytest.fixture(scope="module")
def ocsp_file(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("ocsp") / "server.ocsp"
    path.write_bytes(pki.ca.ocsp_response(pki.server.certfile, pki.now))
    return path


@pytest.fixture(scope="module")
def key_file(
    env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> pathlib.Path:
    """A ticket key file written by ``spcore ticket-key``."""
    path = tmp_path_factory.mktemp("tickets") / "tickets.key"
    result = subprocess.run(spcore("ticket-key", str(path)), env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    return path


def _gnutls_serve(pki: PKI, ocsp: pathlib.Path, keys: pathlib.Path, *more: str) -> list[str]:
    return [
        "--port", "0", "--tls-engine", "gnutls",
        "--cert", str(pki.server.certfile), "--key", str(pki.server.keyfile),
        "--ocsp-response", str(ocsp), "--ticket-key-file", str(keys), *more,
    ]  # fmt: skip


def _s_client(port: int, pki: PKI, version: str, *args: str) -> list[str]:
    command = [program("openssl"), "s_client", "-connect", f"127.0.0.1:{port}"]
    command += ["-servername", "localhost", "-CAfile", str(pki.ca_file), "-verify_return_error"]
    return [*command, "-tls1_2" if version == "1.2" else "-tls1_3", *args]


REQUEST = b"GET /?format=json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
STATS = b"GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _tls_of(http_output: bytes) -> dict[str, object]:
    """The built-in app's JSON report, from a raw HTTP response in a client's output."""
    body = http_output[http_output.index(b"\r\n\r\n") + 4 :]
    body = body[: body.rindex(b"}") + 1]
    tls: dict[str, object] = json.loads(body)["tls"]
    return tls


@needs_signals
def test_gnutls_engine_serves_real_clients_on_each_driver(
    driver: str,  # noqa: F811
    env: dict[str, str],
    pki: PKI,
    ocsp_file: pathlib.Path,
    key_file: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    curl, gnutls_cli = program("curl"), program("gnutls-cli")
    args = _gnutls_serve(pki, ocsp_file, key_file, "--driver", driver)
    with served(args, env) as server:
        port = server.endpoints[0].port
        for version in VERSIONS:
            expected = f"TLSv{version}"
            limits = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
            page = run_program([
                curl, "-sS", "--cacert", str(pki.ca_file), *limits,
                "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/?format=json",
            ])  # fmt: skip
            assert page.returncode == 0, page.stderr
            tls = json.loads(page.stdout)["tls"]
            assert tls["version"] == expected and tls["cipher"].startswith("TLS_"), tls
            assert tls["server_name"] == "localhost"

            s_client = run_program(
                _s_client(port, pki, version, "-status", "-quiet", "-ign_eof"), REQUEST
            )
            # -quiet drops the handshake report: run again for the status, on the same server.
            status = run_program(_s_client(port, pki, version, "-status"), b"Q\n")
            assert b"OCSP Response Status: successful" in status.stdout, status.stdout
            assert b"Cert Status: good" in status.stdout
            assert _tls_of(s_client.stdout)["version"] == expected

            saved = tmp_path / f"ocsp-{version}.der"
            priority = f"NORMAL:-VERS-ALL:+VERS-TLS{version}"
            cli_run = run_program([
                gnutls_cli, "--x509cafile", str(pki.ca_file), "--port", str(port),
                "--sni-hostname", "localhost", "--verify-hostname", "localhost",
                "--priority", priority, "--ocsp", f"--save-ocsp={saved}", "127.0.0.1",
            ], REQUEST)  # fmt: skip
            assert cli_run.returncode == 0, cli_run.stdout + cli_run.stderr
            assert saved.read_bytes() == ocsp_file.read_bytes()  # the very response we gave
            assert _tls_of(cli_run.stdout)["version"] == expected

            context = pki.client_context(version)  # type: ignore[arg-type]
            connection = http.client.HTTPSConnection("localhost", port, timeout=10, context=context)
            try:
                connection.request("GET", "/?format=json")
                response = connection.getresponse()
                assert response.status == 200
                assert json.loads(response.read())["tls"]["version"] == expected
            finally:
                connection.close()
        assert server.stop() == 0


@needs_signals
@pytest.mark.parametrize("version", VERSIONS)
def test_a_second_process_sharing_the_ticket_key_resumes_the_session(
    env: dict[str, str],
    pki: PKI,
    ocsp_file: pathlib.Path,
    key_file: pathlib.Path,
    tmp_path: pathlib.Path,
    version: str,
) -> None:
    args = _gnutls_serve(pki, ocsp_file, key_file)
    session = tmp_path / "session.pem"
    with served(args, env) as first, served(args, env) as second:
        port_a, port_b = first.endpoints[0].port, second.endpoints[0].port
        made = run_program(
            _s_client(port_a, pki, version, "-sess_out", str(session), "-ign_eof"), REQUEST
        )
        assert b"New, TLSv" in made.stdout and session.stat().st_size > 0, made.stdout
        resumed = run_program(
            _s_client(port_b, pki, version, "-sess_in", str(session), "-ign_eof"), REQUEST
        )
        assert f"Reused, TLSv{version}".encode() in resumed.stdout, resumed.stdout
        assert b"HTTP/1.1 200 OK" in resumed.stdout

        context = pki.client_context(version)  # type: ignore[arg-type]
        python_session = _python_session(port_a, context, None)[0]
        assert _python_session(port_b, context, python_session)[1]

        gnutls_cli = program("gnutls-cli")
        priority = f"NORMAL:-VERS-ALL:+VERS-TLS{version}"
        again = run_program([
            gnutls_cli, "--x509cafile", str(pki.ca_file), "--port", str(port_b),
            "--sni-hostname", "localhost", "--verify-hostname", "localhost",
            "--priority", priority, "--resume", "--waitresumption", "127.0.0.1",
        ], REQUEST + REQUEST)  # fmt: skip
        assert b"This is a resumed session" in again.stdout, again.stdout + again.stderr
        assert first.stop() == 0 and second.stop() == 0


def _python_session(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None, request: bytes = REQUEST
) -> tuple[ssl.SSLSession | None, bool, bytes]:
    """One request with Python's ssl: the session to resume next, whether this one was, and
    the response's body."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), data
        return tls.session, bool(tls.session_reused), data.partition(b"\r\n\r\n")[2]


@needs_signals
def test_workers_get_the_engine_and_resume_each_others_sessions(
    env: dict[str, str], pki: PKI, ocsp_file: pathlib.Path, key_file: pathlib.Path
) -> None:
    """Under ``--workers`` every worker serves with the engine and the files it was given: a
    session made on one worker resumes on the other (SO_REUSEPORT picks the worker of each
    new connection), since both read the one ticket key file."""
    with served([*_gnutls_serve(pki, ocsp_file, key_file), "--workers", "2"], env) as server:
        assert len(server.workers) == 2
        port = server.endpoints[0].port
        context = pki.client_context("1.3")
        session = _python_session(port, context, None)[0]
        resumed_on: set[int] = set()
        for _ in range(200):
            newer, reused, body = _python_session(port, context, session, STATS)
            worker = json.loads(body)["worker"]  # the one SO_REUSEPORT picked
            assert reused, f"worker {worker} did not resume the session"
            session = newer or session
            resumed_on.add(worker)
            if len(resumed_on) == 2:
                break
        assert resumed_on == {0, 1}
        assert server.stop() == 0


def test_the_supervisor_checks_the_tls_files_before_starting_workers(
    env: dict[str, str], pki: PKI, ocsp_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A file the engine cannot use is the supervisor's one-line error: no worker starts."""
    bad = tmp_path / "tickets.key"
    bad.write_text("not a ticket key\n")
    result = run_spcore("serve", *_gnutls_serve(pki, ocsp_file, bad), "--workers", "2", env=env)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("spcore: error: cannot set up TLS: the ticket key file "), line


def _this_update(status_output: bytes) -> bytes:
    match = re.search(rb"This Update: (.*)", status_output)
    assert match, status_output
    return match[1].strip()


@needs_signals
def test_rotated_ocsp_and_ticket_key_files_are_picked_up_while_serving(
    env: dict[str, str],
    pki: PKI,
    tmp_path: pathlib.Path,
) -> None:
    ocsp = tmp_path / "server.ocsp"
    ocsp.write_bytes(pki.ca.ocsp_response(pki.server.certfile, pki.now))
    keys = tmp_path / "tickets.key"
    assert cli.main(["ticket-key", str(keys)]) == 0
    args = _gnutls_serve(pki, ocsp, keys, "--log-level", "info")
    with served(args, env) as server:
        port = server.endpoints[0].port

        def status() -> bytes:
            return run_program(_s_client(port, pki, "1.3", "-status"), b"Q\n").stdout

        before = _this_update(status())
        renewed = tmp_path / "renewed.ocsp"
        renewed.write_bytes(
            pki.ca.ocsp_response(pki.server.certfile, pki.now + datetime.timedelta(hours=2))
        )
        renewed.replace(ocsp)  # as a renewal job would: never half a file
        wait_until(lambda: _this_update(status()) != before, 15.0, "the renewed OCSP response")
        after = _this_update(status())

        context = pki.client_context("1.3")
        session = _python_session(port, context, None)[0]
        assert _python_session(port, context, session)[1]
        assert cli.main(["ticket-key", str(keys)]) == 0  # a new key: old tickets are void
        wait_until(
            lambda: not _python_session(port, context, session)[1], 15.0, "the new ticket key"
        )

        ocsp.write_bytes(b"not an OCSP response")
        wait_until(lambda: "still serving the previous" in server.errors(), 15.0, "the error")
        assert _this_update(status()) == after  # the last good response is still stapled
        assert "new connections use them" in server.errors()
        assert server.stop() == 0


def test_engines_lists_each_engine_with_its_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["engines"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert re.search(r"OpenSSL \d+\.\d+\.\d+\S* .* yes", rows["openssl"]), out
    assert re.search(r"GnuTLS \d+\.\d+\.\d+\s+yes", rows["gnutls"]), out


def test_ticket_key_writes_a_private_key_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tickets.key"
    assert cli.main(["ticket-key", str(path)]) == 0
    first = path.read_bytes()
    assert len(parse_ticket_key(first)) >= 32
    if sys.platform != "win32":
        assert path.stat().st_mode & 0o777 == 0o600
    assert cli.main(["ticket-key", str(path)]) == 0
    assert parse_ticket_key(path.read_bytes()) != parse_ticket_key(first)
    assert not [p for p in tmp_path.iterdir() if p.name != "tickets.key"]  # no temporary left


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["--ocsp-response", "{ocsp}"], "the openssl engine cannot staple OCSP responses"),
        (["--ticket-key-file", "{keys}"], "the openssl engine cannot take session-ticket keys"),
        (["--tls-engine", "gnutls", "--ocsp-response", "{missing}"], "does not exist"),
        (["--tls-engine", "gnutls", "--ticket-key-file", "{ocsp}"], "is unusable"),
        (["--tls-engine", "gnutls", "--ocsp-response", "{keys}"], "cannot staple"),
        (["--no-tls", "--ocsp-response", "{ocsp}"], "--no-tls cannot be combined"),
        (["--tls-engine", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_tls_engine_mistakes_are_one_line_errors(
    capsys: pytest.CaptureFixture[str],
    pki: PKI,
    ocsp_file: pathlib.Path,
    key_file: pathlib.Path,
    tmp_path: pathlib.Path,
    args: list[str],
    mention: str,
) -> None:
    values = {"ocsp": ocsp_file, "keys": key_file, "missing": tmp_path / "missing.der"}
    certificate = ["--cert", str(pki.server.certfile), "--key", str(pki.server.keyfile)]
    if "--no-tls" in args:
        certificate = []
    argv = ["serve", "--port", "0", *certificate, *(a.format(**values) for a in args)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spcore: error: ") and err.count("\n") == 1, err
    assert mention in err, err


def test_no_core_module_outside_the_openssl_engine_imports_ssl() -> None:
    """The OpenSSL engine, and the conformance package's stdlib test clients and peers (the
    servers outbound connections reach) may; nothing else."""
    import ast

    import spcore

    root = pathlib.Path(spcore.__file__).parent
    allowed = {
        root / "tls" / "openssl.py",
        root / "tls" / "openssl_context.py",
        root / "conformance" / "clients.py",
        root / "conformance" / "peers.py",
    }
    clients = [root / "conformance" / "scenarios", root / "conformance" / "engine_scenarios"]
    offenders = []
    for path in root.rglob("*.py"):
        if path in allowed or any(path.is_relative_to(c) for c in clients):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name == "ssl" or name.startswith("ssl.") for name in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
    code = "import sys, spcore, spcore.cli_tls, spcore.tls.gnutls; print('ssl' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ
    )
    assert result.stdout.strip() == "False", result.stderr
