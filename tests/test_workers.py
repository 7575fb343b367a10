"""``spcore serve --workers N``: a supervisor and its worker processes, run for real."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

import pytest
from netkit import wait_for
from servekit import Endpoint, get, needs_signals, run_spcore, served, slow_request, tls_client

from spcore.supervisor import (
    FIRST_DELAY,
    MAX_DELAY,
    MAX_FAILED_STARTS,
    STABLE,
    describe_exit,
    restart_delay,
)

pytestmark = needs_signals

#: Long enough for workers to start (or a signal to be handled) on a busy machine.
WAIT = 20.0


def pid_of(endpoint: Endpoint, context: ssl.SSLContext | None = None) -> tuple[int, int]:
    """(pid, worker index) of the worker that answers a new connection's /stats."""
    status, body = get(endpoint, "/stats", context)
    assert status == 200
    stats = json.loads(body)
    return stats["pid"], stats["worker"]


def workers_answering(
    endpoint: Endpoint, context: ssl.SSLContext | None = None, want: int = 2
) -> dict[int, int]:
    """pid -> worker index of the workers that answered, asking until ``want`` of them did
    (SO_REUSEPORT spreads new connections by a hash: 2 workers need a few tries)."""
    seen: dict[int, int] = {}
    for _ in range(200):
        pid, index = pid_of(endpoint, context)
        seen[pid] = index
        if len(seen) >= want:
            break
    return seen


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts: it is not our child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = pathlib.Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


# -- serving on every worker ---------------------------------------------------------------------


def test_two_workers_both_serve_over_tls(env: dict[str, str], cache_dir: pathlib.Path) -> None:
    with served(["--port", "0", "--workers", "2"], env) as server:
        assert re.match(r" in 2 workers, pids \d+, \d+ \(certificate: ", server.rest), server.rest
        assert len(set(server.workers)) == 2 and server.proc.pid not in server.workers
        [endpoint] = server.endpoints
        seen = workers_answering(endpoint, tls_client(cache_dir))
        assert seen == dict(zip(server.workers, [0, 1], strict=True))
        assert server.stop() == 0
        wait_for(lambda: all(gone(pid) for pid in server.workers), "the workers to exit", WAIT)
        assert "Traceback" not in server.errors()


def test_a_killed_worker_is_replaced_and_its_end_logged(env: dict[str, str]) -> None:
    args = ["--port", "0", "--no-tls", "--workers", "2", "--log-level", "info"]
    with served(args, env) as server:
        [endpoint] = server.endpoints
        victim = server.workers[1]
        os.kill(victim, signal.SIGKILL)
        line = re.compile(
            rf"\[supervisor, pid {server.proc.pid}\]: worker 1 \(pid {victim}\) was killed by "
            r"SIGKILL after [\d.]+ s; restarting it (now|in [\d.]+ s)$",
            re.MULTILINE,
        )
        wait_for(lambda: line.search(server.errors()), f"the death in:\n{server.errors()}", WAIT)
        up = re.compile(r"worker 1 \(pid (\d+)\) is up$", re.MULTILINE)

        def replacements() -> list[int]:
            return [int(pid) for pid in up.findall(server.errors()) if int(pid) != victim]

        wait_for(replacements, "the replacement to be up", WAIT)
        [replacement] = replacements()
        server.workers.append(replacement)
        assert gone(victim)
        # The replacement serves the same socket (the supervisor kept it): both pids answer.
        assert set(workers_answering(endpoint)) == {server.workers[0], replacement}
        assert server.stop() == 0


def test_a_shared_socket_is_served_by_the_others_while_a_worker_is_replaced(
    env: dict[str, str],
) -> None:
    args = ["--port", "0", "--no-tls", "--workers", "2", "--balance", "shared"]
    with served(args, env) as server:
        [endpoint] = server.endpoints
        victim, _ = pid_of(endpoint)
        assert victim in server.workers
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: gone(victim), "the worker to die", WAIT)
        # One socket for all: the next client is taken by the other worker at once, or by
        # the replacement, never left waiting for the dead one.
        pid, _ = pid_of(endpoint)
        server.workers.append(pid)  # (a replacement, maybe: stopped with the others)
        assert pid != victim
        assert server.stop() == 0


# -- stopping ------------------------------------------------------------------------------------


def test_sigterm_drains_every_worker(env: dict[str, str], slow_app: pathlib.Path) -> None:
    args = ["--port", "0", "--no-tls", "--workers", "2", "--app", "slowapp:app"]
    with served(args, env, cwd=slow_app) as server:
        [endpoint] = server.endpoints
        busy = slow_request(endpoint.port, slow_app, 10)  # 1 s of body
        server.proc.send_signal(signal.SIGTERM)
        response = busy.getresponse()
        assert response.status == 200
        assert response.read() == b"0123456789" * 10  # the request in flight completed
        busy.close()
        assert server.proc.wait(WAIT) == 0
        assert all(gone(pid) for pid in server.workers)
        errors = server.errors()
        assert errors.count("shutting down gracefully") == 1, errors  # the supervisor's line
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)


