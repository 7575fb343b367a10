"""The command line's TLS engine part: ``--tls-engine`` and its options, ``spcore engines``,
``spcore ticket-key``, and the watcher that reloads rotated TLS files while serving.

Kept apart from ``spcore.cli`` so that the serve command's other options can grow without
touching this. Like the rest of the command line this is the program's edge: it reads files
and runs one thread (the watcher); the core only ever sees the neutral ``ServerTLS``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import threading
from collections.abc import Iterator, Sequence

from .certs import CertPair
from .server import Listener
from .tls.config import PROFILES, Certificate, ClientCertMode, ServerTLS, TLSConfigError
from .tls.engines import DEFAULT_ENGINE, ENGINES
from .tls.tickets import new_ticket_key_file

__all__ = [
    "add_engine_options",
    "add_tls_commands",
    "server_tls",
    "watching",
]

log = logging.getLogger("spcore.tls")

#: How often the watcher looks at the OCSP response and ticket key files.
WATCH_INTERVAL = 2.0


def add_engine_options(serve: argparse.ArgumentParser) -> None:
    """The serve command's "TLS engine" group."""
    group = serve.add_argument_group("TLS engine")
    group.add_argument(
        "--tls-engine",
        default=DEFAULT_ENGINE,
        choices=list(ENGINES),
        help=f"TLS library (see spcore engines; default {DEFAULT_ENGINE})",
    )
    group.add_argument(
        "--tls-profile",
        default="intermediate",
        choices=list(PROFILES),
        help="Mozilla cipher profile (default intermediate: TLS 1.2 and 1.3)",
    )
    group.add_argument(
        "--ocsp-response",
        metavar="FILE",
        help="DER OCSP response to staple (gnutls); read again when the file changes",
    )
    group.add_argument(
        "--ticket-key-file",
        metavar="FILE",
        help="session-ticket keys shared by every server process (gnutls; see spcore "
        "ticket-key); read again when the file changes",
    )


def server_tls(
    args: argparse.Namespace, pair: CertPair, client_cert: ClientCertMode, alpn: Sequence[str]
) -> ServerTLS:
    """The listeners' neutral TLS configuration from the command line."""
    for option, path in (
        ("--ocsp-response", args.ocsp_response),
        ("--ticket-key-file", args.ticket_key_file),
    ):
        if path is not None and not os.path.isfile(path):
            raise TLSConfigError(f"{option}: the file {path} does not exist")
    return ServerTLS(
        Certificate(pair.certfile, pair.keyfile, ocsp_response=args.ocsp_response),
        alpn=tuple(alpn),
        client_ca=args.client_ca,
        client_cert=client_cert,
        profile=args.tls_profile,
        ticket_key=args.ticket_key_file,
    )


# -- the file watcher -------------------------------------------------------------------------


def _signature(paths: Sequence[pathlib.Path]) -> tuple[tuple[int, int, int] | None, ...]:
    signature: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            signature.append(None)
        else:
            signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(signature)


def _watch(listeners: Sequence[Listener], interval: float, stop: threading.Event) -> None:
    contexts = [lst.tls_context for lst in listeners if lst.tls_context is not None]
    seen = [_signature(c.watched_files()) for c in contexts]
    while not stop.wait(interval):
        for i, context in enumerate(contexts):
            files = context.watched_files()
            now = _signature(files)
            if now == seen[i]:
                continue
            seen[i] = now
            names = ", ".join(str(f) for f in files)
            try:
                context.reload()
            except TLSConfigError as exc:
                log.error(
                    "TLS files changed (%s) but are unusable; still serving the previous ones: %s",
                    names,
                    exc,
                )
            else:
                log.info("TLS files changed (%s): new connections use them", names)


@contextlib.contextmanager
def watching(listeners: Sequence[Listener], interval: float = WATCH_INTERVAL) -> Iterator[None]:
    """While serving, reload a listener's TLS state when its rotated files change."""
    if not any(
        lst.tls_context is not None and lst.tls_context.watched_files() for lst in listeners
    ):
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(
        target=_watch, args=(listeners, interval, stop), name="spcore-tls-files", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(interval + 5)


# -- spcore engines, spcore ticket-key ----------------------------------------------------------


def add_tls_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    engines = commands.add_parser(
        "engines", help="list the TLS engines and whether they run here", allow_abbrev=False
    )
    engines.set_defaults(run=_engines)
    tickets = commands.add_parser(
        "ticket-key",
        help="write a new session-ticket key file",
        description="Write a fresh session-ticket key to FILE (mode 0600, replacing it "
        "atomically). Give the same FILE to every server process (--ticket-key-file) so that "
        "each resumes the others' sessions; running servers pick a new key up by themselves.",
        allow_abbrev=False,
    )
    tickets.add_argument("file", metavar="FILE")
    tickets.set_defaults(run=_ticket_key)


def _engines(_args: argparse.Namespace, _extra: list[str]) -> int:
    rows = [("name", "library", "available", "reason")]
    for name, spec in ENGINES.items():
        ok, reason = spec.probe()
        library = spec.load().library_version() if ok else "-"
        rows.append((name, library, "yes" if ok else "no", " ".join(reason.split())))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))
    return 0


def _ticket_key(args: argparse.Namespace, _extra: list[str]) -> int:
    path = pathlib.Path(args.file)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as handle:
            handle.write(new_ticket_key_file())
        os.replace(temporary, path)  # readers see the old file or the new one, never half
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise TLSConfigError(f"cannot write the ticket key file {path}: {exc.strerror}") from None
    print(f"spcore: new session-ticket key written to {path}")
    return 0
