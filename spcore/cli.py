"""The ``spcore`` command: ``serve``, ``tunnel``, ``drivers``, ``engines``, ``ticket-key`` and
``conformance``.

This is the program's edge, where the sans-IO rules stop: it reads the clock (to date the
development certificate), imports the user's application, binds sockets through a driver (or
adopts those handed in: ``--fd``, systemd's ``LISTEN_FDS``), turns SIGINT/SIGTERM into the
core's graceful shutdown and SIGHUP into a reload of the TLS files (``cli_tls.TLSFiles``).
``--workers`` hands over to the supervisor (spcore.supervisor), which starts this same command
once per worker.

Every mistake a user can make ends in one line, ``spcore: error: <what is wrong>``, on stderr
and exit status 2; a traceback means a bug in spcore.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import importlib
import importlib.util
import inspect
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from . import cli_tls
from .addresses import describe_address, host_port
from .app import LineEcho, builtin_app
from .certs import CertificateError, CertPair, check_cert_key, dev_certificate
from .cli_access import AccessLog
from .cli_metrics import MetricsServer
from .config import Limits

# spcore.drivers lives in drivers/ (setuptools package-dir), which mypy cannot map when it
# checks spcore/ from the source tree; "unused-ignore" keeps this clean where it can.
from .drivers import (  # type: ignore[import-not-found, unused-ignore]
    DRIVERS,
    Driver,
    UnknownDriver,
    choose,
    probe_all,
)
from .drivers.base import Bound  # type: ignore[import-not-found, unused-ignore]
from .drivers.gateway import Hosted, host_app  # type: ignore[import-not-found, unused-ignore]
from .drivers.listening import reuse_port_option  # type: ignore[import-not-found, unused-ignore]
from .gateway.detect import Interface, InterfaceError, detect
from .gateway.lifespan import LifespanError
from .gateway.websocket import MAX_MESSAGE_SIZE
from .http.access import FORMATS
from .http.codecs import CODECS, codec_factory
from .http.messages import App
from .http.protocol import HTTPProtocol
from .layer import ProtocolLayer
from .remote import Remote
from .server import Listener, Server
from .stream import Sessions, StreamProtocol
from .supervisor import (
    EXIT_STARTUP,
    UP,
    ListenFailed,
    Supervisor,
    WorkerSockets,
    cpu_count,
)
from .tls.config import Certificate, ClientCertMode, ClientTLS, ServerTLS, TLSConfigError
from .tunnel import Tunnel

__all__ = ["UsageError", "main"]

log = logging.getLogger("spcore.cli")

EXIT_USAGE = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8443
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class UsageError(Exception):
    """A mistake in the command line or in what it names; shown as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors become one-line ``UsageError``s like every other mistake."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# -- argument types ------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0 to 65535)")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: give a time greater than 0")
    return seconds


def _count(text: str) -> int:
    try:
        count = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count}: give at least 1")
    return count


def _host(text: str) -> str:
    """Accept ``[::1]`` as well as ``::1`` (people copy addresses from URLs)."""
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spcore",
        description="A sans-IO TLS and HTTP/1.1 server core with interchangeable I/O drivers.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the built-in app (or yours) over HTTPS",
        description="Serve HTTPS on 127.0.0.1:8443 with a cached development certificate, "
        "the built-in app and the best driver for this machine. SIGINT or SIGTERM shuts "
        "down gracefully; a second one exits at once. SIGHUP reloads the TLS files and "
        "reopens the access log.",
        allow_abbrev=False,
    )
    listen = serve.add_argument_group("where to listen")
    listen.add_argument(
        "--host",
        action="append",
        type=_host,
        metavar="HOST",
        help="address to listen on; repeat for several (default 127.0.0.1)",
    )
    listen.add_argument("--port", type=_port, help=f"0 picks a free port (default {DEFAULT_PORT})")
    listen.add_argument(
        "--plain-port", type=_port, metavar="PORT", help="also serve plain HTTP on this port"
    )
    listen.add_argument(
        "--proxy-protocol", action="store_true", help="expect a PROXY v1/v2 header first"
    )
    tls = serve.add_argument_group("TLS")
    tls.add_argument("--cert", metavar="FILE", help="PEM certificate (chain); needs --key")
    tls.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    tls.add_argument("--no-tls", action="store_true", help="serve plain HTTP on --port")
    tls.add_argument("--client-ca", metavar="FILE", help="CA file verifying client certificates")
    tls.add_argument(
        "--client-cert",
        choices=("none", "optional", "required"),
        help="ask for client certificates (default: required with --client-ca, else none)",
    )
    cli_tls.add_engine_options(serve)
    what = serve.add_argument_group("what to serve")
    what.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="your application: ASGI 3, WSGI or spcore's app(request), told apart by itself "
        "(see --interface)",
    )
    what.add_argument(
        "--line-echo", action="store_true", help="a line echo (with /all broadcast), not HTTP"
    )
    how = serve.add_argument_group("how")
    how.add_argument("--driver", default="auto", help="I/O driver (see spcore drivers)")
    how.add_argument(
        "--loop",
        choices=("default", "uvloop"),
        help="event loop of drivers that have one (asyncio)",
    )
    how.add_argument(
        "--http",
        choices=("auto", *CODECS),
        help="HTTP/1.1 codec: httptools (llhttp, fast) or h11 (pure Python); default auto: "
        "httptools when installed",
    )
    how.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="idle timeout")
    how.add_argument("--max-connections", type=_count, metavar="N")
    how.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="warning")
    _add_process_options(serve)
    _add_operations_options(serve)
    _add_app_options(serve)
    serve.set_defaults(run=_serve)

    drivers = commands.add_parser(
        "drivers", help="list the drivers and whether they run here", allow_abbrev=False
    )
    drivers.set_defaults(run=_drivers)
    cli_tls.add_tls_commands(commands)

    conformance = commands.add_parser(
        "conformance",
        help="run the conformance suite against drivers",
        description="Run the conformance suite; arguments it does not know go to pytest "
        "(put them after -- to be sure).",
        allow_abbrev=False,
    )
    conformance.add_argument(
        "--driver",
        action="append",
        metavar="NAME",
        help="a driver to certify: a name, module:factory for your own, or all (the "
        "default); repeatable",
    )
    conformance.set_defaults(run=_conformance)
    _add_tunnel(commands)
    return parser


