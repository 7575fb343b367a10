"""The ``spcore`` command: ``serve``, ``drivers``, ``engines``, ``ticket-key`` and ``conformance``.

This is the program's edge, where the sans-IO rules stop: it reads the clock (to date the
development certificate), imports the user's application, binds sockets through a driver and
turns SIGINT/SIGTERM into the core's graceful shutdown. Every mistake a user can make ends in
one line, ``spcore: error: <what is wrong>``, on stderr and exit status 2; a traceback means
a bug in spcore.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from . import cli_tls
from .app import LineEcho, builtin_app
from .certs import CertificateError, CertPair, check_cert_key, dev_certificate
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
from .http.messages import App
from .http.protocol import HTTPProtocol
from .layer import ProtocolLayer
from .server import Listener, Server
from .stream import StreamProtocol
from .tls.config import ClientCertMode, ServerTLS, TLSConfigError

__all__ = ["UsageError", "main"]

EXIT_USAGE = 2
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
        "down gracefully; a second one exits at once.",
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
    listen.add_argument("--port", type=_port, default=8443, help="0 picks a free port")
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
        "--app", metavar="MODULE:CALLABLE", help="your app(request) -> Response | None"
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
    how.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="idle timeout")
    how.add_argument("--max-connections", type=_count, metavar="N")
    how.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="warning")
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
    return parser


# -- spcore serve ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, _extra: list[str]) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _check_combinations(args)
    limits = _limits(args)
    driver_cls, driver_options = _driver(args.driver, args.loop)
    user_app = _load_app(args.app) if args.app else None
    tls, certfile = _tls_config(args)
    server = _build_server(args, limits, tls, user_app)
    try:
        driver = driver_cls(server, **driver_options)
    except OSError as exc:
        raise UsageError(f"the {driver_cls.name} driver cannot start: {_reason(exc)}") from None
    bound = _bind(driver)
    # Signals before the banner: whoever reads it may signal at once.
    with _stop_on_signals(driver), cli_tls.watching(server.listeners):
        print(_banner(args, driver.name, bound, certfile), flush=True)
        driver.run()
    return 0


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
    if args.plain_port and args.plain_port == args.port:
        raise UsageError(f"--plain-port and --port are both {args.port}; give two ports")
    if args.app and args.line_echo:
        raise UsageError("--app and --line-echo exclude each other")


def _limits(args: argparse.Namespace) -> Limits:
    overrides: dict[str, Any] = {}
    if args.timeout is not None:
        overrides["idle_timeout"] = args.timeout
    if args.max_connections is not None:
        overrides["max_connections"] = args.max_connections
    return Limits(**overrides)


def _driver(name: str, loop: str | None) -> tuple[type[Driver], dict[str, Any]]:
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


def _load_app(spec: str) -> App:
    """Import ``module:attribute`` the way uvicorn does, from the current directory too."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--app takes MODULE:CALLABLE (like myapp:app), not {spec!r}")
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
    if not callable(target):
        kind = type(target).__name__
        raise UsageError(f"{spec} is a {kind}, not a callable app(request) -> Response")
    app: App = target
    return app


def _tls_config(args: argparse.Namespace) -> tuple[ServerTLS | None, Path | None]:
    """The listeners' TLS configuration and the certificate file it serves (None for --no-tls)."""
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
    alpn = () if args.line_echo else ("http/1.1",)
    try:
        return cli_tls.server_tls(args, pair, client_cert, alpn), pair.certfile
    except TLSConfigError as exc:
        raise UsageError(str(exc)) from None


def _build_server(
    args: argparse.Namespace,
    limits: Limits,
    tls: ServerTLS | None,
    user_app: App | None,
) -> Server:
    app: App | None = user_app
    idle = args.timeout if args.timeout is not None else LineEcho.idle_timeout

    def protocol() -> ProtocolLayer:
        if args.line_echo:
            return StreamProtocol(LineEcho(idle))
        assert app is not None  # set below, before the driver accepts anything
        return HTTPProtocol(app)

    listeners = []
    for host in args.host or ["127.0.0.1"]:
        try:  # the engine builds its state here, reading every file the configuration names
            listener = Listener(
                protocol, host, args.port, tls, args.proxy_protocol, tls_engine=args.tls_engine
            )
        except TLSConfigError as exc:
            raise UsageError(f"cannot set up TLS: {exc}") from None
        listeners.append(listener)
        if args.plain_port is not None:
            listeners.append(Listener(protocol, host, args.plain_port, None, args.proxy_protocol))
    server = Server(listeners, limits)
    if app is None:
        app = builtin_app(server)  # it shows the server's counters, so it needs the server
    return server


def _bind(driver: Driver) -> list[Bound]:
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
    where = _host_port(listener.host, listener.port)
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: unknown host ({_reason(exc)})"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: the address is not available on this machine"
    if exc.errno == errno.EACCES and 0 < listener.port < 1024:
        return f"cannot listen on {where}: ports below 1024 need privileges"
    return f"cannot listen on {where}: {_reason(exc)}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _banner(
    args: argparse.Namespace, driver: str, bound: list[Bound], certfile: Path | None
) -> str:
    """``spcore: serving https://127.0.0.1:8443/ with the selectors driver (certificate: ...)``."""
    urls = []
    for each in bound:
        secure = each.listener.tls is not None
        where = _host_port(each.address[0], each.address[1])
        if args.line_echo:
            urls.append(f"{'tls' if secure else 'tcp'}://{where}")
        else:
            urls.append(f"{'https' if secure else 'http'}://{where}/")
    listing = urls[0] if len(urls) == 1 else ", ".join(urls[:-1]) + " and " + urls[-1]
    what = "line echo on " if args.line_echo else ""
    line = f"spcore: serving {what}{listing} with the {driver} driver"
    if certfile is not None:
        line += f" (certificate: {_display_path(certfile)})"
    return line


def _display_path(path: Path) -> str:
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def _stop_on_signals(driver: Driver) -> Iterator[None]:
    """SIGINT/SIGTERM: graceful shutdown; a second one: exit at once with status 1."""
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGBREAK"):  # Ctrl-Break on Windows
        signals.append(signal.SIGBREAK)
    received = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        # os.write: print() is not safe in a handler that may interrupt another print.
        if received > 1:
            os.write(2, b"spcore: second signal, exiting at once\n")
            os._exit(1)
        os.write(2, b"spcore: shutting down gracefully (signal again to exit at once)\n")
        driver.stop()

    previous: dict[int, Any] = {sig: signal.signal(sig, handle) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
        if args.command is None:
            raise UsageError(
                "name a command: serve, drivers, engines, ticket-key or conformance "
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
