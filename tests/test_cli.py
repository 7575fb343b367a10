"""The ``spcore`` command, run for real as subprocesses on loopback ports."""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import PKI
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from netkit import wait_for
from servekit import (
    cpu_seconds,
    get,
    needs_signals,
    served,
    slow_request,
    spcore,
    tls_client,
)

from spcore import cli
from spcore.drivers import DRIVERS
from spcore.http.codecs import available_codecs


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- serving ---------------------------------------------------------------------------------------


#: The source checkout: the README's first command runs ``python3 -m spcore`` in its root,
#: where the checkout's ``spcore/`` comes first on sys.path, before the installed copy.
CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


@needs_signals
@pytest.mark.parametrize("where", ["elsewhere", "checkout"])
def test_serve_prints_its_url_and_serves_the_builtin_page(
    env: dict[str, str], cache_dir: pathlib.Path, where: str
) -> None:
    cwd = CHECKOUT if where == "checkout" else None
    with served(["--port", "0"], env, cwd=cwd) as server:
        assert [e.scheme for e in server.endpoints] == ["https"]
        endpoint = server.endpoints[0]
        assert endpoint.host == "127.0.0.1" and endpoint.port > 0
        assert server.rest == f" (certificate: {cache_dir / 'dev-cert.pem'})"
        assert server.codec == available_codecs()[0]  # auto: httptools when installed
        status, body = get(endpoint, "/?format=json", tls_client(cache_dir))
        assert status == 200
        info = json.loads(body)
        assert info["driver"] == server.driver
        assert info["tls"]["version"].startswith("TLSv1.")
        assert info["tls"]["alpn"] == "http/1.1"
        status, page = get(endpoint, "/", tls_client(cache_dir))  # (curl: the interop tests)
        assert status == 200 and b"<h1>spcore</h1>" in page
        assert f"<td>{server.driver}</td>".encode() in page
        assert server.stop() == 0


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest) -> str:
    """Each registered driver; one that cannot run here is skipped, saying why."""
    name: str = request.param
    available, reason = DRIVERS[name].probe()
    if not available:
        pytest.skip(f"{name}: {reason}")
    return name