# -- spcore serve ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, _extra: list[str]) -> int:
    _configure_logging(args)
    _check_combinations(args)
    limits = _limits(args)
    driver_cls, driver_options = _driver(args.driver, args.loop)
    handed_in = _handed_in(args)
    if args.workers is not None and args.worker is None:
        return _supervise(args, limits, driver_cls, handed_in)  # (the workers load the app)
    loaded = _load_app(args) if args.app else None
    tls, certfile = _tls_config(args)
    codec = None if args.line_echo else _codec(args.http)
    slot = _AppSlot()
    with contextlib.ExitStack() as stack:
        access = _access_log(args)
        if access is not None:
            stack.callback(access.close)  # after the driver: the last responses are written
        server = _build_server(args, limits, tls, slot, handed_in, codec, access)
        try:
            driver = driver_cls(server, **driver_options)
        except OSError as exc:
            raise UsageError(f"the {driver_cls.name} driver cannot start: {_reason(exc)}") from None
        hosted = _hosted(args, loaded, driver, slot)
        stack.callback(_stop_app, hosted)  # (the ASGI lifespan's shutdown, the app's loop)
        bound = _bind(driver)
        stack.callback(driver.close_listeners)  # (run() closes them; a failed start does not)
        # Every socket is bound before the application starts: a busy port fails first.
        metrics = _metrics(args, server, access)
        if metrics is not None:
            stack.enter_context(metrics)
        server.info["pid"] = os.getpid()
        if not _start_app(hosted):
            return EXIT_STARTUP
        # Signals before the banner (whoever reads it may signal at once), and the thread
        # that reloads the TLS files (on SIGHUP; the OCSP response and ticket keys when they
        # change); SIGHUP also reopens the access log, for logrotate.
        files = stack.enter_context(cli_tls.TLSFiles(_named(bound)))

        def reload() -> None:
            files.reload()
            if access is not None:
                access.reopen()

        where = f", metrics on {_metrics_url(*metrics.address)}" if metrics else ""
        if args.worker is not None:
            server.info["worker"] = args.worker
            with _worker_signals(driver, reload):
                line = _banner(args, driver.name, codec, bound, None, app=loaded)
                log.info("%s%s", line.removeprefix("spcore: "), where)
                _report_up(args.worker_link, driver)
                driver.run()
            return 0
        with _stop_on_signals(driver, reload):
            banner = _banner(args, driver.name, codec, bound, certfile, app=loaded)
            print(banner + where, flush=True)
            driver.run()
    return 0


def _configure_logging(args: argparse.Namespace) -> None:
    """Log lines name the process: ``[worker 1, pid 4242]``, ``[supervisor, pid 4241]``."""
    who = ""
    if args.worker is not None:
        who = f" [worker {args.worker}, pid %(process)d]"
    elif args.workers is not None:
        who = " [supervisor, pid %(process)d]"
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s",
    )


def _check_combinations(args: argparse.Namespace) -> None:
    if args.no_tls:
        for given, option in (
            (args.cert or args.key, "--cert/--key"),
            (args.client_ca or args.client_cert, "--client-ca/--client-cert"),
            (args.ocsp_response or args.ticket_key_file, "--ocsp-response/--ticket-key-file"),
            (args.plain_port is not None, "--plain-port (--port is already plain)"),
        ):
            if given:
                raise UsageError(f"--no-tls cannot be combined with {option}")
    if (args.cert is None) != (args.key is None):
        raise UsageError(
            "give both --cert and --key, or neither to use the development certificate"
        )
    port = DEFAULT_PORT if args.port is None else args.port
    if args.plain_port and args.plain_port == port:
        raise UsageError(f"--plain-port and --port are both {port}; give two ports")
    if args.app and args.line_echo:
        raise UsageError("--app and --line-echo exclude each other")
    if args.http and args.line_echo:
        raise UsageError("--http applies to HTTP, and --line-echo serves lines")
    _check_process_options(args)
    _check_operations_options(args)
    _check_app_options(args)


def _limits(args: argparse.Namespace) -> Limits:
    overrides: dict[str, Any] = {}
    if args.timeout is not None:
        overrides["idle_timeout"] = args.timeout
    if args.max_connections is not None:
        overrides["max_connections"] = args.max_connections
    if args.threads is not None:
        overrides["worker_threads"] = args.threads
    if args.max_body_size is not None:
        overrides["max_body_size"] = args.max_body_size
    return Limits(**overrides)


def _codec(name: str | None) -> str:
    """The HTTP codec's name, "auto" resolved; a codec that cannot load is a usage error."""
    try:
        return codec_factory(name or "auto")[0]
    except ImportError:
        raise UsageError(f"--http {name} needs {name} (pip install {name})") from None


def _driver(name: str, loop: str | None) -> tuple[type[Driver[Any]], dict[str, Any]]:
    try:
        driver_cls = choose(name)
    except UnknownDriver as exc:
        raise UsageError(str(exc)) from None
    options: dict[str, Any] = {}
    if loop is not None:
        if "loop" not in inspect.signature(driver_cls).parameters:
            raise UsageError(
                f"--loop applies to drivers with an event loop (--driver asyncio); "
                f"the {driver_cls.name} driver has none"
            )
        if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise UsageError("--loop uvloop needs uvloop (pip install 'spcore[uvloop]')")
        options["loop"] = loop
    return driver_cls, options


