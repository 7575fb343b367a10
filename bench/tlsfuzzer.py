"""The public tlsfuzzer suite against ``spcore serve`` with each TLS engine and against each
engine's reference server, on loopback (by hand, not in CI; see docs/tls-engine.md).

    python3 bench/tlsfuzzer.py --tlsfuzzer ~/tlsfuzzer --python ~/tlsfuzzer-venv/bin/python

``--tlsfuzzer`` is a checkout of https://github.com/tlsfuzzer/tlsfuzzer and ``--python`` an
interpreter that imports ``tlslite`` (tlslite-ng, the version tlsfuzzer's requirements.txt
names) and ``ecdsa``; this script fetches nothing. Every target gets the same throwaway
RSA-2048 certificate (tlsfuzzer's scripts assume RSA) and the same protocol settings:

* ``spcore-openssl``: ``spcore serve --tls-engine openssl``; its reference ``openssl`` is
  ``openssl s_server -www`` with spcore's TLS 1.2 cipher list, TLS 1.2 minimum, the
  server's preference and renegotiation off (what the OpenSSL engine sets);
* ``spcore-gnutls``: ``spcore serve --tls-engine gnutls``; its reference ``gnutls`` is
  ``gnutls-serv --http --disable-client-cert`` with the GnuTLS engine's priority string.

Each script runs with ``-d`` where it has it (ECDHE instead of RSA key exchange, which the
profile leaves out, as most servers now do) and ``-n 0`` where it has that (every scenario,
not a random sample, so that two runs name the same ones); a scenario's outcome is read from
the script's own summary (its ``FAILED:`` list). The report compares each spcore target with
its reference, script by script, and lists every scenario whose outcome differs.
Timing-attack scripts (Marvin, Minerva, Lucky13 and Bleichenbacher timing) measure latencies
over hours and are left out. Results go to ``bench/results/tlsfuzzer-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spcore.certs import CertificateAuthority
from spcore.tls.config import PROFILES
from spcore.tls.gnutls.native import priority_string
from spcore.tls.openssl import IANA_TO_OPENSSL

HERE = Path(__file__).resolve().parent
SKIPPED = re.compile(r"timing|marvin|minerva|lucky13")
REFERENCES = {"spcore-openssl": "openssl", "spcore-gnutls": "gnutls"}


@dataclass
class Outcome:
    """One script's result against one server."""

    total: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    error: str | None = None  # timed out, or gave no summary

    def key(self) -> tuple[str | None, tuple[str, ...]]:
        return self.error, tuple(sorted(self.failed))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    pair = CertificateAuthority.create(now).issue(
        directory, "server", ["localhost"], now, rsa_bits=2048
    )
    return pair.certfile, pair.keyfile