@needs_signals
def test_serve_with_each_driver_and_codec_gives_curl_the_page_over_tls(
    driver: str, http_codec: str, env: dict[str, str]
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    with served(["--port", "0", "--driver", driver, "--http", http_codec], env) as server:
        assert (server.driver, server.codec) == (driver, http_codec)
        url = f"https://127.0.0.1:{server.endpoints[0].port}/"
        fetch = [curl, "-sSk", "--max-time", "10", "-w", " HTTP/%{http_version}"]
        page = subprocess.run([*fetch, url], capture_output=True, timeout=15)
        assert page.returncode == 0, page.stderr
        assert b"<h1>spcore</h1>" in page.stdout
        assert f"<td>{driver}</td>".encode() in page.stdout
        assert page.stdout.endswith(b" HTTP/1.1")
        upload = [*fetch, "--data-binary", "@-", "-H", "Transfer-Encoding: chunked", url + "echo"]
        echo = subprocess.run(upload, input=b"x" * 100_000, capture_output=True, timeout=15)
        assert echo.returncode == 0, echo.stderr
        assert echo.stdout == b"x" * 100_000 + b" HTTP/1.1"
        assert server.stop() == 0


@needs_signals
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads CPU time from /proc")
def test_out_of_descriptors_the_server_pauses_accepting_without_spinning(
    driver: str, env: dict[str, str]
) -> None:
    args = ["--port", "0", "--no-tls", "--line-echo", "--driver", driver]
    with served(args, env, max_files=64) as server:
        port = server.endpoints[0].port
        clients = []
        try:
            for _ in range(80):  # more than the server has descriptors for
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            time.sleep(0.3)  # the server takes what it can, then runs out
            before = cpu_seconds(server.proc.pid)
            time.sleep(1.0)
            used = cpu_seconds(server.proc.pid) - before
            assert used < 0.5, f"{used:.2f} s of CPU in 1 s while out of descriptors"
            for client in clients[:40]:
                client.close()
            last = clients[-1]  # waited in the backlog: served once descriptors are free
            last.sendall(b"still there\n")
            assert last.recv(100) == b"still there\r\n"
        finally:
            for client in clients:
                client.close()
        assert server.stop() == 0


@needs_signals
def test_serve_without_tls_behind_a_proxy(env: dict[str, str]) -> None:
    args = ["--port", "0", "--no-tls", "--proxy-protocol", "--timeout", "3"]
    with served(args, env) as server:
        [endpoint] = server.endpoints
        assert endpoint.scheme == "http"
        assert server.rest == ""  # no certificate to mention
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
            sock.sendall(
                b"PROXY TCP4 192.0.2.7 192.0.2.1 4321 80\r\n"
                b"GET /?format=json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        info = json.loads(body)
        assert info["client"] == ["192.0.2.7", 4321]  # from the PROXY header
        assert info["scheme"] == "http"
        assert server.stop() == 0


@needs_signals
def test_plain_port_beside_tls_on_two_hosts(
    env: dict[str, str], cache_dir: pathlib.Path, pki: PKI
) -> None:
    """127.0.0.1 and ::1 (where IPv6 works), each with a TLS and a plain HTTP listener; the
    TLS ones take client certificates."""
    hosts = ["127.0.0.1", "::1"] if _has_ipv6() else ["127.0.0.1"]
    args = ["--port", "0", "--plain-port", "0"]
    for host in hosts:
        args += ["--host", host]
    args += ["--client-ca", str(pki.ca_file), "--client-cert", "optional"]
    client = tls_client(cache_dir)
    client.load_cert_chain(pki.client.certfile, pki.client.keyfile)
    with served(args, env) as server:
        assert sorted((e.host, e.scheme) for e in server.endpoints) == sorted(
            (host, scheme) for host in hosts for scheme in ("http", "https")
        )
        if "::1" in hosts:
            assert "https://[::1]:" in server.line and "http://[::1]:" in server.line
        for endpoint in server.endpoints:
            status, body = get(endpoint, "/?format=json", client)
            assert status == 200
            info = json.loads(body)
            assert info["scheme"] == endpoint.scheme
            assert info["client"][0] == endpoint.host
            if endpoint.scheme == "https":
                assert info["tls"]["client_certificate"] is True
        assert server.stop() == 0


@needs_signals
def test_sigterm_lets_the_request_in_flight_finish(
    env: dict[str, str], cache_dir: pathlib.Path, slow_app: pathlib.Path
) -> None:
    with served(["--port", "0", "--app", "slowapp:app"], env, cwd=slow_app) as server:
        [endpoint] = server.endpoints
        context = tls_client(cache_dir)
        idle = context.wrap_socket(
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=10),
            server_hostname="127.0.0.1",
        )
        busy = slow_request(endpoint.port, slow_app, 5, context)
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert idle.recv(100) == b""  # the idle keep-alive connection is closed at once
        idle.close()  # (else the server waits close_timeout for our side to close)
        response = busy.getresponse()
        assert response.status == 200
        assert response.read() == b"0123456789" * 5
        busy.close()  # (the server would otherwise wait close_timeout for our EOF)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - stopped_at < 10  # within the default grace period


@needs_signals
def test_a_second_signal_exits_at_once(
    env: dict[str, str], cache_dir: pathlib.Path, slow_app: pathlib.Path
) -> None:
    with served(["--port", "0", "--app", "slowapp:app"], env, cwd=slow_app) as server:
        [endpoint] = server.endpoints
        context = tls_client(cache_dir)
        busy = slow_request(endpoint.port, slow_app, 300, context)  # 30 s: far beyond this test
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in server.errors(), "the first signal to be handled", 10.0)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(5) == 1
        assert "exiting at once" in server.errors()
        busy.close()


@needs_signals
def test_line_echo(env: dict[str, str], cache_dir: pathlib.Path) -> None:
    args = ["--port", "0", "--line-echo", "--driver", "asyncio", "--loop", "default"]
    with served(args, env) as server:
        assert server.driver == "asyncio"
        [endpoint] = server.endpoints
        assert endpoint.scheme == "tls"
        raw = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
        context = tls_client(cache_dir)
        context.set_alpn_protocols([])
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"hello\n")
            assert sock.recv(100) == b"hello\r\n"
            sock.sendall(b"quit\n")
            assert sock.recv(100) == b"bye\r\n"
            assert sock.recv(100) == b""
        assert server.stop() == 0


# -- spcore drivers, spcore conformance ----------------------------------------------------------