def _tls_config(
    args: argparse.Namespace, alpn: Sequence[str] | None = None
) -> tuple[ServerTLS | None, Path | None]:
    """The listeners' TLS configuration and the certificate file it serves (None for
    --no-tls); ALPN offers ``alpn`` (default: what the served protocol speaks)."""
    if args.no_tls:
        return None, None
    if args.cert is not None:
        pair = CertPair(Path(args.cert), Path(args.key))
        try:
            check_cert_key(pair.certfile, pair.keyfile)
        except CertificateError as exc:
            raise UsageError(_sentence(str(exc))) from None
    else:
        try:
            pair = dev_certificate(datetime.datetime.now(datetime.timezone.utc))
        except CertificateError as exc:
            raise UsageError(_sentence(str(exc))) from None
    client_cert: ClientCertMode = "none"
    if args.client_cert is not None:
        client_cert = args.client_cert
    elif args.client_ca:
        client_cert = "required"
    if client_cert != "none" and not args.client_ca:
        raise UsageError(f"--client-cert {client_cert} needs --client-ca FILE to verify them")
    if args.client_ca and client_cert == "none":
        raise UsageError("--client-ca is unused with --client-cert none")
    if args.client_ca and not os.path.isfile(args.client_ca):
        raise UsageError(f"the client CA file {args.client_ca} does not exist")
    if alpn is None:
        alpn = () if args.line_echo else ("http/1.1",)
    try:
        return cli_tls.server_tls(args, pair, client_cert, alpn), pair.certfile
    except TLSConfigError as exc:
        raise UsageError(str(exc)) from None


def _build_server(
    args: argparse.Namespace,
    limits: Limits,
    tls: ServerTLS | None,
    slot: _AppSlot,
    handed_in: list[tuple[int, bool]],
    codec: str | None,
    access: AccessLog | None = None,
) -> Server:
    idle = args.timeout if args.timeout is not None else LineEcho.idle_timeout
    sessions = Sessions()  # one chat room across every listener

    def protocol() -> ProtocolLayer:
        if args.line_echo:
            return StreamProtocol(LineEcho(idle), sessions)
        app = slot.app
        assert app is not None and codec is not None  # set before the driver accepts anything
        return HTTPProtocol(app, http=codec, access_log=access)

    server = Server(_listeners(args, protocol, tls, handed_in), limits)
    if not args.app:
        slot.app = builtin_app(server)  # it shows the server's counters, so it needs the server
    return server


def _listeners(
    args: argparse.Namespace,
    protocol: Callable[[], ProtocolLayer],
    tls: ServerTLS | None,
    handed_in: list[tuple[int, bool]],
) -> list[Listener]:
    """Sockets handed in, then Unix sockets, then TCP ones on each host: ``--port`` unless
    only sockets of the other kinds were asked for, and ``--plain-port``.

    A worker serves exactly the sockets its supervisor bound (``--worker-socket``). Each TLS
    listener has the engine build its state, reading every file the configuration names: a
    supervisor so finds a bad one before it starts any worker."""

    def listener(plain: bool, **where: Any) -> Listener:
        try:
            return Listener(
                protocol,
                tls=None if plain else tls,
                proxy_protocol=args.proxy_protocol,
                tls_engine=args.tls_engine,
                **where,
            )
        except TLSConfigError as exc:
            raise UsageError(f"cannot set up TLS: {exc}") from None

    if args.worker is not None:
        return [listener(plain, fd=fd) for fd, plain in args.worker_socket]
    listeners = [listener(plain, fd=fd) for fd, plain in handed_in]
    listeners += [listener(False, path=path, mode=args.uds_mode) for path in args.uds or []]
    main_tcp = args.host is not None or args.port is not None or not listeners
    port = DEFAULT_PORT if args.port is None else args.port
    for host in args.host or [DEFAULT_HOST]:
        if main_tcp:
            listeners.append(listener(False, host=host, port=port))
        if args.plain_port is not None:
            listeners.append(listener(True, host=host, port=args.plain_port))
    return listeners


def _bind(driver: Driver[Any]) -> list[Bound]:
    try:
        bound: list[Bound] = driver.bind()
    except OSError as exc:
        listeners = driver.server.listeners
        failed = listeners[len(driver.bound)] if len(driver.bound) < len(listeners) else None
        raise UsageError(_bind_error(exc, failed)) from None
    return bound


def _bind_error(exc: OSError, listener: Listener | None) -> str:
    if listener is None:
        return f"cannot listen: {_reason(exc)}"
    where = listener.where
    if listener.fd is not None:
        return f"cannot serve {where}: {_reason(exc)}"
    if listener.path is not None:
        return f"cannot listen on {where}: {_reason(exc)}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: unknown host ({_reason(exc)})"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: the address is not available on this machine"
    if exc.errno == errno.EACCES and 0 < listener.port < 1024:
        return f"cannot listen on {where}: ports below 1024 need privileges"
    return f"cannot listen on {where}: {_reason(exc)}"


def _banner(
    args: argparse.Namespace,
    driver: str,
    codec: str | None,
    bound: list[Bound],
    certfile: Path | None,
    workers: list[int] | None = None,
    *,
    app: LoadedApp | None = None,
) -> str:
    """``spcore: serving https://127.0.0.1:8443/ with the selectors driver and the httptools
    codec (certificate: ...)``; with workers, ``... with the uring driver and the httptools
    codec in 2 workers, pids 4242, 4243 (certificate: ...)``."""
    line = f"spcore: serving {_listing(args, bound)} with the {driver} driver"
    if codec is not None:
        line += f" and the {codec} codec"
    if app is not None:
        line += f", the {app.interface.title} app {app.spec}"
    elif args.app:  # (a supervisor's: its workers load the app)
        line += f", the app {args.app}"
    if workers is not None:
        pids = ", ".join(map(str, workers))
        line += f" in {len(workers)} workers, pid{'s' if len(workers) > 1 else ''} {pids}"
    if certfile is not None:
        line += f" (certificate: {_display_path(certfile)})"
    return line


