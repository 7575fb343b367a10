"""Listening sockets: bound (TCP, SO_REUSEPORT groups, Unix domain) or adopted; and how the
core sees the address of a connection that is not (host, port)."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import select
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from conftest import PKI
from netkit import Echo

from spcore import Listener, Server
from spcore.addresses import describe_address
from spcore.drivers.base import Bound
from spcore.drivers.listening import (
    adopt_listener,
    bind_group,
    bind_listener,
    reuse_port_option,
)
from spcore.stream import StreamProtocol
from spcore.tls import Certificate, ServerTLS

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX here")
needs_reuse_port = pytest.mark.skipif(
    reuse_port_option() is None, reason="SO_REUSEPORT does not balance connections here"
)


def listener(**where: object) -> Listener:
    return Listener(lambda: StreamProtocol(Echo()), **where)  # type: ignore[arg-type]


@pytest.fixture
def short_dir() -> Iterator[pathlib.Path]:
    """A directory with a short path (a Unix socket path is limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="spl") as name:
        yield pathlib.Path(name)


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("127.0.0.1", 8443), "127.0.0.1:8443"),
        (("::1", 8443, 0, 0), "[::1]:8443"),
        ("/run/app.sock", "unix:/run/app.sock"),
        ("", "unix:(unnamed)"),
        (b"\0spcore", "unix:@spcore"),
    ],
)
def test_addresses_are_described_in_one_form(address: object, text: str) -> None:
    assert describe_address(address) == text


def test_listener_describes_where_it_listens() -> None:
    assert listener(host="::1", port=80).where == "[::1]:80"
    assert listener(path="/run/x.sock").where == "unix:/run/x.sock"
    assert listener(path="/run/x.sock", fd=4).where == "fd 4"


def test_a_unix_socket_connection_has_no_host_and_port_in_the_core() -> None:
    """AF_UNIX peers are '' or a path: the HTTP layer's client/server and the logs read
    (host, port), so the core gets None instead."""
    server = Server([listener(path="/run/x.sock")])
    conn = server.accept(server.listeners[0], "", "/run/x.sock", 0.0)
    assert conn.peer is None and conn.local is None
    named = server.accept(server.listeners[0], "/tmp/client.sock", "/run/x.sock", 0.0)
    assert named.peer is None
    tcp = server.accept(server.listeners[0], ("127.0.0.1", 5000), ("127.0.0.1", 80), 0.0)
    assert tcp.peer == ("127.0.0.1", 5000)


# -- SO_REUSEPORT groups -----------------------------------------------------------------------


@needs_reuse_port
def test_a_group_shares_one_port_and_the_kernel_spreads_connections() -> None:
    group = bind_group(listener(host="127.0.0.1", port=0), 2, 64)
    try:
        ports = {sock.getsockname()[1] for sock in group}
        assert len(ports) == 1 and ports != {0}
        port = ports.pop()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        try:
            taken = dict.fromkeys(group, 0)
            deadline = time.monotonic() + 10  # the kernel queues each one as its ACK arrives
            while sum(taken.values()) < 64 and time.monotonic() < deadline:
                for sock in select.select(group, [], [], 1.0)[0]:
                    with contextlib.suppress(BlockingIOError):
                        sock.accept()[0].close()
                        taken[sock] += 1
            assert sum(taken.values()) == 64
            assert all(taken.values()), taken  # 2**-63 odds of a false failure
        finally:
            for client in clients:
                client.close()
    finally:
        for sock in group:
            sock.close()


