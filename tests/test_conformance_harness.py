"""The conformance harness with broken drivers: it fails fast, names the cause, never hangs,
and its results table counts only scenarios that ran."""

from __future__ import annotations

import pathlib
import re
import socket
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from netkit import Echo

from spcore.conformance import harness
from spcore.conformance.harness import PKI, Serve, make_pki
from spcore.conformance.plugin import DriverChoice, Results
from spcore.drivers.selector import SelectorsDriver
from spcore.server import Server

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class RaisesAtOnce(SelectorsDriver):
    def run(self) -> None:
        raise RuntimeError("broken driver")


class StopHangs(SelectorsDriver):
    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.release = threading.Event()

    def stop(self) -> None:
        self.release.wait()  # a deadlock, as a broken driver might have
        super().stop()


def test_a_driver_whose_run_raises_fails_at_once_with_the_cause(pki: PKI) -> None:
    serve = Serve(RaisesAtOnce, pki)
    started = time.monotonic()
    raised = pytest.raises(AssertionError, match=re.escape("driver.run() raised RuntimeError"))
    with raised, serve(handler=Echo) as served:
        time.sleep(0.2)  # run() has raised by now; what a scenario does next:
        with served.connect() as client:
            client.send(b"hello\n")
            client.read_until(b"\n")  # would wait out the client's timeout
    assert time.monotonic() - started < 5.0  # not a client timeout


def test_a_driver_whose_stop_hangs_fails_instead_of_hanging(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "STOP_MARGIN", 0.5)
    drivers: list[StopHangs] = []

    def factory(server: Server) -> StopHangs:
        drivers.append(StopHangs(server))
        return drivers[-1]

    serve = Serve(factory, pki)
    try:
        hung = pytest.raises(AssertionError, match=re.escape("driver.stop() did not return"))
        with hung, serve(handler=Echo):
            pass
    finally:
        for driver in drivers:  # let the stuck thread and the driver end
            driver.release.set()
            driver.stop()


def report(nodeid: str, when: str, outcome: str) -> Any:
    return SimpleNamespace(
        nodeid=nodeid, when=when, outcome=outcome, failed=outcome == "failed", longrepr=None
    )


def test_the_table_counts_only_scenarios_whose_call_ran() -> None:
    results = Results()
    choice = DriverChoice("mine", None, "")
    for nodeid in ("ran", "interrupted", "broke-in-teardown"):
        item = SimpleNamespace(nodeid=nodeid, callspec=SimpleNamespace(params={"driver": choice}))
        results.pytest_itemcollected(item)  # type: ignore[arg-type]
    for nodeid, when, outcome in [
        ("ran", "setup", "passed"),
        ("ran", "call", "passed"),
        ("ran", "teardown", "passed"),
        ("interrupted", "setup", "passed"),  # then Ctrl-C: no call report
        ("broke-in-teardown", "setup", "passed"),
        ("broke-in-teardown", "call", "passed"),
        ("broke-in-teardown", "teardown", "failed"),
    ]:
        results.pytest_runtest_logreport(report(nodeid, when, outcome))
    assert results.table() == {"mine": {"passed": 1, "failed": 1, "skipped": 0}}


def test_the_example_driver_survives_a_failed_accept(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    tiny = pytest.importorskip("tiny_driver")
    failures = [OSError(24, "Too many open files")]
    accept = socket.socket.accept

    def failing_once(sock: socket.socket) -> Any:
        if failures:
            raise failures.pop()
        return accept(sock)

    monkeypatch.setattr(socket.socket, "accept", failing_once)
    with Serve(tiny.TinyDriver, pki)(handler=Echo) as served:
        with served.connect() as client:
            client.send(b"still serving\n")
            assert client.read_until(b"\n") == b"still serving\r\n"
        assert served.server.stats.connections_refused == 1
    sys.modules.pop("tiny_driver", None)