def _listing(args: argparse.Namespace, bound: list[Bound]) -> str:
    """``https://127.0.0.1:8443/ and unix:/run/spcore.sock (http)``."""
    urls = []
    for each in bound:
        secure = each.listener.tls is not None
        scheme = ("tls", "tcp")[not secure] if args.line_echo else ("https", "http")[not secure]
        name = each.sock.getsockname()
        if isinstance(name, tuple):
            urls.append(f"{scheme}://{host_port(name[0], name[1])}{'' if args.line_echo else '/'}")
        else:
            urls.append(f"{describe_address(name)} ({scheme})")
    listing = urls[0] if len(urls) == 1 else ", ".join(urls[:-1]) + " and " + urls[-1]
    return ("line echo on " if args.line_echo else "") + listing


def _named(bound: list[Bound]) -> list[tuple[str, Listener]]:
    """Each listener with the address it is bound to (``127.0.0.1:8443``), for logs."""
    return [(describe_address(each.sock.getsockname()), each.listener) for each in bound]


def _display_path(path: Path) -> str:
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def _stop_on_signals(driver: Driver[Any], reload: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM: graceful shutdown; a second one: exit at once with status 1. SIGHUP:
    ``reload`` (the TLS files, the access log)."""
    received = 0

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        # os.write: print() is not safe in a handler that may interrupt another print.
        if received > 1:
            os.write(2, b"spcore: second signal, exiting at once\n")
            for bound in driver.bound:  # what a normal exit would remove (Unix socket files)
                bound.close()
            os._exit(1)
        os.write(2, b"spcore: shutting down gracefully (signal again to exit at once)\n")
        driver.stop()

    handlers: dict[int, Any] = {signal.SIGINT: stop, signal.SIGTERM: stop}
    if hasattr(signal, "SIGBREAK"):  # Ctrl-Break on Windows
        handlers[signal.SIGBREAK] = stop
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda signum, frame: reload()
    with _signal_handlers(handlers):
        yield


@contextlib.contextmanager
def _worker_signals(driver: Driver[Any], reload: Callable[[], None]) -> Iterator[None]:
    """A worker's signals come from its supervisor: SIGTERM begins the graceful shutdown (once:
    the supervisor escalates with SIGKILL), SIGHUP ``reload`` (the supervisor passes it on to
    each worker); SIGINT is ignored (Ctrl-C in a terminal reaches the whole
    process group, and the supervisor handles it)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if not driver.server.shutting_down:
            log.info("shutting down gracefully")
            driver.stop()

    handlers: dict[int, Any] = {
        signal.SIGTERM: stop,
        signal.SIGHUP: lambda signum, frame: reload(),
        signal.SIGINT: signal.SIG_IGN,
    }
    with _signal_handlers(handlers):
        yield


@contextlib.contextmanager
def _signal_handlers(handlers: dict[int, Any]) -> Iterator[None]:
    previous: dict[int, Any] = {sig: signal.signal(sig, new) for sig, new in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the access log and the admin listener -----------------------------------------------------


def _add_operations_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("access log and metrics")
    group.add_argument(
        "--access-log",
        nargs="?",
        const="-",
        metavar="FILE",
        help="one line per response, to FILE (appended; reopened on SIGHUP) or - (standard "
        "output, the default FILE); off unless given",
    )
    group.add_argument(
        "--access-log-format",
        choices=list(FORMATS),
        default="combined",
        help="common, combined (the default: common plus referer and user agent) or json",
    )
    group.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus /metrics and /healthz on this port, a listener of their own "
        "(with --workers, worker N on PORT+N)",
    )
    group.add_argument(
        "--metrics-host",
        type=_host,
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"address of the metrics listener (default {DEFAULT_HOST})",
    )


def _check_operations_options(args: argparse.Namespace) -> None:
    if args.line_echo and args.access_log is not None:
        raise UsageError("--access-log logs HTTP responses, and --line-echo serves lines")
    port = args.metrics_port
    if port is None:
        return
    if importlib.util.find_spec("prometheus_client") is None:
        raise UsageError("--metrics-port needs prometheus_client (pip install 'spcore[metrics]')")
    if args.workers is not None:
        if port == 0:
            raise UsageError(
                "--metrics-port 0 with --workers: give a port; worker N listens on PORT+N"
            )
        if port + args.workers - 1 > 65535:
            raise UsageError(f"--metrics-port {port} leaves no port for worker {args.workers - 1}")


def _access_log(args: argparse.Namespace) -> AccessLog | None:
    if args.access_log is None:
        return None
    try:
        return AccessLog(args.access_log, FORMATS[args.access_log_format])
    except OSError as exc:
        raise UsageError(f"cannot open the access log {args.access_log}: {_reason(exc)}") from None


def _metrics(
    args: argparse.Namespace, server: Server, access: AccessLog | None
) -> MetricsServer | None:
    """The admin listener, bound; None without one."""
    if args.metrics_port is None:
        return None
    index = args.worker or 0
    port = args.metrics_port + index if args.metrics_port else 0
    where = host_port(args.metrics_host, port)
    try:
        return MetricsServer(
            args.metrics_host,
            port,
            server,
            str(index),
            None if access is None else lambda: access.dropped,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"cannot listen on {where} (metrics): the port is already in use"
            ) from None
        raise UsageError(f"cannot listen on {where} (metrics): {_reason(exc)}") from None


def _metrics_url(host: str, port: int) -> str:
    return f"http://{host_port(host, port)}/metrics"


# -- workers and the sockets they serve --------------------------------------------------------


