"""Listener resolution and the SO_REUSEPORT reservation socket, without worker processes."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
from pathlib import Path

import pytest

from monolake.apps.config import Config, parse_config
from monolake.core.errors import ConfigError
from monolake.core.runtime._listeners import bind_tcp, close_listeners, open_listeners

from ._harness import ROUTES


def _cfg(**listeners: str) -> Config:
    return parse_config({"servers": {name: {"listener": spec, "routes": ROUTES} for name, spec in listeners.items()}})


def test_reservation_socket_never_receives_connections() -> None:
    with contextlib.ExitStack() as stack:
        reservation = stack.enter_context(bind_tcp("127.0.0.1", 0))
        port = reservation.getsockname()[1]
        # Bound with SO_REUSEPORT but not listening: not in the kernel's listening lookup.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        listener = stack.enter_context(bind_tcp("127.0.0.1", port))
        listener.listen(128)
        clients = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5)) for _ in range(64)]
        accepted = 0
        while accepted < len(clients):
            ready, _, _ = select.select([listener], [], [], 5)
            assert ready, f"only {accepted} of {len(clients)} connections reached the listener"
            stack.enter_context(listener.accept()[0])
            accepted += 1
        # (poll() does report the reservation readable, as the POLLHUP of an unconnected socket:
        # it is never registered anywhere, and accept() shows nothing can be queued on it.)
        with pytest.raises(OSError) as info:
            reservation.accept()
        assert info.value.errno == errno.EINVAL  # not a listening socket at all
        listener.close()

        # With the only listener gone, the reservation still does not take over.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_port_zero_is_resolved_and_unix_sockets_are_bound(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    listeners = open_listeners(_cfg(web="localhost:0", sock=f"unix:{path}"))
    try:
        web, sock = listeners
        assert web.address.host == "127.0.0.1" and web.address.port > 0
        assert str(sock.address) == f"unix:{path}" and path.is_socket()
        # A worker's own socket binds the same port next to the reservation.
        worker = web.worker_socket()
        assert worker.getsockname() == ("127.0.0.1", web.address.port)
        worker.close()
        assert sock.worker_socket() is sock.sock  # inherited, not rebound
    finally:
        close_listeners(listeners)
    assert not path.exists()


def test_regular_file_at_unix_path_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("do not delete")
    with pytest.raises(ConfigError, match=r"^servers\.sock\.listener: .*not a socket"):
        open_listeners(_cfg(web="127.0.0.1:0", sock=f"unix:{path}"))
    assert path.read_text() == "do not delete"


def test_live_unix_socket_is_not_stolen(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(8)
    try:
        with pytest.raises(ConfigError, match="in use by a running process"):
            open_listeners(_cfg(sock=f"unix:{path}"))
        assert path.is_socket()
    finally:
        live.close()


def test_bind_error_names_the_listener() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may share this port
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"^servers\.web\.listener: cannot bind 127.0.0.1:{port}"):
            open_listeners(_cfg(web=f"127.0.0.1:{port}"))
    finally:
        taken.close()


def test_close_listeners_leaves_a_replaced_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    listeners = open_listeners(_cfg(sock=f"unix:{path}"))
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))  # someone else's socket now lives at the path
    try:
        close_listeners(listeners)
        assert path.is_socket()
    finally:
        other.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_listener() -> None:
    try:
        sock = bind_tcp("::1", 0)
    except OSError as exc:
        pytest.skip(f"::1 not usable: {exc}")
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        sock.close()
