"""``spcore tunnel`` for real, as a subprocess between real sockets: it terminates and
originates TLS on every driver here, copies a gigabyte with its digest checked and its memory
bounded, carries a half-close across, survives its backend going away, and refuses mistakes
with one line."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import signal
import socket
import ssl
import struct
import time
from collections.abc import Iterator

import pytest
from conftest import PKI
from servekit import Served, needs_signals, run_spcore, spcore, tls_client
from test_reload import Files, serial_of_der

from spcore.conformance.peers import Handler, Peer, echo, peer, server_tls
from spcore.drivers import DRIVERS
from spcore.preamble import ProxyHeaderReader
from spcore.tls.engine import ApplicationData, CloseNotify, RaggedEOF
from spcore.tls.engines import ENGINES
from spcore.tls.openssl import OpenSSLEngine

pytestmark = needs_signals

TIMEOUT = 20.0
TUNNEL_BANNER = re.compile(
    r"^spcore: tunnel from (?P<scheme>tls|tcp)://127\.0\.0\.1:(?P<port>\d+) to (?P<to>\S+)"
    r" with the (?P<driver>\S+) driver"
)
#: The drivers that run here; each one connects (asyncio's and uvloop's, selectors', uring's).
DRIVERS_HERE = [name for name, spec in DRIVERS.items() if spec.probe()[0]]


class Tunnelled(Served):
    """A running ``spcore tunnel``: the port it accepts on, from its first line."""

    def _read_banner(self) -> None:
        match = TUNNEL_BANNER.match(self.line)
        assert match, (self.line, self.errors())
        self.port = int(match["port"])
        self.driver = match["driver"]

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def peak_rss(self) -> int:
        """The most resident memory the process has used (VmHWM), in bytes."""
        return _status(self.proc.pid, "VmHWM")

    def rss(self) -> int:
        return _status(self.proc.pid, "VmRSS")


def _status(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def tunnel(env: dict[str, str], *args: str) -> Iterator[Tunnelled]:
    running = Tunnelled([], env, command=spcore("tunnel", "--accept", "127.0.0.1:0", *args))
    try:
        yield running
        assert running.stop() == 0, running.errors()
        assert "Traceback" not in running.errors(), running.errors()
    finally:
        running.close()


def backend_args(running: Peer) -> list[str]:
    return ["--connect", f"127.0.0.1:{running.address[1]}"]


# -- terminate and originate, on every driver ----------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS_HERE)
def test_it_terminates_tls_on_every_driver(
    driver: str, env: dict[str, str], cache_dir: pathlib.Path
) -> None:
    with peer(echo) as backend, tunnel(env, *backend_args(backend), "--driver", driver) as running:
        assert running.driver == driver
        raw = socket.create_connection(running.address, TIMEOUT)
        with tls_client(cache_dir).wrap_socket(raw, server_hostname="127.0.0.1") as client:
            client.sendall(b"through the tunnel")
            assert _read_exactly(client, 18) == b"through the tunnel"
            assert client.version() == "TLSv1.3"


@pytest.mark.parametrize("driver", DRIVERS_HERE)
def test_it_originates_tls_with_sni_and_verification_on_every_driver(
    driver: str, env: dict[str, str], pki: PKI
) -> None:
    with peer(echo, server_tls(pki)) as backend:
        args = [*backend_args(backend), "--in", "plain", "--out", "tls"]
        args += ["--connect-ca", str(pki.ca_file), "--connect-name", "localhost"]
        with tunnel(env, *args, "--driver", driver) as running:
            with socket.create_connection(running.address, TIMEOUT) as client:
                client.sendall(b"to be encrypted")
                assert _read_exactly(client, 15) == b"to be encrypted"
            assert backend.names == ["localhost"]


def test_a_backend_whose_certificate_does_not_verify_is_refused(
    env: dict[str, str], pki: PKI
) -> None:
    with peer(echo, server_tls(pki)) as backend:
        args = [*backend_args(backend), "--in", "plain", "--out", "tls"]
        args += ["--connect-ca", str(pki.rogue_ca_file), "--connect-name", "localhost"]
        with tunnel(env, *args) as running:
            with socket.create_connection(running.address, TIMEOUT) as client:
                client.sendall(b"never decrypted")
                assert _read_to_end(client) == b""  # closed
            wait_for_log(running, "cannot connect to the backend")
            assert "CERTIFICATE_VERIFY_FAILED" in running.errors()


def test_sighup_gives_new_clients_the_renewed_certificate(
    env: dict[str, str], pki: PKI, tmp_path: pathlib.Path
) -> None:
    """As ``spcore serve`` does: the accepting side's files are read again on SIGHUP; a
    client already connected goes on with what it had."""
    files = Files(pki, tmp_path)
    first = files.renew()
    with peer(echo) as backend, tunnel(env, *backend_args(backend), *files.args()) as running:
        old = pki.client_context().wrap_socket(
            socket.create_connection(running.address, TIMEOUT), server_hostname="localhost"
        )
        with old:
            assert _serial(old) == first
            second = files.renew()
            running.proc.send_signal(signal.SIGHUP)
            wait_for_log(running, "TLS files reloaded")
            with pki.client_context().wrap_socket(
                socket.create_connection(running.address, TIMEOUT), server_hostname="localhost"
            ) as new:
                assert _serial(new) == second
            old.sendall(b"still here")
            assert _read_exactly(old, 10) == b"still here"


def _serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return serial_of_der(der)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_it_relays_tls_to_tls(
    engine: str, env: dict[str, str], pki: PKI, cache_dir: pathlib.Path
) -> None:
    """Both sides through the engine ``--tls-engine`` names (the one state of each side built
    at start), to stdlib TLS at either end."""
    available, reason = ENGINES[engine].probe()
    if not available:
        pytest.skip(f"{engine}: {reason}")
    with peer(echo, server_tls(pki)) as backend:
        args = [*backend_args(backend), "--out", "tls", "--connect-ca", str(pki.ca_file)]
        args += ["--tls-engine", engine]
        with tunnel(env, *args, "--connect-name", "localhost") as running:
            raw = socket.create_connection(running.address, TIMEOUT)
            with tls_client(cache_dir).wrap_socket(raw, server_hostname="127.0.0.1") as client:
                client.sendall(b"encrypted twice")
                assert _read_exactly(client, 15) == b"encrypted twice"
            assert backend.names == ["localhost"]


def test_its_timeouts_and_connection_limit(env: dict[str, str]) -> None:
    """An idle tunnel is closed; a backend that never answers times out, with a warning; a
    client over --max-connections waits (in the backlog) until another one is gone."""
    with contextlib.ExitStack() as stack:
        full = stack.enter_context(socket.socket())
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler = stack.enter_context(socket.create_connection(full.getsockname(), TIMEOUT))
        filler.send(b"x")  # the backlog is full: connects to it hang
        args = ["--in", "plain", "--connect", f"127.0.0.1:{full.getsockname()[1]}"]
        running = stack.enter_context(tunnel(env, *args, "--connect-timeout", "0.5"))
        with socket.create_connection(running.address, TIMEOUT) as client:
            started = time.monotonic()
            assert _read_to_end(client) == b""
            assert 0.4 < time.monotonic() - started < 8.0
        wait_for_log(running, "connect timed out after 0.5 s")
    with peer(echo) as backend:
        args = [*backend_args(backend), "--in", "plain", "--idle-timeout", "2"]
        with tunnel(env, *args, "--max-connections", "1") as running:
            first = socket.create_connection(running.address, TIMEOUT)
            first.sendall(b"1")
            assert _read_exactly(first, 1) == b"1"
            second = socket.create_connection(running.address, TIMEOUT)  # in the backlog
            second.sendall(b"2")
            second.settimeout(0.5)
            with pytest.raises(TimeoutError):
                second.recv(1)  # not accepted: the first one is the one allowed
            second.settimeout(TIMEOUT)
            with first:
                assert _read_to_end(first) == b""  # idle for two seconds: closed
            with second:
                assert _read_exactly(second, 1) == b"2"  # accepted once the first was gone


# -- a gigabyte -----------------------------------------------------------------------------------

GIB = 1 << 30
BLOCK = 1 << 20


def _digesting(result: dict[str, object]) -> Handler:
    def handler(sock: socket.socket, peer: Peer) -> None:
        digest = hashlib.sha256()
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        total = 0
        while n := sock.recv_into(buffer):
            digest.update(view[:n])
            total += n
        result["bytes"], result["digest"] = total, digest.hexdigest()

    return handler


def test_a_gigabyte_through_it_with_its_digest_and_bounded_memory(
    env: dict[str, str], cache_dir: pathlib.Path
) -> None:
    """TLS in, plaintext out: the backend's digest is the client's, and the tunnel's peak
    memory grows by far less than what went through (its limits bound each pair)."""
    result: dict[str, object] = {}
    with peer(_digesting(result)) as backend, tunnel(env, *backend_args(backend)) as running:
        before = running.rss()
        block = os.urandom(BLOCK)
        expected = hashlib.sha256()
        started = time.monotonic()
        raw = socket.create_connection(running.address, TIMEOUT)
        with tls_client(cache_dir).wrap_socket(raw, server_hostname="127.0.0.1") as client:
            for i in range(GIB // BLOCK):
                chunk = struct.pack("!Q", i) + block[8:]  # no two blocks alike
                client.sendall(chunk)
                expected.update(chunk)
            client.unwrap()  # close_notify: the tunnel shuts the backend's side
        _wait_for(lambda: "digest" in result, "the backend's digest", 60.0)
        elapsed = time.monotonic() - started
        peak = running.peak_rss()
        assert result == {"bytes": GIB, "digest": expected.hexdigest()}
        assert peak - before < 16 << 20, (before, peak)  # not the gigabyte: a few buffers
        print(f"1 GiB in {elapsed:.1f} s; tunnel RSS {before >> 20} -> peak {peak >> 20} MiB")


# -- half-close, a backend that goes away -------------------------------------------------------


class TLSOverSocket:
    """A TLS client over a blocking socket through spcore's engine, which can half-close:
    close_notify then its FIN, and read on."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.engine = OpenSSLEngine(context, server_side=False, server_hostname="127.0.0.1")
        self.received = bytearray()
        self.clean: bool | None = None
        self.engine.start()
        self._flush()
        while not self.engine.handshake_complete:
            self._feed(self.sock.recv(65536))

    def send(self, data: bytes) -> None:
        self.engine.send(data)
        self._flush()

    def shut(self) -> None:
        self.engine.close()
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def read_to_end(self) -> bytes:
        while self.clean is None:
            self._feed(self.sock.recv(65536))
        return bytes(self.received)

    def _feed(self, data: bytes) -> None:
        for event in self.engine.receive_data(data):
            if isinstance(event, ApplicationData):
                self.received += event.data
            elif isinstance(event, CloseNotify):
                self.clean = True
            elif isinstance(event, RaggedEOF):
                self.clean = False
        if not data and self.clean is None:
            self.clean = False
        self._flush()

    def _flush(self) -> None:
        if data := self.engine.data_to_send():  # (nothing, once our side is shut)
            self.sock.sendall(data)