def _add_process_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("processes and sockets")
    group.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="run N worker processes under a supervisor that restarts them (0 or auto: one "
        "per CPU); without it, this process serves",
    )
    group.add_argument(
        "--balance",
        choices=("reuseport", "shared"),
        help="how workers share a TCP address: a SO_REUSEPORT socket each, the kernel "
        "spreading connections (default on Linux and FreeBSD), or one socket they all "
        "accept from (the default elsewhere; always for Unix and handed-in sockets)",
    )
    group.add_argument(
        "--fd",
        action="append",
        type=_fd,
        metavar="FD",
        help="serve this inherited, listening socket (repeatable); systemd socket activation "
        "(LISTEN_FDS) is used by itself",
    )
    group.add_argument(
        "--uds", action="append", metavar="PATH", help="listen on a Unix domain socket"
    )
    group.add_argument(
        "--uds-mode",
        type=_mode,
        default=0o666,
        metavar="MODE",
        help="permissions of the --uds file, in octal (default 666, as systemd's SocketMode)",
    )
    # How a supervisor starts a worker (spcore.supervisor.worker_arguments); not for users.
    group.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    group.add_argument("--worker-link", type=int, help=argparse.SUPPRESS)
    group.add_argument(
        "--worker-socket", action="append", type=_worker_socket, default=[], help=argparse.SUPPRESS
    )


def _workers(text: str) -> int:
    count = cpu_count() if text == "auto" else _integer(text, "a number of workers")
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count}: give 1 or more, or 0 or auto for one per CPU")
    return count or cpu_count()


def _fd(text: str) -> int:
    fd = _integer(text, "a file descriptor number")
    if fd < 0:
        raise argparse.ArgumentTypeError(f"{fd} is not a file descriptor number")
    return fd


def _integer(text: str, what: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _mode(text: str) -> int:
    try:
        mode = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text}: give permission bits, 0 to 777")
    return mode


def _worker_socket(text: str) -> tuple[int, bool]:
    fd, _, kind = text.partition(":")
    return int(fd), kind == "plain"


def _check_process_options(args: argparse.Namespace) -> None:
    posix = sys.platform != "win32"
    if args.workers is not None and not posix:
        raise UsageError("--workers needs a POSIX system (Linux, BSD, macOS)")
    if args.balance is not None:
        if args.workers is None:
            raise UsageError("--balance applies to --workers")
        if args.balance == "reuseport" and reuse_port_option() is None:
            raise UsageError(
                "SO_REUSEPORT does not balance connections on this system; use --balance shared"
            )
    if args.fd and not posix:
        raise UsageError("--fd needs a POSIX system")
    if args.uds and not hasattr(socket, "AF_UNIX"):
        raise UsageError("--uds: this system has no Unix domain sockets")


def _handed_in(args: argparse.Namespace) -> list[tuple[int, bool]]:
    """The sockets handed in, as (fd, plain): ``--fd``, then systemd's."""
    return [(fd, False) for fd in args.fd or []] + _systemd_sockets()


