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
import queue
import threading
from collections.abc import Sequence

from .certs import CertPair
from .server import Listener
from .tls.config import PROFILES, Certificate, ClientCertMode, ServerTLS, TLSConfigError
from .tls.context import ServerContext
from .tls.engines import DEFAULT_ENGINE, ENGINES
from .tls.tickets import new_ticket_key_file

__all__ = [
    "TLSFiles",
    "add_engine_options",
    "add_tls_commands",
    "server_tls",
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


# -- the file watcher and SIGHUP ------------------------------------------------------------


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


class TLSFiles:
    """One thread that rebuilds the listeners' TLS states from their files: when a rotated
    file (OCSP response, ticket keys) changes, polled every ``interval`` seconds, and for every
    TLS listener on ``reload()`` (SIGHUP).

    The files are read and the engine's state built here, off the loop thread: building an
    ``SSLContext`` or a GnuTLS credential set takes milliseconds per listener, which the loop
    would take from every connection. ``ServerContext.reload`` swaps the new state in with one
    assignment, which the loop thread reads once per new connection; so nothing has to be
    handed to the loop. A file that cannot be used leaves the previous state serving.
    """

    _STOP, _SIGHUP = "stop", "SIGHUP"

    def __init__(
        self, listeners: Sequence[tuple[str, Listener]], interval: float = WATCH_INTERVAL
    ) -> None:
        """``listeners``: each with the address it is bound to, which names it in logs."""
        self._tls = [(where, lst.tls_context) for where, lst in listeners if lst.tls_context]
        self._interval = interval
        # SimpleQueue.put is reentrant: the one thing a signal handler may safely call here.
        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spcore-tls-files", daemon=True)

    def reload(self) -> None:
        """Reload every TLS listener soon; safe to call from a signal handler."""
        self._requests.put(self._SIGHUP)

    def __enter__(self) -> TLSFiles:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._requests.put(self._STOP)
        self._thread.join(self._interval + 5)

    def _run(self) -> None:
        watched = [(where, c, _signature(c.watched_files())) for where, c in self._tls]
        polled = any(c.watched_files() for _, c in self._tls)
        while True:
            try:
                request = self._requests.get(timeout=self._interval if polled else None)
            except queue.Empty:
                request = None
            if request == self._STOP:
                return
            for i, (where, context, seen) in enumerate(watched):
                now = _signature(context.watched_files())
                if request is not None:
                    self._reload(context, f"SIGHUP: {where}")
                elif now != seen:
                    names = ", ".join(str(f) for f in context.watched_files())
                    self._reload(context, f"TLS files changed ({names})")
                watched[i] = (where, context, now)
            if request is not None and not watched:
                log.warning("SIGHUP: no TLS listener, nothing to reload")

    @staticmethod
    def _reload(context: ServerContext, what: str) -> None:
        try:
            context.reload()
        except TLSConfigError as exc:
            log.error("%s: unusable, still serving the previous TLS files: %s", what, exc)
        else:
            log.info("%s: TLS files reloaded, new connections use them", what)


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