def _answer_after_eof(sock: socket.socket, peer: Peer) -> None:
    """Read the whole request (until the client's FIN arrives), then answer and close."""
    request = _read_to_end(sock)
    sock.sendall(b"got %d bytes after your FIN" % len(request))


@pytest.mark.parametrize("tls_in", [True, False], ids=["tls-in", "plain-in"])
def test_a_half_close_is_carried_across(
    tls_in: bool, env: dict[str, str], cache_dir: pathlib.Path
) -> None:
    with peer(_answer_after_eof) as backend:
        args = backend_args(backend) + ([] if tls_in else ["--in", "plain"])
        with tunnel(env, *args) as running:
            sock = socket.create_connection(running.address, TIMEOUT)
            with sock:
                if tls_in:
                    client = TLSOverSocket(sock, tls_client(cache_dir))
                    client.send(b"x" * 100_000)
                    client.shut()
                    assert client.read_to_end() == b"got 100000 bytes after your FIN"
                    assert client.clean  # and the backend's FIN came as close_notify
                else:
                    sock.sendall(b"x" * 100_000)
                    sock.shutdown(socket.SHUT_WR)
                    assert _read_to_end(sock) == b"got 100000 bytes after your FIN"


def _reset_after_a_megabyte(sock: socket.socket, peer: Peer) -> None:
    got = 0
    while got < 1 << 20:
        got += len(sock.recv(65536))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_it_survives_its_backend_going_away_mid_stream(
    env: dict[str, str], cache_dir: pathlib.Path
) -> None:
    with peer(_reset_after_a_megabyte) as dying, tunnel(env, *backend_args(dying)) as running:
        raw = socket.create_connection(running.address, TIMEOUT)
        context = tls_client(cache_dir)
        with (
            context.wrap_socket(
                raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False
            ) as client,
            pytest.raises((ssl.SSLError, OSError)),
        ):  # reset, or EOF without close_notify
            for _ in range(1024):
                client.sendall(b"y" * 65536)
            client.recv(1)
        dying.close()
        # Gone entirely now: the next client is closed, with a warning that says why.
        raw = socket.create_connection(running.address, TIMEOUT)
        with tls_client(cache_dir).wrap_socket(raw, server_hostname="127.0.0.1") as client:
            assert client.recv(1) == b""
        wait_for_log(running, "cannot connect to the backend")
        assert "Connection refused" in running.errors()
        # And the tunnel still serves: a backend on the same port again works.
        back_again = Peer(socket.AF_INET, dying.address, echo)
        try:
            raw = socket.create_connection(running.address, TIMEOUT)
            with tls_client(cache_dir).wrap_socket(raw, server_hostname="127.0.0.1") as client:
                client.sendall(b"again")
                assert _read_exactly(client, 5) == b"again"
        finally:
            back_again.close()