def _systemd_sockets() -> list[tuple[int, bool]]:
    """The sockets of systemd socket activation (sd_listen_fds(3)): fds 3 on, when
    ``LISTEN_PID`` is this process. One named ``plain`` (``FileDescriptorName=plain``) serves
    plain HTTP beside TLS, as ``--plain-port`` does. The variables are removed, so that the
    processes the app starts do not take the sockets for theirs."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    names = os.environ.get("LISTEN_FDNAMES", "")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    if pid is None or count is None or pid.strip() != str(os.getpid()):
        return []
    if not count.isdigit():
        raise UsageError(f"LISTEN_FDS={count!r} is not a number of sockets")
    labels = names.split(":") if names else []
    return [
        (SD_LISTEN_FDS_START + i, i < len(labels) and labels[i] == "plain")
        for i in range(int(count))
    ]


#: The first fd of systemd socket activation.
SD_LISTEN_FDS_START = 3

#: A worker's interpreter imports the spcore its supervisor runs: the directory that one came
#: from goes first on sys.path, unless it is on it already.
_WORKER_BOOT = (
    "import sys; where = sys.argv.pop(1); where in sys.path or sys.path.insert(0, where); "
    "from spcore.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _supervise(
    args: argparse.Namespace,
    limits: Limits,
    driver_cls: type[Driver[Any]],
    handed_in: list[tuple[int, bool]],
) -> int:
    """``--workers N``: check what can be checked here (the TLS files, read by the chosen TLS
    engine; the development certificate is made once, here), bind the sockets, and run the
    workers. They get this command line, TLS engine and files included."""
    tls, certfile = _tls_config(args)
    codec = None if args.line_echo else _codec(args.http)

    def no_protocol() -> ProtocolLayer:
        raise AssertionError("the supervisor serves no connection")

    listeners = _listeners(args, no_protocol, tls, handed_in)
    reuse_port = (args.balance or ("reuseport" if reuse_port_option() else "shared")) == "reuseport"
    try:
        sockets = WorkerSockets(listeners, args.workers, reuse_port, limits.listen_backlog)
    except ListenFailed as exc:
        raise UsageError(_bind_error(exc.error, exc.listener)) from None
    package_root = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, "-c", _WORKER_BOOT, package_root, *args.argv]

    def announce(pids: list[int]) -> None:
        line = _banner(args, driver_cls.name, codec, sockets.of(0), certfile, pids)
        if args.metrics_port is not None:
            url = _metrics_url(args.metrics_host, args.metrics_port)
            line += f", metrics on {url} (worker N: port {args.metrics_port}+N)"
        print(line, flush=True)

    supervisor = Supervisor(
        args.workers,
        sockets,
        command,
        stop_timeout=limits.shutdown_grace + STOP_MARGIN,
        announce=announce,
    )
    return supervisor.run()


#: How long past the server's grace period the supervisor waits for a worker to stop.
STOP_MARGIN = 5.0


def _report_up(link_fd: int | None, driver: Driver[Any]) -> None:
    """Tell the supervisor this worker is up; and stop gracefully when the link closes: the
    supervisor is gone (even killed), and a worker must not outlive it."""
    if link_fd is None:
        return
    link = socket.socket(fileno=link_fd)
    link.setblocking(True)
    link.sendall(UP)

    def watch() -> None:
        with link:
            while True:
                try:
                    if not link.recv(64):
                        break
                except OSError:
                    break
        if not driver.server.shutting_down:
            log.warning("the supervisor is gone; shutting down")
            driver.stop()

    threading.Thread(target=watch, name="spcore-supervisor-link", daemon=True).start()


# -- the application: its interface, its loop, its startup -------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedApp:
    """The object ``--app`` names, and the interface it speaks."""

    spec: str
    target: Any
    interface: Interface


class _AppSlot:
    """The app the HTTP listeners run, set before the driver accepts anything (an ASGI
    application's loop is the driver's, so its host is made after the driver)."""

    app: App | None = None


def _add_app_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("the application (--app)")
    group.add_argument(
        "--interface",
        choices=("auto", *(kind.value for kind in Interface)),
        default="auto",
        help="the interface --app speaks; auto (the default) tells ASGI 3 (a coroutine "
        "function of scope, receive, send), WSGI (environ, start_response) and spcore "
        "(request) apart",
    )
    group.add_argument(
        "--factory", action="store_true", help="--app names a factory: call it for the app"
    )
    group.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        help="the ASGI lifespan protocol: auto (the default) uses it if the app does; on: a "
        "startup that fails or is not answered stops the server (exit status 3)",
    )
    group.add_argument(
        "--root-path",
        metavar="PATH",
        help="where a proxy mounts the app: ASGI's root_path, WSGI's SCRIPT_NAME",
    )
    group.add_argument(
        "--threads",
        type=_count,
        metavar="N",
        help="worker threads for WSGI calls and blocking apps (default 16)",
    )
    group.add_argument(
        "--max-body-size",
        type=_count,
        metavar="BYTES",
        help="the largest request body (default 64 MiB; 413 beyond it)",
    )
    group.add_argument(
        "--ws-max-size",
        type=_count,
        metavar="BYTES",
        help=f"the largest WebSocket message an ASGI app receives (default {MAX_MESSAGE_SIZE})",
    )


def _check_app_options(args: argparse.Namespace) -> None:
    if args.app:
        return
    for given, option in (
        (args.interface != "auto", "--interface"),
        (args.factory, "--factory"),
        (args.lifespan is not None, "--lifespan"),
        (args.root_path is not None, "--root-path"),
        (args.ws_max_size is not None, "--ws-max-size"),
    ):
        if given:
            raise UsageError(f"{option} applies to --app")


def _load_app(args: argparse.Namespace) -> LoadedApp:
    """Import ``module:attribute`` the way uvicorn does, from the current directory too; call
    it with ``--factory``; tell its interface (a mismatch is a usage error here, at start)."""
    spec: str = args.app
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--app takes MODULE:ATTRIBUTE (like myapp:app), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(f"cannot import the app: there is no module {module_name!r}") from None
        raise UsageError(f"importing {module_name!r} failed: {exc}") from None
    except (Exception, SystemExit) as exc:  # the user's module raised (or exited) on import
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if args.factory:
        if not callable(target):
            raise UsageError(f"--factory: {spec} is a {type(target).__name__}, not a callable")
        try:
            target = target()
        except Exception as exc:
            raise UsageError(f"--factory: {spec}() raised {type(exc).__name__}: {exc}") from None
    try:
        interface = detect(target, args.interface)
    except InterfaceError as exc:
        raise UsageError(f"--app {spec}: {exc}") from None
    return LoadedApp(spec, target, interface)


def _hosted(
    args: argparse.Namespace, loaded: LoadedApp | None, driver: Driver[Any], slot: _AppSlot
) -> Hosted | None:
    """Host the loaded application on ``driver``; what the listeners run goes into ``slot``."""
    if loaded is None:
        return None
    hosted = host_app(
        loaded.target,
        loaded.interface,
        driver,
        root_path=args.root_path or "",
        lifespan=args.lifespan or "auto",
        ws_max_size=args.ws_max_size or MAX_MESSAGE_SIZE,
        multiprocess=args.workers is not None or args.worker is not None,
    )
    slot.app = hosted.app
    return hosted


def _start_app(hosted: Hosted | None) -> bool:
    """The application's startup (ASGI lifespan); False, and one line on stderr, if it
    failed."""
    if hosted is None:
        return True
    try:
        hosted.start()
    except LifespanError as exc:
        print(f"spcore: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        hosted.lifespan = None  # no shutdown after a failed startup
        return False
    except KeyboardInterrupt:  # Ctrl-C before the startup ended (the app's loop is closed)
        if hosted.lifespan is not None:
            hosted.lifespan.abandon()
        hosted.lifespan = None  # no shutdown for an app still starting: it would wait on it
        raise
    return True


def _stop_app(hosted: Hosted | None) -> None:
    """The application's shutdown (ASGI lifespan), once the driver has returned."""
    if hosted is None:
        return
    try:
        hosted.stop()
    except LifespanError as exc:
        log.error("%s", exc)


# -- spcore drivers ----------------------------------------------------------------------------


def _drivers(_args: argparse.Namespace, _extra: list[str]) -> int:
    rows = [("name", "model", "available", "reason")]
    for spec, ok, why in probe_all():
        rows.append((spec.name, spec.model, "yes" if ok else "no", " ".join(why.split())))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))
    try:
        picked = choose("auto")
    except UnknownDriver as exc:
        print(f"\nauto: {exc}")
        return 1
    print(f"\nauto picks: {picked.name}")
    return 0


# -- spcore conformance ------------------------------------------------------------------------