def test_drivers_lists_selectors_as_available(env: dict[str, str]) -> None:
    result = subprocess.run(spcore("drivers"), capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "model", "available", "reason"]
    assert any(re.match(r"selectors\s+readiness \(selectors\)\s+yes\s+\S", line) for line in lines)
    assert re.search(r"^auto picks: \w+$", result.stdout, re.MULTILINE)


def test_conformance_passes_drivers_and_pytest_args(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the suite itself is another module; this checks the command's plumbing."""
    import spcore.conformance

    calls: list[tuple[list[str] | None, list[str]]] = []

    def fake_run(drivers: list[str] | None, pytest_args: list[str]) -> int:
        calls.append((drivers, pytest_args))
        return 3

    monkeypatch.setattr(spcore.conformance, "run", fake_run, raising=False)
    assert cli.main(["conformance", "--driver", "selectors", "-k", "tls", "--", "-x"]) == 3
    assert cli.main(["conformance", "-q"]) == 3
    assert cli.main(["conformance", "--driver", "all"]) == 3
    assert cli.main(["conformance", "--driver", "asyncio", "--driver", "mine.io:factory"]) == 3
    assert calls == [
        (["selectors"], ["-k", "tls", "-x"]),
        (None, ["-q"]),
        (None, []),
        (["asyncio", "mine.io:factory"], []),
    ]
    assert cli.main(["conformance", "--driver", "nope"]) == 2
    assert len(calls) == 4


# -- user errors: one line on stderr, status 2 -----------------------------------------------------

_CANNOT_RUN = "uring" if sys.platform == "win32" else "iocp"

#: Run as real subprocesses: (case id, arguments after ``spcore``, what the message mentions).
USER_ERRORS = [
    ("port not a number", ["serve", "--port", "abc"], "'abc' is not a port number"),
    ("port out of range", ["serve", "--port", "70000"], "out of range"),
    ("port in use", ["serve", "--port", "{busy}"], "already in use"),
    ("metrics port in use", ["serve", "--port", "0", "--metrics-port", "{busy}"], "(metrics)"),
    ("address not here", ["serve", "--host", "192.0.2.1", "--port", "0"], "not available"),
    ("cert only", ["serve", "--cert", "{cert}"], "both --cert and --key"),
    ("cert missing", ["serve", "--cert", "{missing}", "--key", "{key}"], "does not exist"),
    ("cert key mismatch", ["serve", "--cert", "{cert}", "--key", "{other_key}"], "does not match"),
    ("unknown driver", ["serve", "--driver", "nope"], "unknown driver 'nope'"),
    ("driver cannot run", ["serve", "--driver", _CANNOT_RUN], "cannot run here"),
    ("app import fails", ["serve", "--app", "brokenapp:app"], "ZeroDivisionError"),
    ("timeout not a number", ["serve", "--timeout", "soon"], "not a number of seconds"),
]

#: The same checks, run in-process with ``cli.main`` to keep the suite fast.
MORE_USER_ERRORS = [
    ("no command", [], "name a command"),
    ("unknown option", ["serve", "--nope"], "unrecognized arguments: --nope"),
    ("plain port bad", ["serve", "--plain-port", "-1"], "out of range"),
    ("plain port equals port", ["serve", "--port", "8443", "--plain-port", "8443"], "two ports"),
    ("key only", ["serve", "--key", "{key}"], "both --cert and --key"),
    ("no-tls with cert", ["serve", "--no-tls", "--cert", "{cert}", "--key", "{key}"], "--no-tls"),
    ("no-tls with plain port", ["serve", "--no-tls", "--plain-port", "0"], "--no-tls"),
    ("client cert without CA", ["serve", "--client-cert", "required"], "needs --client-ca"),
    ("client CA missing", ["serve", "--client-ca", "{missing}"], "does not exist"),
    ("client CA not a CA", ["serve", "--client-ca", "{key}"], "cannot set up TLS"),
    (
        "weak cert with a client CA",  # the error names the certificate, not the CA file
        ["serve", "--cert", "{weak_cert}", "--key", "{weak_key}", "--client-ca", "{ca}"],
        "certificate file {weak_cert} with its key: ",
    ),
    ("loop for selectors", ["serve", "--driver", "selectors", "--loop", "uvloop"], "--loop"),
    ("app not module:callable", ["serve", "--app", "nocolon"], "MODULE:ATTRIBUTE"),
    ("app module missing", ["serve", "--app", "no_such_module_xyz:app"], "no module"),
    ("app attribute missing", ["serve", "--app", "json:no_such_name"], "no attribute"),
    ("app not callable", ["serve", "--app", "cli_notcallable:app"], "not a callable"),
    ("app has a syntax error", ["serve", "--app", "cli_syntax:app"], "SyntaxError"),
    ("app exits on import", ["serve", "--app", "cli_exits:app"], "SystemExit"),
    ("host malformed", ["serve", "--host", "127.0.0.1..1", "--port", "0"], "invalid host name"),
    ("app and line echo", ["serve", "--app", "json:loads", "--line-echo"], "exclude"),
    ("unknown codec", ["serve", "--http", "h2"], "invalid choice"),
    ("codec for line echo", ["serve", "--http", "h11", "--line-echo"], "applies to HTTP"),
    ("timeout zero", ["serve", "--timeout", "0"], "greater than 0"),
    ("timeout infinite", ["serve", "--timeout", "inf"], "greater than 0"),
    ("max connections zero", ["serve", "--max-connections", "0"], "at least 1"),
    ("bad log level", ["serve", "--log-level", "loud"], "invalid choice"),
    ("workers negative", ["serve", "--workers", "-1"], "0 or auto for one per CPU"),
    ("workers not a number", ["serve", "--workers", "many"], "not a number of workers"),
    ("balance without workers", ["serve", "--balance", "shared"], "applies to --workers"),
    ("fd not a number", ["serve", "--fd", "three"], "not a file descriptor number"),
    ("uds mode not octal", ["serve", "--uds-mode", "9"], "octal mode"),
    ("uds mode too wide", ["serve", "--uds-mode", "1777"], "0 to 777"),
    ("uds directory missing", ["serve", "--uds", "{missing}.d/s"], "cannot listen on unix:"),
    ("conformance driver", ["conformance", "--driver", "nope"], "unknown driver"),
    ("conformance all and more", ["conformance", "--driver", "all", "--driver", "x"], "all"),
]


def _weak_certificate(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed RSA-1024 certificate: well formed, refused by OpenSSL's security level."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "weak-cert.pem", directory / "weak-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def error_values(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Values for the cases' placeholders; ``cwd`` holds the broken apps."""
    cwd = tmp_path_factory.mktemp("apps")
    (cwd / "brokenapp.py").write_text("1 / 0\n")
    (cwd / "cli_notcallable.py").write_text("app = 3\n")
    (cwd / "cli_syntax.py").write_text("def app(:\n")
    (cwd / "cli_exits.py").write_text("raise SystemExit(0)\n")
    weak_cert, weak_key = _weak_certificate(cwd)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {
            "cwd": str(cwd),
            "busy": str(busy.getsockname()[1]),
            "cert": str(pki.server.certfile),
            "key": str(pki.server.keyfile),
            "other_key": str(pki.other.keyfile),
            "missing": str(cwd / "missing.pem"),
            "weak_cert": str(weak_cert),
            "weak_key": str(weak_key),
            "ca": str(pki.ca_file),
        }


@pytest.fixture(scope="module")
def user_error_results(
    env: dict[str, str], error_values: dict[str, str]
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every subprocess case at once: interpreter start-up dominates each one."""
    procs = {}
    try:
        for case, args, _ in USER_ERRORS:
            argv = spcore(*(arg.format(**error_values) for arg in args))
            procs[case] = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=error_values["cwd"],
            )
        results = {}
        for case, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            results[case] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(("case", "mention"), [(c, m) for c, _, m in USER_ERRORS])
def test_user_errors_are_one_line_and_status_2(
    user_error_results: dict[str, subprocess.CompletedProcess[str]], case: str, mention: str
) -> None:
    result = user_error_results[case]
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spcore: error: ")
    assert "Traceback" not in result.stderr
    assert mention in lines[0]


@pytest.mark.parametrize(("args", "mention"), [(a, m) for _, a, m in MORE_USER_ERRORS])
def test_more_user_errors_in_process(
    args: list[str],
    mention: str,
    error_values: dict[str, str],
    cache_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPCORE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(error_values["cwd"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # --app may add the directory
    for name in ("cli_notcallable", "cli_syntax", "cli_exits"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    def serve_instead_of_failing(driver: object) -> None:
        raise AssertionError("this command should have failed before serving")

    monkeypatch.setattr(cli, "_stop_on_signals", serve_instead_of_failing)
    assert cli.main([arg.format(**error_values) for arg in args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("spcore: error: ")
    assert mention.format(**error_values) in err
