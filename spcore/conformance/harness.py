"""Running a driver under test: a throwaway PKI, and ``serve()`` with its checks.

The server side speaks only the neutral TLS configuration (``spcore.tls.ServerTLS``) and runs
the TLS engine chosen for the scenario; the clients are the standard library's
(``spcore.conformance.clients``).

``serve()`` builds a ``Server``, lets the driver bind on loopback port 0, runs ``driver.run()``
on a background thread and, on exit, stops it gracefully. A driver that does not stop, a
``run()`` that raises and an error logged by spcore while serving all fail the scenario: a
hang or an unhandled exception is a conformance failure like a wrong byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol

import pytest

from spcore.certs import CertificateAuthority, CertPair, dev_certificate
from spcore.config import Limits

# spcore.drivers lives in drivers/ (setuptools package-dir), which mypy cannot map from the
# source tree.
from spcore.drivers.gateway import Hosted, host_app  # type: ignore[import-not-found, unused-ignore]
from spcore.gateway.detect import Interface
from spcore.gateway.lifespan import LifespanMode
from spcore.http.messages import App, Request, Response
from spcore.listeners import http_listener, stream_listener
from spcore.server import Listener, Server
from spcore.stream import Sessions, StreamHandler
from spcore.tls.config import Certificate, ServerTLS
from spcore.tls.engine import EngineFactory

from .clients import Client, StdlibContext, TLSVersion, stdlib_client_context

__all__ = [
    "PKI",
    "SUITE_LIMITS",
    "DriverLike",
    "ErrorLog",
    "Serve",
    "Served",
    "Transport",
    "make_pki",
    "suite_limits",
    "tls_version",
    "transports",
    "wait_until",
]

Transport = Literal["plain", "tls1.2", "tls1.3"]

#: The suite's defaults: short grace periods, so a scenario that leaves a connection behind
#: ends quickly (a driver that hangs still fails, after ``STOP_MARGIN``), and every other
#: timeout longer than a client's (``Served.connect``): a driver that misses an event must
#: not be rescued by an unrelated timer firing in time.
SUITE_LIMITS = Limits(shutdown_grace=3.0, close_timeout=1.0, idle_timeout=30.0)
#: How long past the shutdown grace (and the close timeout) ``run()`` may take to return.
STOP_MARGIN = 5.0


def suite_limits(**overrides: Any) -> Limits:
    """``SUITE_LIMITS`` with some fields changed."""
    return dataclasses.replace(SUITE_LIMITS, **overrides)


class DriverLike(Protocol):
    """What the suite needs of a driver (``spcore.drivers.base.Driver`` has it). The driver
    also hands its ``call_soon_threadsafe`` to the server (``server.attach``), through which
    the wake-up scenarios reach it."""

    def bind(self) -> Sequence[Any]: ...  # objects with an ``address`` attribute

    def run(self) -> None: ...

    def stop(self) -> None: ...


DriverFactory = Callable[[Server], DriverLike]


def transports(*names: Transport) -> pytest.MarkDecorator:
    """Run a scenario over these transports: ``plain`` once, each TLS one once per chosen TLS
    engine (the scenario takes ``transport``; ``serve`` uses the engine)."""
    return pytest.mark.transports(*names)


def tls_version(transport: Transport) -> TLSVersion:
    """The TLS version a TLS transport pins ("1.2" or "1.3")."""
    if transport == "plain":
        raise ValueError("a plain transport has no TLS version")
    return "1.2" if transport == "tls1.2" else "1.3"


#: Seconds between two looks of ``wait_until``.
POLL = 0.01


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def wait_still(value: Callable[[], int], timeout: float, what: str, quiet: float = 0.5) -> None:
    """Until ``value()`` has not changed for ``quiet`` seconds' worth of looks (an application
    held back; a loaded machine, whose looks come late, only makes the wait longer)."""
    last = [value(), 0]

    def settled() -> bool:
        now = value()
        if now != last[0]:
            last[0], last[1] = now, 0
            return False
        last[1] += 1
        return last[1] * POLL >= quiet

    wait_until(settled, timeout, what)


# --- the PKI ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PKI:
    """A CA and the certificates the scenarios and the engine kit need, issued at ``now``."""

    now: datetime.datetime
    ca: CertificateAuthority
    ca_file: pathlib.Path
    server: CertPair  # localhost, 127.0.0.1, ::1
    other: CertPair  # other.test
    wild: CertPair  # *.wild.test
    client: CertPair  # clientAuth, issued by the CA
    expired: CertPair  # localhost, expired a day ago
    self_signed: CertPair  # the development certificate: localhost, issued by itself
    rogue_ca_file: pathlib.Path  # a second CA, trusted by nobody
    rogue_client: CertPair  # clientAuth, issued by the rogue CA

    @staticmethod
    def certificate(
        pair: CertPair, ocsp_response: bytes | pathlib.Path | None = None
    ) -> Certificate:
        """The neutral ``Certificate`` of a pair."""
        return Certificate(pair.certfile, pair.keyfile, ocsp_response=ocsp_response)

    def server_tls(self, **options: Any) -> ServerTLS:
        """A ``ServerTLS`` for the server certificate, plus ``options``."""
        return ServerTLS(self.certificate(self.server), **options)

    def client_context(
        self,
        version: TLSVersion | None = None,
        *,
        cert: CertPair | None = None,
        alpn: Sequence[str] = ("http/1.1",),
    ) -> StdlibContext:
        """A stdlib client context trusting the CA, pinned to ``version`` when given."""
        return stdlib_client_context(self.ca_file, version, cert=cert, alpn=alpn)


def make_pki(directory: pathlib.Path) -> PKI:
    """Issue the suite's certificates into ``directory``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    ca = CertificateAuthority.create(now, name="spcore conformance CA")
    rogue = CertificateAuthority.create(now, name="untrusted CA")
    rogue_dir = directory / "rogue"
    rogue_dir.mkdir(parents=True, exist_ok=True)
    localhost = ["localhost", "127.0.0.1", "::1"]
    return PKI(
        now=now,
        ca=ca,
        ca_file=ca.write_ca(directory),
        server=ca.issue(directory, "server", localhost, now),
        other=ca.issue(directory, "other", ["other.test"], now),
        wild=ca.issue(directory, "wild", ["*.wild.test"], now),
        client=ca.issue(directory, "client", ["client.test"], now, client=True),
        expired=ca.issue(
            directory, "expired", localhost, now, not_before=now - 30 * day, not_after=now - day
        ),
        self_signed=dev_certificate(now, directory / "dev"),
        rogue_ca_file=rogue.write_ca(rogue_dir),
        rogue_client=rogue.issue(rogue_dir, "rogue", ["rogue.test"], now, client=True),
    )