@needs_reuse_port
def test_a_group_is_bound_without_building_its_listeners_tls_again(
    pki: PKI, tmp_path: pathlib.Path
) -> None:
    """The listener's TLS state is built once, when it is made: binding reads no TLS file
    (here they are gone by then, so building the state again would fail)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(pki.server.certfile.read_bytes())
    key.write_bytes(pki.server.keyfile.read_bytes())
    tls = listener(host="127.0.0.1", port=0, tls=ServerTLS(Certificate(cert, key)))
    cert.unlink()
    key.unlink()
    group = bind_group(tls, 2, 8)
    try:
        assert len({sock.getsockname()[1] for sock in group}) == 1
    finally:
        for sock in group:
            sock.close()


@needs_reuse_port
def test_a_group_on_a_busy_port_fails_instead_of_joining_it() -> None:
    """Another server's SO_REUSEPORT group of the same user would otherwise be joined."""
    theirs = bind_group(listener(host="127.0.0.1", port=0), 1, 8)
    try:
        port = theirs[0].getsockname()[1]
        with pytest.raises(OSError) as caught:
            bind_group(listener(host="127.0.0.1", port=port), 2, 8)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        theirs[0].close()


# -- Unix domain sockets -----------------------------------------------------------------------


@needs_unix
def test_a_unix_socket_gets_its_mode_and_its_file_goes_when_it_closes(
    short_dir: pathlib.Path,
) -> None:
    path = str(short_dir / "s")
    spec = listener(path=path, mode=0o640)
    bound = Bound(spec, bind_listener(spec, 8))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert bound.where == f"unix:{path}"
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
    bound.close()
    assert not os.path.exists(path)


@needs_unix
def test_a_stale_socket_file_is_replaced(short_dir: pathlib.Path) -> None:
    path = str(short_dir / "s")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # a file with nobody listening: what a killed server leaves behind
    dead.close()
    spec = listener(path=path)
    sock = bind_listener(spec, 8)
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        sock.close()


@needs_unix
def test_a_live_socket_is_refused_and_left_alone(short_dir: pathlib.Path) -> None:
    path = str(short_dir / "s")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(OSError, match="another server is listening on it"):
            bind_listener(listener(path=path), 8)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # still served
    finally:
        live.close()


@needs_unix
def test_a_file_that_is_not_a_socket_is_never_removed(short_dir: pathlib.Path) -> None:
    path = short_dir / "s"
    path.write_text("precious")
    with pytest.raises(OSError, match="not a socket"):
        bind_listener(listener(path=str(path)), 8)
    assert path.read_text() == "precious"


@needs_unix
def test_a_replaced_socket_file_is_not_removed_by_its_old_owner(short_dir: pathlib.Path) -> None:
    """A server that stopped listening may see its file replaced, as stale, by a new one."""
    path = str(short_dir / "s")
    spec = listener(path=path)
    old = Bound(spec, bind_listener(spec, 8))
    old.sock.close()  # stopped listening; the file is still there
    new = Bound(spec, bind_listener(spec, 8))  # found it stale, replaced it
    old.close()
    assert os.path.exists(path)
    new.close()
    assert not os.path.exists(path)


# -- adopting a socket handed in ---------------------------------------------------------------


def test_an_adopted_socket_is_served_as_it_is() -> None:
    made = socket.create_server(("127.0.0.1", 0))
    fd = os.dup(made.fileno())
    made.close()
    spec = listener(fd=fd)
    bound = Bound(spec, bind_listener(spec, 8))
    try:
        assert bound.sock.fileno() == fd
        assert not bound.sock.getblocking() and not os.get_inheritable(fd)
        port = bound.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        bound.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file descriptors")
@pytest.mark.parametrize(
    ("make", "mention"),
    [
        (lambda: os.open(os.devnull, os.O_RDONLY), "socket operation on non-socket"),
        (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach(), "not a stream"),
        (lambda: socket.socket().detach(), "not listening"),
    ],
    ids=["not a socket", "datagram", "not listening"],
)
def test_a_handed_in_fd_that_cannot_be_served_is_refused_and_left_open(
    make: object, mention: str
) -> None:
    fd = make()  # type: ignore[operator]
    try:
        with pytest.raises(OSError) as caught:
            adopt_listener(fd)
        assert mention in str(caught.value).lower()
        os.fstat(fd)  # still open: it is the caller's
    finally:
        os.close(fd)