def server_command(target: str, port: int, cert: Path, key: Path, driver: str) -> list[str]:
    profile = PROFILES["intermediate"]
    if target.startswith("spcore-"):
        engine = target.removeprefix("spcore-")
        return [
            sys.executable, "-m", "spcore", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--cert", str(cert), "--key", str(key), "--tls-engine", engine,
            "--driver", driver, "--log-level", "critical",
        ]  # fmt: skip
    if target == "openssl":
        ciphers = ":".join(IANA_TO_OPENSSL[s] for s in profile.tls12_suites)
        return [
            "openssl", "s_server", "-accept", str(port), "-cert", str(cert), "-key", str(key),
            "-www", "-quiet", "-min_protocol", "TLSv1.2", "-cipher", ciphers,
            "-serverpref", "-no_renegotiation", "-alpn", "http/1.1",
        ]  # fmt: skip
    priority = priority_string(profile, ("1.2", "1.3"), server=True)
    return [
        "gnutls-serv", "--http", "--quiet", "-p", str(port), "--x509certfile", str(cert),
        "--x509keyfile", str(key), "--priority", priority, "--alpn", "http/1.1",
        "--disable-client-cert",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running(command: list[str], port: int, log: Path) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tlsfuzzer: cannot start {command[0]}: {log.read_text()[-500:]}")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse(output: str) -> Outcome:
    total = re.search(r"^TOTAL: (\d+)", output, re.MULTILINE)
    passed = re.search(r"^PASS: (\d+)", output, re.MULTILINE)
    if not (total and passed):
        return Outcome(error="no summary: " + " ".join(output.strip().splitlines()[-2:])[-200:])
    failed: list[str] = []
    block = re.search(r"^FAILED:\n((?:\t.*\n?)*)", output, re.MULTILINE)
    if block:
        failed = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return Outcome(int(total.group(1)), int(passed.group(1)), failed)


def script_options(fuzzer: Path, python: str, script: str) -> list[str]:
    """``-d`` and ``-n 0`` if the script's help offers them."""
    env = {**os.environ, "PYTHONPATH": str(fuzzer)}
    help_text = subprocess.run(
        [python, str(fuzzer / "scripts" / script), "--help"],
        cwd=fuzzer, env=env, capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    options = []
    if re.search(r"^\s*-d\s", help_text, re.MULTILINE):
        options.append("-d")
    if re.search(r"^\s*-n num", help_text, re.MULTILINE):
        options += ["-n", "0"]
    return options


def run_script(
    fuzzer: Path, python: str, script: str, options: list[str], port: int, timeout: float
) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(fuzzer)}
    command = [python, str(fuzzer / "scripts" / script), "-h", "127.0.0.1", "-p", str(port)]
    command += options
    try:
        done = subprocess.run(
            command, cwd=fuzzer, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Outcome(error=f"timed out after {timeout:g} s")
    return parse(done.stdout + done.stderr)


def compare(results: dict[str, dict[str, Outcome]]) -> dict[str, object]:
    report: dict[str, object] = {}
    for target, reference in REFERENCES.items():
        if target not in results or reference not in results:
            continue
        ours, theirs = results[target], results[reference]
        differences = {}
        for script in sorted(set(ours) & set(theirs)):
            mine, base = ours[script], theirs[script]
            if mine.key() != base.key():
                differences[script] = {
                    "only_spcore_fails": sorted(set(mine.failed) - set(base.failed)),
                    "only_reference_fails": sorted(set(base.failed) - set(mine.failed)),
                    "errors": [mine.error, base.error],
                }
        report[f"{target} vs {reference}"] = {
            "scripts": len(set(ours) & set(theirs)),
            "identical": len(set(ours) & set(theirs)) - len(differences),
            "scenarios": {
                name: {
                    "total": sum(o.total for o in outcomes.values()),
                    "passed": sum(o.passed for o in outcomes.values()),
                    "failed": sum(len(o.failed) for o in outcomes.values()),
                }
                for name, outcomes in ((target, ours), (reference, theirs))
            },
            "differences": differences,
        }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tlsfuzzer", type=Path, required=True, help="a tlsfuzzer checkout")
    parser.add_argument("--python", default=sys.executable, help="imports tlslite and ecdsa")
    parser.add_argument("--driver", default="selectors", help="spcore's driver (selectors)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per script")
    parser.add_argument(
        "--targets",
        default="spcore-openssl,openssl,spcore-gnutls,gnutls",
        help="comma-separated, from spcore-openssl, openssl, spcore-gnutls, gnutls",
    )
    parser.add_argument("scripts", nargs="*", help="script names (default: all but timing)")
    args = parser.parse_args(argv)
    fuzzer = args.tlsfuzzer.resolve()
    scripts = args.scripts or sorted(
        p.name for p in (fuzzer / "scripts").glob("test-*.py") if not SKIPPED.search(p.name)
    )
    for program in ("openssl", "gnutls-serv"):
        if shutil.which(program) is None:
            raise SystemExit(f"tlsfuzzer: {program} is not installed")
    options = {script: script_options(fuzzer, args.python, script) for script in scripts}
    results: dict[str, dict[str, Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="spcore-tlsfuzzer-") as tmp:
        cert, key = make_certificate(Path(tmp))
        for target in args.targets.split(","):
            port = free_port()
            command = server_command(target, port, cert, key, args.driver)
            results[target] = {}
            with running(command, port, Path(tmp) / f"{target}.log"):
                for number, script in enumerate(scripts, 1):
                    outcome = run_script(
                        fuzzer, args.python, script, options[script], port, args.timeout
                    )
                    results[target][script] = outcome
                    state = outcome.error or f"{outcome.passed}/{outcome.total} passed"
                    print(f"{target} [{number}/{len(scripts)}] {script}: {state}", flush=True)
    revision = subprocess.run(
        ["git", "-C", str(fuzzer), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    report = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tlsfuzzer": revision.stdout.strip() or None,
        "options": options,
        "comparison": compare(results),
        "results": {t: {s: vars(o) for s, o in r.items()} for t, r in results.items()},
    }
    out = HERE / "results" / f"tlsfuzzer-{datetime.datetime.now():%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["comparison"], indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