# --- serving ----------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Collects the ERROR records spcore logs while a scenario serves."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Served:
    """A running driver: its server, its bound addresses, and clients for them."""

    def __init__(
        self,
        server: Server,
        driver: DriverLike,
        addresses: list[tuple[Any, ...]],
        transport: Transport,
        pki: PKI,
        sessions: Sessions,
        hosted: Hosted | None = None,
    ) -> None:
        self.server = server
        self.driver = driver
        #: The ASGI or WSGI application hosted (``serve(asgi=...)``, ``serve(wsgi=...)``).
        self.hosted = hosted
        self.addresses = addresses
        self.transport = transport
        self.pki = pki
        #: The stream sessions of every listener ``serve(handler=...)`` made.
        self.sessions = sessions
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def address(self) -> tuple[Any, ...]:
        return self.addresses[0]

    @property
    def port(self) -> int:
        return int(self.address[1])

    @property
    def connections(self) -> int:
        """Connections the server holds now (read from the test thread: a snapshot)."""
        return len(self.server.connections)

    def connect(
        self,
        transport: Transport | None = None,
        *,
        index: int = 0,
        context: StdlibContext | None = None,
        server_hostname: str = "localhost",
        timeout: float = 10.0,
    ) -> Client:
        """A client connected to listener ``index``; TLS unless ``transport`` is plain.

        ``transport`` defaults to the one the server was started with; ``context`` replaces
        the suite's client context (which trusts the CA and pins the version).
        """
        self._check_alive()
        transport = transport or self.transport
        sock = socket.create_connection(self.addresses[index][:2], timeout=timeout)
        if transport == "plain":
            return Client(sock)
        if context is None:
            context = self.pki.client_context(tls_version(transport))
        try:
            wrapped = context.wrap_socket(
                sock,
                server_hostname=server_hostname,
                suppress_ragged_eofs=False,
            )
        except BaseException:
            sock.close()
            raise
        return Client(wrapped)

    def wait_drained(self, timeout: float = 5.0) -> None:
        """Wait until the server holds no connection at all."""
        wait_until(lambda: not self.server.connections, timeout, "the connections to drain")

    def request_stop(self) -> None:
        """Call ``driver.stop()`` (from this thread, as a signal handler's thread would);
        fail if it does not return at once."""
        asking = threading.Thread(target=self.driver.stop, name="spcore-conformance-stop")
        asking.daemon = True
        asking.start()
        asking.join(STOP_MARGIN)
        if asking.is_alive():
            raise AssertionError(f"driver.stop() did not return within {STOP_MARGIN:.1f} s")

    def stop(self) -> None:
        """Ask for a graceful shutdown and wait for ``run()`` to return; fail if it hangs."""
        if self._stopped:
            return
        self._stopped = True
        self.request_stop()
        limits = self.server.limits
        budget = limits.shutdown_grace + limits.close_timeout + STOP_MARGIN
        if self._thread is not None:
            self._thread.join(budget)
            if self._thread.is_alive():
                raise AssertionError(
                    f"the driver did not stop: run() still running {budget:.1f} s after stop()"
                )
        if self._error is not None:
            raise AssertionError(f"driver.run() raised {self._error!r}") from self._error

    def _check_alive(self) -> None:
        """Fail at once, with its cause, once ``run()`` has raised."""
        if self._error is not None:
            raise AssertionError(f"driver.run() raised {self._error!r}") from self._error

    def _start(self) -> None:
        def run() -> None:
            try:
                self.driver.run()
            except BaseException as exc:  # reported by stop()
                self._error = exc

        self._thread = threading.Thread(target=run, name="spcore-conformance-driver", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def loop_thread(self) -> int | None:
        """The identity of the thread running ``driver.run()`` (the loop thread)."""
        return None if self._thread is None else self._thread.ident


class _Hosting:
    """An ASGI or WSGI application to host: its spcore app exists before the driver (the
    listeners need it), what it runs is made once the driver is (an ASGI app runs on the
    driver's app loop)."""

    def __init__(self, asgi: Any, wsgi: Any) -> None:
        if asgi is not None and wsgi is not None:
            raise ValueError("serve() takes one of asgi= and wsgi=")
        self.target = asgi if asgi is not None else wsgi
        self.interface = Interface.ASGI if asgi is not None else Interface.WSGI
        self._hosted: Hosted | None = None

    def app(self, request: Request) -> Response | None:
        assert self._hosted is not None
        return self._hosted.app(request)

    def host(self, driver: DriverLike, lifespan: LifespanMode) -> Hosted | None:
        if self.target is None:
            return None
        self._hosted = host_app(self.target, self.interface, driver, lifespan=lifespan)
        return self._hosted


class Serve:
    """Starts the driver under test: ``with serve(app, transport="tls1.3") as served:``.

    ``http`` is the HTTP codec of the listeners it builds for an ``app``; the TLS listeners
    it builds run on ``engine`` (the scenario's TLS engine).
    """

    def __init__(
        self,
        factory: DriverFactory,
        pki: PKI,
        http: str = "auto",
        engine: str | EngineFactory = "openssl",
    ) -> None:
        self.factory = factory
        self.pki = pki
        self.http = http
        self.engine = engine

    @contextlib.contextmanager
    def __call__(
        self,
        app: App | None = None,
        *,
        asgi: Any = None,
        wsgi: Any = None,
        lifespan: LifespanMode = "auto",
        handler: Callable[[], StreamHandler] | None = None,
        transport: Transport = "plain",
        tls: ServerTLS | None = None,
        limits: Limits | None = None,
        listeners: Sequence[Listener] | None = None,
        hosts: Sequence[str] = ("127.0.0.1",),
        allow_errors: bool = False,
    ) -> Iterator[Served]:
        """Serve ``app`` (HTTP), an ASGI 3 or a WSGI application (``asgi``, ``wsgi``: hosted
        as ``spcore serve --app`` does, its lifespan run before and after) or ``handler``
        (stream) with the driver under test.

        One listener per host in ``hosts``, on port 0; TLS with ``tls`` (default: the PKI's
        server certificate) unless ``transport`` is plain. ``listeners`` replaces all of
        that. On exit the driver is stopped and must return within the shutdown grace period
        plus a margin; ``run()`` must not raise, and spcore must not have logged an error
        (unless ``allow_errors``).
        """
        pki = self.pki
        sessions = Sessions()
        hosting = _Hosting(asgi, wsgi)
        if hosting.target is not None:
            app = hosting.app
        if listeners is None:
            config = None
            if transport != "plain":
                config = tls or pki.server_tls()
            if (app is None) == (handler is None):
                raise ValueError("serve() needs exactly one of app=, asgi=, wsgi= and handler=")
            engine = self.engine
            if app is not None:
                listeners = [
                    http_listener(app, host=host, tls=config, tls_engine=engine, http=self.http)
                    for host in hosts
                ]
            else:
                assert handler is not None
                listeners = [
                    stream_listener(
                        handler, host=host, tls=config, tls_engine=engine, sessions=sessions
                    )
                    for host in hosts
                ]
        server = Server(listeners, limits or SUITE_LIMITS)
        driver = self.factory(server)
        hosted = hosting.host(driver, lifespan)
        bound = driver.bind()
        addresses = [tuple(b.address) for b in bound]
        if len(addresses) != len(listeners):
            raise AssertionError(f"bind() returned {len(addresses)} sockets for {len(listeners)}")
        errors = ErrorLog()
        spcore_log = logging.getLogger("spcore")
        spcore_log.addHandler(errors)
        served = Served(server, driver, addresses, transport, pki, sessions, hosted)
        try:
            if hosted is not None:
                hosted.start()
            served._start()
            yield served
            served.stop()
        except Exception:
            served._check_alive()  # a driver that died is the cause, not what the client saw
            raise
        finally:
            if not served._stopped:  # the scenario failed: still stop, but keep its error
                with contextlib.suppress(AssertionError):
                    served.stop()
            if hosted is not None:
                hosted.stop()
            spcore_log.removeHandler(errors)
        if errors.records and not allow_errors:
            lines = "\n".join(f"  {r.name}: {r.getMessage()}" for r in errors.records)
            raise AssertionError(f"spcore logged errors while serving:\n{lines}")