def test_a_second_signal_kills_the_workers_at_once(
    env: dict[str, str], slow_app: pathlib.Path
) -> None:
    args = ["--port", "0", "--no-tls", "--workers", "2", "--app", "slowapp:app"]
    with served(args, env, cwd=slow_app) as server:
        [endpoint] = server.endpoints
        busy = slow_request(endpoint.port, slow_app, 300)  # 30 s: far beyond this test
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in server.errors(), "the first signal", WAIT)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(WAIT) == 1
        assert "exiting at once" in server.errors()
        assert all(gone(pid) for pid in server.workers)
        busy.close()


def test_workers_stop_when_their_supervisor_is_killed(env: dict[str, str]) -> None:
    with served(["--port", "0", "--no-tls", "--workers", "2"], env) as server:
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(WAIT)
        wait_for(lambda: all(gone(pid) for pid in server.workers), "orphaned workers to stop", WAIT)
        assert "the supervisor is gone; shutting down" in server.errors()


# -- workers that cannot start -------------------------------------------------------------------


def test_crash_looping_workers_make_the_supervisor_give_up(
    env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "crashing.py").write_text("import os\nos._exit(4)\n")
    result = run_spcore(
        "serve", "--port", "0", "--workers", "2", "--app", "crashing:app", env=env, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stdout == ""  # never announced
    deaths = re.findall(
        r"worker 0 \(pid \d+\) exited with status 4 before it was up", result.stderr
    )
    assert len(deaths) == MAX_FAILED_STARTS  # worker 1 never started: worker 0 was never up
    assert f"{MAX_FAILED_STARTS} failed starts in a row; stopping" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_app_that_cannot_be_imported_is_one_line_as_without_workers(
    env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    result = run_spcore(
        "serve", "--port", "0", "--workers", "2", "--app", "nosuchmodule:app", env=env, cwd=tmp_path
    )
    assert result.returncode == 2
    assert (
        result.stderr == "spcore: error: cannot import the app: there is no module 'nosuchmodule'\n"
    )


def test_a_busy_port_is_the_supervisors_one_line_error(env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_spcore("serve", "--port", str(port), "--workers", "2", env=env)
    assert result.returncode == 2
    assert (
        result.stderr
        == f"spcore: error: cannot listen on 127.0.0.1:{port}: the port is already in use\n"
    )


# -- SIGHUP, and sockets handed to the workers ---------------------------------------------------


def test_sighup_is_passed_on_to_every_worker_and_ends_none(env: dict[str, str]) -> None:
    with served(["--port", "0", "--no-tls", "--workers", "2"], env) as server:
        server.proc.send_signal(signal.SIGHUP)
        for index, pid in enumerate(server.workers):
            line = f"[worker {index}, pid {pid}]: SIGHUP: no TLS listener, nothing to reload"
            wait_for(lambda line=line: line in server.errors(), f"worker {index}'s hook", WAIT)
        assert set(workers_answering(server.endpoints[0])) == set(server.workers)
        assert "restarting" not in server.errors()
        assert server.stop() == 0


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX here")
def test_workers_serve_a_handed_in_socket_and_a_unix_socket(env: dict[str, str]) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    made = socket.create_server(("127.0.0.1", 0))
    fd = made.fileno()
    with tempfile.TemporaryDirectory(prefix="spw") as directory:
        path = pathlib.Path(directory) / "s"
        args = ["--fd", str(fd), "--uds", str(path), "--no-tls", "--workers", "2"]
        try:
            with served(args, env, pass_fds=(fd,)) as server:
                assert f"http://127.0.0.1:{made.getsockname()[1]}/ and unix:{path} (http)" in (
                    server.line
                )
                made.close()
                pid, _ = pid_of(server.endpoints[0])
                assert pid in server.workers
                page = subprocess.run(
                    [curl, "-sS", "--max-time", "10", "--unix-socket", str(path), "http://x/stats"],
                    capture_output=True,
                    timeout=15,
                )
                assert page.returncode == 0, page.stderr
                assert json.loads(page.stdout)["pid"] in server.workers
                assert server.stop() == 0
            assert not path.exists()  # removed by the supervisor, which bound it
        finally:
            made.close()


# -- the rules, without processes ----------------------------------------------------------------


def test_restart_delay_is_none_after_a_stable_run_and_doubles_after_quick_deaths() -> None:
    assert restart_delay(MAX_DELAY, STABLE) == 0.0
    delays = [0.0]
    for _ in range(10):
        delays.append(restart_delay(delays[-1], 0.5))
    assert delays[1:4] == [FIRST_DELAY, 2 * FIRST_DELAY, 4 * FIRST_DELAY]
    assert max(delays) == MAX_DELAY == delays[-1]


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGSEGV, "was killed by SIGSEGV"),
    ],
)
def test_an_exit_is_described_by_its_status_or_its_signal(status: int, text: str) -> None:
    assert describe_exit(status) == text