def _conformance(args: argparse.Namespace, extra: list[str]) -> int:
    names: list[str] = args.driver or ["all"]
    drivers: list[str] | None
    if "all" in names:
        if len(names) > 1:
            raise UsageError("--driver all already includes every driver")
        drivers = None
    else:
        for name in names:
            if name not in DRIVERS and ":" not in name:  # module:factory is a third party's
                known = ", ".join(DRIVERS)
                raise UsageError(
                    f"unknown driver {name!r} (known: {known}, all, or module:factory for yours)"
                )
        drivers = names
    pytest_args = list(extra)
    if "--" in pytest_args:
        pytest_args.remove("--")  # the first one only: it separated our options from pytest's
    if importlib.util.find_spec("pytest") is None:
        raise UsageError("the conformance suite runs on pytest: pip install 'spcore[conformance]'")
    from .conformance import run  # imported late: it pulls in pytest

    return int(run(drivers, pytest_args))


# -- spcore tunnel -----------------------------------------------------------------------------

#: What ``--accept`` and ``--connect`` take: (host, port), or ("unix", path).
_Endpoint = tuple[str, Any]


def _endpoint(text: str) -> _Endpoint:
    """``HOST:PORT`` (``[::1]:443`` for IPv6), or ``unix:PATH``."""
    if text.startswith("unix:"):
        if len(text) == len("unix:"):
            raise argparse.ArgumentTypeError("unix: needs the socket's path (unix:/run/app.sock)")
        return "unix", text[len("unix:") :]
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT (or unix:PATH)")
    return _host(host), _port(port)


def _add_tunnel(commands: Any) -> None:
    tunnel = commands.add_parser(
        "tunnel",
        help="relay connections to a backend, terminating or originating TLS (like stunnel)",
        description="Accept connections and relay each one to the backend: TLS in and plaintext "
        "out by default (terminate), or --in plain --out tls (originate: the backend's "
        "certificate is verified, with SNI), or TLS both ways. SIGINT or SIGTERM shuts down "
        "gracefully; SIGHUP reloads the accepting side's TLS files.",
        allow_abbrev=False,
    )
    ends = tunnel.add_argument_group("the two ends")
    ends.add_argument(
        "--accept",
        required=True,
        type=_endpoint,
        metavar="HOST:PORT",
        help="where clients connect (port 0 picks one; unix:PATH for a socket)",
    )
    ends.add_argument(
        "--connect",
        required=True,
        type=_endpoint,
        metavar="HOST:PORT",
        help="the backend (a name is resolved once, at start; unix:PATH)",
    )
    ends.add_argument(
        "--in",
        dest="tls_in",
        choices=("tls", "plain"),
        default="tls",
        help="what clients speak (default tls)",
    )
    ends.add_argument(
        "--out",
        dest="tls_out",
        choices=("plain", "tls"),
        default="plain",
        help="what the backend speaks (default plain)",
    )
    tls_in = tunnel.add_argument_group("TLS in (--in tls)")
    tls_in.add_argument(
        "--cert",
        metavar="FILE",
        help="PEM certificate (chain); needs --key (default: the development certificate)",
    )
    tls_in.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    tls_in.add_argument("--client-ca", metavar="FILE", help="CA file verifying client certificates")
    tls_in.add_argument(
        "--client-cert",
        choices=("none", "optional", "required"),
        help="ask for client certificates (default: required with --client-ca)",
    )
    tls_in.add_argument(
        "--alpn",
        action="append",
        metavar="PROTOCOL",
        help="an ALPN protocol to accept (repeatable; default none)",
    )
    tls_out = tunnel.add_argument_group("TLS out (--out tls)")
    tls_out.add_argument(
        "--connect-ca",
        metavar="FILE",
        help="CA file verifying the backend (default: the system's store)",
    )
    tls_out.add_argument(
        "--connect-name",
        metavar="NAME",
        help="the name sent as SNI and verified (default: the --connect host)",
    )
    tls_out.add_argument("--connect-cert", metavar="FILE", help="a client certificate to present")
    tls_out.add_argument("--connect-key", metavar="FILE", help="the private key of --connect-cert")
    tls_out.add_argument(
        "--connect-alpn",
        action="append",
        metavar="PROTOCOL",
        help="an ALPN protocol to offer the backend (repeatable)",
    )
    how = tunnel.add_argument_group("how")
    how.add_argument(
        "--send-proxy",
        choices=("v1", "v2"),
        help="send the backend a PROXY protocol header naming the client",
    )
    how.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY v1/v2 header from clients first",
    )
    how.add_argument(
        "--connect-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"for the backend's connect (default {Limits.connect_timeout:g})",
    )
    how.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=3600.0,
        help="close a tunnel idle this long either way (default 3600)",
    )
    how.add_argument("--max-connections", type=_count, metavar="N", help="clients at once")
    how.add_argument(
        "--driver",
        default="selectors",
        help="I/O driver (default selectors, which relays with the least CPU here: see "
        "docs/benchmarks.md; auto, or any of spcore drivers)",
    )
    how.add_argument(
        "--loop",
        choices=("default", "uvloop"),
        help="event loop of drivers that have one (asyncio)",
    )
    how.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="warning")
    cli_tls.add_engine_options(tunnel)
    tunnel.set_defaults(run=_tunnel, worker=None, workers=None, no_tls=False)


