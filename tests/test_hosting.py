"""``spcore serve --app`` with the applications people have: Flask (WSGI) and Starlette (ASGI,
with a WebSocket route), those of docs/examples, on every driver, over TLS and plain HTTP,
with curl and the websockets client; and what is told at start: the interface named in the
start line, or a one-line error (exit status 2), or a failed startup (exit status 3)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess

import pytest
from servekit import Endpoint, needs_signals, run_spcore, served, spcore

from spcore.drivers import DRIVERS

websockets = pytest.importorskip("websockets.sync.client")
pytest.importorskip("flask")
pytest.importorskip("starlette")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"
UPLOAD = os.urandom(3 * 1024 * 1024)
UPLOADED = f"{hashlib.sha256(UPLOAD).hexdigest()} {len(UPLOAD)}\n"
COUNT = "1\n2\n3\n4\n5\n"

#: The Flask example, checked by wsgiref.validate (which hides its arguments: --interface).
VALIDATED_FLASK = """
import wsgiref.validate
from flask_app import app as flask_app

app = wsgiref.validate.validator(flask_app)
"""


def drivers() -> list[str]:
    return [name for name, spec in DRIVERS.items() if spec.probe()[0]]


@pytest.fixture
def app_env(env: dict[str, str], tmp_path: pathlib.Path) -> dict[str, str]:
    """The examples importable, beside the modules a test writes into ``tmp_path``."""
    (tmp_path / "validated_flask.py").write_text(VALIDATED_FLASK)
    path = os.pathsep.join([str(EXAMPLES), str(tmp_path), env.get("PYTHONPATH", "")])
    return {**env, "PYTHONPATH": path}


def curl(endpoint: Endpoint, path: str, cafile: pathlib.Path, *extra: str) -> str:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    url = f"{endpoint.scheme}://{endpoint.host}:{endpoint.port}{path}"
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "20", "--cacert", str(cafile), url, *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def upload(endpoint: Endpoint, cafile: pathlib.Path, tmp_path: pathlib.Path) -> str:
    body = tmp_path / "upload.bin"
    body.write_bytes(UPLOAD)
    return curl(endpoint, "/upload", cafile, "--data-binary", f"@{body}")


def args(app: str, driver: str, *extra: str) -> list[str]:
    return ["--app", app, "--driver", driver, "--port", "0", "--plain-port", "0", *extra]


@pytest.mark.parametrize("driver", drivers())
def test_flask_over_tls_and_plain(
    driver: str, app_env: dict[str, str], cache_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cafile = cache_dir / "dev-cert.pem"
    with served(args("validated_flask:app", driver, "--interface", "wsgi"), app_env) as server:
        assert (server.driver, server.interface, server.app) == (
            driver,
            "WSGI",
            "validated_flask:app",
        )
        for scheme in ("https", "http"):
            endpoint = server.endpoint(scheme)
            index = json.loads(curl(endpoint, "/", cafile))
            assert index == {"hello": "from Flask", "scheme": scheme, "client": "127.0.0.1"}
            assert curl(endpoint, "/count", cafile) == COUNT
        assert upload(server.endpoint("https"), cafile, tmp_path) == UPLOADED
        assert server.stop() == 0
        assert "Traceback" not in server.errors(), server.errors()


@pytest.mark.parametrize("driver", drivers())
def test_starlette_with_a_websocket_over_tls_and_plain(
    driver: str, app_env: dict[str, str], cache_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cafile = cache_dir / "dev-cert.pem"
    context = ssl.create_default_context(cafile=str(cafile))
    with served(args("starlette_app:app", driver), app_env) as server:
        assert (server.driver, server.interface) == (driver, "ASGI 3")
        for scheme in ("https", "http"):
            endpoint = server.endpoint(scheme)
            index = json.loads(curl(endpoint, "/", cafile))
            assert index["greeting"] == "hello from Starlette"  # the lifespan's state
            assert index["scheme"] == scheme
            assert index["tls_version"] == ("0x304" if scheme == "https" else None)
            assert curl(endpoint, "/count", cafile) == COUNT
            ws_scheme = "wss" if scheme == "https" else "ws"
            url = f"{ws_scheme}://127.0.0.1:{endpoint.port}/echo"
            tls = context if scheme == "https" else None
            with websockets.connect(url, ssl=tls, open_timeout=10) as ws:
                for text in ("one", "two" * 10_000):
                    ws.send(text)
                    assert ws.recv(timeout=10) == "echo: " + text
        assert upload(server.endpoint("https"), cafile, tmp_path) == UPLOADED
        assert server.stop() == 0
        assert "Traceback" not in server.errors(), server.errors()


# -- what is decided at start ------------------------------------------------------------------

APPS = """
import contextlib

class Asgi2:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass

def too_many(environ, start_response, extra, more):
    return []

async def not_asgi(environ, start_response):
    return []

def make_app():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"made"})
    return app

async def failing_startup(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})

async def interrupted_startup(scope, receive, send):
    await receive()
    raise KeyboardInterrupt  # as Ctrl-C landing while the application's own code runs

async def endless_startup(scope, receive, send):
    import asyncio, sys
    await receive()
    print("starting up", file=sys.stderr, flush=True)
    await asyncio.sleep(3600)

