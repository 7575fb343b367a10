"""Certificate reload under load: wrk over HTTPS while SIGHUP is sent 20 times.

``spcore serve`` (optionally with ``--workers``) on a test CA's certificate; wrk runs for
``--duration`` seconds sending ``Connection: close``, so that every request is a new TLS
connection (each handshake after a reload gets the new certificate), while the certificate
files are replaced by a freshly issued one and the server is sent SIGHUP ``--reloads``
times, evenly spaced. The figure is wrk's failed
requests (socket errors plus non-2xx), which must be 0, and the reloads the server logged.

    python bench/reload.py                 # 20 reloads in 12 s, one process
    python bench/reload.py --workers 2

This is not a test. The figures go to docs/benchmarks.md with the method.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run import free_port, parse_wrk  # noqa: E402 (needs spcore on the path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=20, help="SIGHUPs to send (20)")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of wrk (12)")
    parser.add_argument("--workers", type=int, default=None, help="spcore --workers")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    args = parser.parse_args(argv)
    from spcore.certs import CertificateAuthority

    with tempfile.TemporaryDirectory(prefix="spreload") as where:
        directory = Path(where)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca = CertificateAuthority.create(now, name="bench CA")
        cert, key = directory / "cert.pem", directory / "key.pem"

        def renew(n: int) -> None:
            pair = ca.issue(directory, f"n{n}", ["127.0.0.1"], now)
            shutil.copyfile(pair.certfile, cert)
            shutil.copyfile(pair.keyfile, key)

        renew(0)
        port = free_port()
        command = [sys.executable, "-m", "spcore", "serve", "--port", str(port)]
        command += ["--cert", str(cert), "--key", str(key), "--log-level", "info"]
        if args.workers:
            command += ["--workers", str(args.workers)]
        log = directory / "server.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "wb") as errors:
            server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
            try:
                assert server.stdout is not None
                print(server.stdout.readline().decode().strip(), file=sys.stderr)
                wrk = subprocess.Popen(
                    [
                        *("wrk", "-t2", f"-c{args.connections}", f"-d{args.duration:g}s"),
                        *("--latency", "-H", "Connection: close"),
                        f"https://127.0.0.1:{port}/hello",
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                gap = (args.duration - 2) / args.reloads
                time.sleep(1)
                for n in range(1, args.reloads + 1):
                    renew(n)
                    server.send_signal(signal.SIGHUP)
                    time.sleep(gap)
                output, _ = wrk.communicate(timeout=args.duration + 30)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
        result = parse_wrk(output)
        reloaded = log.read_text().count("TLS files reloaded")
        print(output, file=sys.stderr)
        print(
            f"| {args.workers or 1} | {args.reloads} | {reloaded} | {result.requests} | "
            f"{result.rps:.0f} | {result.p99_ms:.1f} | {result.errors} |"
        )
        return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