def _tunnel(args: argparse.Namespace, _extra: list[str]) -> int:
    _configure_logging(args)
    _check_tunnel_options(args)
    driver_cls, driver_options = _driver(args.driver, args.loop)
    if not driver_cls.connects:
        raise UsageError(f"the {driver_cls.name} driver makes no outbound connections")
    server_tls, certfile, client_tls = _tunnel_tls(args)
    tunnel = Tunnel(
        _backend(args.connect, client_tls, args.connect_name, args.tls_engine),
        proxy_header=args.send_proxy,
        idle_timeout=args.idle_timeout,
    )
    host, where = args.accept
    place: dict[str, Any] = {"path": where} if host == "unix" else {"host": host, "port": where}
    listener = tunnel.listener(
        tls=server_tls, tls_engine=args.tls_engine, proxy_protocol=args.proxy_protocol, **place
    )
    overrides: dict[str, Any] = {}
    if args.connect_timeout is not None:
        overrides["connect_timeout"] = args.connect_timeout
    if args.max_connections is not None:
        overrides["max_connections"] = args.max_connections
    server = Server([listener], Limits(**overrides))
    try:
        driver = driver_cls(server, **driver_options)
    except OSError as exc:
        raise UsageError(f"the {driver_cls.name} driver cannot start: {_reason(exc)}") from None
    (bound,) = _bind(driver)
    # As serve does: SIGHUP (and a changed OCSP or ticket key file) reloads the TLS files.
    files = cli_tls.TLSFiles(_named([bound]))
    with _stop_on_signals(driver, files.reload), files:
        scheme = "tls" if server_tls is not None else "tcp"
        line = f"spcore: tunnel from {_url(scheme, bound.sock.getsockname())} to "
        line += f"{_url(args.tls_out.replace('plain', 'tcp'), tunnel.backend.address)}"
        line += f" with the {driver.name} driver"
        if certfile is not None:
            line += f" (certificate: {_display_path(certfile)})"
        print(line, flush=True)
        driver.run()
    return 0


def _check_tunnel_options(args: argparse.Namespace) -> None:
    for side, unused, options in (
        (
            "--in",
            args.tls_in == "plain",
            ("cert", "key", "client_ca", "client_cert", "alpn", "ocsp_response", "ticket_key_file"),
        ),
        (
            "--out",
            args.tls_out == "plain",
            ("connect_ca", "connect_name", "connect_cert", "connect_key", "connect_alpn"),
        ),
    ):
        given = [f"--{name.replace('_', '-')}" for name in options if getattr(args, name)]
        if unused and given:
            verb = "needs" if len(given) == 1 else "need"
            raise UsageError(f"{'/'.join(given)} {verb} {side} tls")
    if (args.cert is None) != (args.key is None):
        raise UsageError(
            "give both --cert and --key, or neither to use the development certificate"
        )
    if args.connect_key is not None and args.connect_cert is None:
        raise UsageError("--connect-key needs --connect-cert")


def _tunnel_tls(args: argparse.Namespace) -> tuple[ServerTLS | None, Path | None, ClientTLS | None]:
    """The tunnel's TLS, made in this one place: the server side (``--in tls``) with the
    certificate file it serves, and the client side (``--out tls``), one engine for both."""
    server_tls, certfile = (None, None)
    if args.tls_in == "tls":
        server_tls, certfile = _tls_config(args, args.alpn or ())
    if args.tls_out == "plain":
        return server_tls, certfile, None
    for option, path in (("--connect-ca", args.connect_ca), ("--connect-cert", args.connect_cert)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{option}: the file {path} does not exist")
    certificate = None
    if args.connect_cert is not None:
        certificate = Certificate(args.connect_cert, args.connect_key or args.connect_cert)
    try:
        client_tls = ClientTLS(
            trust=args.connect_ca,
            certificate=certificate,
            alpn=tuple(args.connect_alpn or ()),
            profile=args.tls_profile,
        )
    except TLSConfigError as exc:
        raise UsageError(f"cannot set up TLS to the backend: {exc}") from None
    return server_tls, certfile, client_tls


def _backend(endpoint: _Endpoint, tls: ClientTLS | None, name: str | None, engine: str) -> Remote:
    """The backend, its name resolved now (neither the core nor a driver resolves names:
    stunnel's default, ``delay = no``, does the same); its TLS state built now, so that a
    bad client certificate or CA file is an error at start."""
    host, where = endpoint
    if host == "unix":
        if tls is not None and name is None:
            raise UsageError("--connect unix:... with --out tls needs --connect-name")
        place: dict[str, Any] = {"path": where}
    else:
        try:
            infos = socket.getaddrinfo(host, where, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UsageError(f"cannot resolve the backend {host!r}: {exc}") from None
        address = str(infos[0][4][0])
        if name is None and address != host:
            name = host  # verified as the name given, not as the address it resolved to
        place = {"host": address, "port": where}
    if tls is not None and name is not None:
        tls = dataclasses.replace(tls, server_name=name)
    try:
        return Remote(tls=tls, tls_engine=engine, **place)
    except TLSConfigError as exc:
        raise UsageError(f"cannot set up TLS to the backend: {exc}") from None


def _url(scheme: str, address: Any) -> str:
    """``tls://127.0.0.1:8443``, ``unix:/run/app.sock (tls)``."""
    if isinstance(address, tuple):
        return f"{scheme}://{host_port(address[0], address[1])}"
    return f"{describe_address(address)} ({scheme})"


# -- main ----------------------------------------------------------------------------------------


def _reason(exc: OSError) -> str:
    """The OS's or OpenSSL's words, without OpenSSL's source location."""
    return re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc.strerror or exc))


def _sentence(message: str) -> str:
    """A library's "The file ... ." as the tail of ``spcore: error: the file ...``."""
    message = message.rstrip(".")
    return message[:1].lower() + message[1:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the exit status."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # a supervisor's workers get it
        if args.command is None:
            raise UsageError(
                "name a command: serve, tunnel, drivers, engines, ticket-key or conformance "
                "(see spcore --help)"
            )
        if extra and args.command != "conformance":
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        command: Callable[[argparse.Namespace, list[str]], int] = args.run
        return command(args, extra)
    except (UsageError, TLSConfigError) as exc:
        message = " ".join(str(exc).split())
        print(f"spcore: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