async def no_lifespan(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("lifespan? never heard of it")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["root_path"].encode()})
"""


@pytest.fixture
def apps_env(app_env: dict[str, str], tmp_path: pathlib.Path) -> dict[str, str]:
    (tmp_path / "apps.py").write_text(APPS)
    return app_env


@pytest.mark.parametrize(
    ("app", "extra", "message"),
    [
        ("apps:Asgi2", [], "Asgi2 is a class: an ASGI 2 application"),
        ("apps:too_many", [], "it takes 4 arguments"),
        ("apps:not_asgi", ["--interface", "wsgi"], "a coroutine function, an ASGI app, not WSGI"),
        ("flask_app:app", ["--interface", "asgi"], "takes 2 arguments"),
        ("validated_flask:app", [], "name it with --interface"),
        ("apps:make_app", [], "it takes 0 arguments"),
    ],
)
def test_an_app_that_does_not_fit_is_a_usage_error_at_start(
    app: str, extra: list[str], message: str, apps_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    result = run_spcore("serve", "--app", app, "--port", "0", *extra, env=apps_env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spcore: error: --app ") and message in lines[0]


def test_the_interfaces_are_told_apart_and_named(
    apps_env: dict[str, str], cache_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cafile = cache_dir / "dev-cert.pem"
    for app, extra, interface in [
        ("flask_app:app", [], "WSGI"),  # Flask itself, not the validated one
        ("apps:make_app", ["--factory"], "ASGI 3"),
        ("spcore_hello_like:app", [], "spcore"),
    ]:
        (tmp_path / "spcore_hello_like.py").write_text(
            "import spcore\ndef app(request):\n    return spcore.Response(200, body='native')\n"
        )
        with served(["--app", app, "--port", "0", *extra], apps_env, tmp_path) as server:
            assert server.interface == interface, server.line
            if app == "apps:make_app":
                assert curl(server.endpoint("https"), "/", cafile) == "made"
            assert server.stop() == 0


def test_a_failed_startup_exits_with_status_3(
    apps_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "app.sock"
    result = run_spcore(
        "serve", "--app", "apps:failing_startup", "--port", "0", "--uds", str(path),
        env=apps_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 3 and result.stdout == ""  # never announced
    assert result.stderr.strip() == ("spcore: error: the application's startup failed: no database")
    assert not path.exists()  # the sockets it had bound are closed, the file removed


def test_a_busy_metrics_port_fails_before_the_startup_runs(
    apps_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("prometheus_client")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        result = run_spcore(
            "serve", "--app", "apps:failing_startup", "--port", "0", "--metrics-port", port,
            env=apps_env,
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"spcore: error: cannot listen on 127.0.0.1:{port} (metrics): the port is already in use\n"
    )  # and no word of the startup, which never ran


@needs_signals
@pytest.mark.parametrize("driver", ["asyncio", "selectors"])  # the app's loop: own, companion
def test_ctrl_c_during_the_startup_exits_at_once(
    apps_env: dict[str, str], tmp_path: pathlib.Path, driver: str
) -> None:
    process = subprocess.Popen(
        spcore("serve", "--app", "apps:endless_startup", "--port", "0", "--driver", driver),
        env=apps_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        assert process.stderr.readline() == "starting up\n"
        process.send_signal(signal.SIGINT)
        out, errors = process.communicate(timeout=10)  # not waiting for the app to answer
        assert process.returncode == 130 and out == "", errors
        assert "Traceback" not in errors, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_ctrl_c_inside_the_startup_leaves_no_traceback(
    apps_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    """On a driver that lends its own loop the application runs on the main thread, where
    Ctrl-C lands: the KeyboardInterrupt its task took is retrieved, not logged by asyncio as
    a task exception never retrieved. (On a companion loop's thread no signal is taken.)"""
    result = run_spcore(
        "serve", "--app", "apps:interrupted_startup", "--port", "0", "--driver", "asyncio",
        env=apps_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 130 and result.stdout == "", result.stderr
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr


def test_lifespan_on_insists_and_auto_does_without(
    apps_env: dict[str, str], cache_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    insist = run_spcore(
        "serve", "--app", "apps:no_lifespan", "--lifespan", "on", "--port", "0",
        env=apps_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert insist.returncode == 3
    assert "lifespan raised RuntimeError: lifespan? never heard of it" in insist.stderr
    with served(
        ["--app", "apps:no_lifespan", "--port", "0", "--root-path", "/mounted/"], apps_env, tmp_path
    ) as server:
        endpoint = server.endpoint("https")
        assert curl(endpoint, "/", cache_dir / "dev-cert.pem") == "/mounted"
        assert server.stop() == 0


def test_a_failed_startup_stops_a_supervisor_at_once(
    apps_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    result = run_spcore(
        "serve", "--app", "apps:failing_startup", "--workers", "2", "--port", "0",
        env=apps_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.count("startup failed: no database") == 1  # worker 0 only, once


def test_app_options_need_an_app(env: dict[str, str]) -> None:
    result = run_spcore("serve", "--lifespan", "on", env=env)
    assert result.returncode == 2 and "--lifespan applies to --app" in result.stderr
