"""Listening sockets: bound here (TCP; Unix domain) or adopted (handed in already listening).

Mechanism only, like the rest of the drivers: the ``Listener`` says where (``host``/``port``,
``path``/``mode`` or ``fd``) and whether to bind with ``SO_REUSEPORT``; the backlog is the
server's. Adopted sockets come from ``--fd``, systemd socket activation (``LISTEN_FDS``) or a
supervisor that bound them for its worker processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys

from spcore.server import Listener

__all__ = ["SocketFile", "adopt_listener", "bind_group", "bind_listener", "reuse_port_option"]

#: How long the check for a live server on an existing Unix socket waits for it to accept.
_PROBE_TIMEOUT = 1.0
#: Windows' socket module has no AF_UNIX.
_AF_UNIX = getattr(socket, "AF_UNIX", None)


def reuse_port_option() -> int | None:
    """The socket option under which several sockets share an address and the kernel spreads
    new connections over them, or None where there is none.

    Linux balances ``SO_REUSEPORT`` groups (since 3.9); FreeBSD names the balancing variant
    ``SO_REUSEPORT_LB`` (FreeBSD 12). Elsewhere (macOS, the other BSDs) ``SO_REUSEPORT`` lets
    sockets share the address but one of them takes every connection, which is no use to
    worker processes."""
    balanced = getattr(socket, "SO_REUSEPORT_LB", None)
    if isinstance(balanced, int):
        return balanced
    if sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT"):
        return int(socket.SO_REUSEPORT)
    return None


def bind_listener(listener: Listener, backlog: int) -> socket.socket:
    """A non-blocking listening socket for ``listener`` (IPv6 sockets are IPv6-only, so a v4
    and a v6 listener can share a port number). Raises OSError for a bad or busy address."""
    if listener.fd is not None:
        return adopt_listener(listener.fd)
    if listener.path is not None:
        return _bind_unix(listener.path, listener.mode, backlog)
    return _listening(_bind_tcp(listener.host, listener.port, listener.reuse_port), backlog)


def bind_group(listener: Listener, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening ``SO_REUSEPORT`` sockets on the TCP address of ``listener``.

    A probe bound without ``SO_REUSEPORT`` comes first: a busy address is an error then, as it
    is without workers (a group bound straight away would join the group of another server
    run by the same user), and a port 0 becomes one free port for the whole group. (They are
    bound from the listener's fields: a copy of the listener would build its TLS state again.)"""
    probe = _bind_tcp(listener.host, listener.port, reuse_port=False)
    port = probe.getsockname()[1]
    probe.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(_listening(_bind_tcp(listener.host, port, reuse_port=True), backlog))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def adopt_listener(fd: int) -> socket.socket:
    """The listening stream socket open as ``fd``, made non-blocking and not inherited by the
    processes this one starts. Raises OSError if ``fd`` is no such socket (it is left open)."""
    sock = socket.socket(fileno=fd)  # OSError (EBADF, ENOTSOCK) if it is no socket
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6, _AF_UNIX):
            raise OSError(errno.EAFNOSUPPORT, "it is not an IP or Unix domain socket")
        if sock.type != socket.SOCK_STREAM:
            raise OSError(errno.EPROTOTYPE, "it is not a stream socket")
        listening = getattr(socket, "SO_ACCEPTCONN", None)
        if listening is not None and not sock.getsockopt(socket.SOL_SOCKET, listening):
            raise OSError(errno.EINVAL, "the socket is not listening (listen() was not called)")
        sock.setblocking(False)
        sock.set_inheritable(False)
    except BaseException:
        sock.detach()
        raise
    return sock


def _listening(sock: socket.socket, backlog: int) -> socket.socket:
    """``sock``, bound, now listening and non-blocking (closed if that fails)."""
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_tcp(host: str, port: int, reuse_port: bool) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except UnicodeError as exc:  # a malformed name ("a..b", a label over 63 characters)
        raise socket.gaierror(socket.EAI_NONAME, f"invalid host name: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # type: ignore[attr-defined, unused-ignore]
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            option = reuse_port_option()
            if option is None:
                raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT does not balance connections here")
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, mode: int, backlog: int) -> socket.socket:
    if _AF_UNIX is None:
        raise OSError(errno.EAFNOSUPPORT, "Unix domain sockets are not available here")
    _remove_stale(path)
    sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    try:
        os.chmod(path, mode)  # before listen(): nobody can connect before it
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return sock


def _remove_stale(path: str) -> None:
    """Remove a socket file that no server listens on any more (its server died without
    removing it); refuse one a server still listens on, and any file that is no socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "the file exists and is not a socket")
    if _listened_on(path):
        raise OSError(errno.EADDRINUSE, "another server is listening on it")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _listened_on(path: str) -> bool:
    """Whether a server accepts connections on the Unix socket ``path`` (one too busy to
    accept in time counts). Connecting is the only portable way to tell."""
    assert _AF_UNIX is not None
    with socket.socket(_AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True
    return True


class SocketFile:
    """The file of a Unix socket this process bound, to remove once the socket is closed.

    It is removed only while it is still that socket's: the same file (device and inode),
    which nobody listens on. A server started after this one stopped listening may have
    replaced the file, as stale, with its own (and tmpfs may give it the same inode number)."""

    __slots__ = ("_identity", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        info = os.stat(path)
        self._identity = (info.st_dev, info.st_ino)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity and not _listened_on(self.path):
                os.unlink(self.path)