# -- the PROXY header, mistakes -----------------------------------------------------------------


def _header(result: dict[str, object]) -> Handler:
    def handler(sock: socket.socket, peer: Peer) -> None:
        reader = ProxyHeaderReader()
        while (parsed := reader.feed(sock.recv(4096))) is None:
            pass
        result["info"] = parsed[0]

    return handler


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_backend_gets_the_clients_address_in_a_proxy_header(
    version: str, env: dict[str, str]
) -> None:
    result: dict[str, object] = {}
    with peer(_header(result)) as backend:
        args = [*backend_args(backend), "--in", "plain", "--send-proxy", version]
        with tunnel(env, *args) as running, socket.create_connection(running.address) as client:
            _wait_for(lambda: "info" in result, "the PROXY header")
            info = result["info"]
            assert info.source == client.getsockname()  # type: ignore[attr-defined]
            assert info.destination == running.address  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--in", "plain", "--cert", "c.pem", "--key", "k.pem"], "--cert/--key need --in tls"),
        (["--connect-name", "example.com"], "--connect-name needs --out tls"),
        (["--in", "plain", "--ocsp-response", "o.der"], "--ocsp-response needs --in tls"),
        (["--tls-engine", "nosuch"], "invalid choice: 'nosuch'"),
        (["--cert", "c.pem"], "give both --cert and --key"),
        (
            ["--out", "tls", "--connect-ca", "/no/such/ca.pem"],
            "the file /no/such/ca.pem does not exist",
        ),
        (["--connect", "no-such-host.invalid:80"], "cannot resolve the backend"),
        (["--connect", "127.0.0.1"], "give HOST:PORT"),
        (["--connect", "unix:/run/x.sock", "--out", "tls"], "needs --connect-name"),
    ],
)
def test_mistakes_are_one_line(args: list[str], message: str, env: dict[str, str]) -> None:
    if "--connect" not in args:
        args = [*args, "--connect", "127.0.0.1:9"]
    result = run_spcore("tunnel", "--accept", "127.0.0.1:0", *args, env=env)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("spcore: error: ") and message in line, line


# -- helpers ------------------------------------------------------------------------------------


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"the stream ended after {len(data)} of {n} bytes"
        data += chunk
    return data


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_for(predicate: object, what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_log(running: Tunnelled, text: str) -> None:
    _wait_for(lambda: text in running.errors(), repr(text))
