"""Listening sockets: resolved once by the supervisor, opened per worker.

TCP: every worker binds its *own* listening socket with SO_REUSEPORT and the
kernel spreads new connections across them (no shared accept queue, no thundering
herd). The supervisor binds a reservation socket to the same address with
SO_REUSEPORT but never listens on it: it learns the real port of a ``:0``
listener, surfaces bind errors before any worker forks, and keeps the port ours
for the supervisor's life so a restarted worker rebinds the same port. A bound
socket that is not listening is not in the kernel's listening lookup, so it never
receives a connection (tests/runtime/test_listeners.py checks this).

Unix: one socket per path, bound and listening in the supervisor and inherited
by every worker through fork (a path cannot be shared with SO_REUSEPORT). A stale
socket file (nobody accepting) is replaced; a regular file or a live socket is an
error. The supervisor unlinks the path on exit if it is still the file it created
(and it still owns it: after a binary upgrade the new supervisor does).

Reload and upgrade keep sockets: ``plan_listeners`` matches a new config's servers
to the listeners already open (same Unix path; same fixed TCP address; for a
``:0`` port, same server name and spelling), so a listener that did not move is
never closed, and opens only what is new.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..address import ListenAddress, parse_listener
from ..errors import ConfigError
from ._settings import ListenerSettings as Server
from ._settings import RuntimeConfig as Config


@dataclass(slots=True, kw_only=True)
class Listener:
    """One server's listening address, as held by the supervisor."""

    name: str
    address: ListenAddress
    """Resolved: a TCP ``:0`` carries the real port, ``localhost`` is 127.0.0.1."""
    backlog: int
    sock: socket.socket
    """The reservation socket (TCP, bound, not listening) or the listening Unix socket."""
    inode: tuple[int, int] = (0, 0)
    """(st_dev, st_ino) of the Unix socket file we created, to unlink only our own."""
    spec: str = ""
    """The configured address (``localhost`` spelled 127.0.0.1, port 0 kept): what reloads match on."""
    owned: bool = True
    """Unlink the Unix socket file on close (False once handed to a new supervisor)."""

    @property
    def key(self) -> str:
        """The resolved address: unique among a config's listeners; names a worker's socket."""
        return str(self.address)

    def worker_socket(self) -> socket.socket:
        """The socket a worker serves on: a fresh SO_REUSEPORT bind (TCP) or the inherited one (Unix).

        Raises OSError if the TCP bind fails.
        """
        if self.address.is_unix:
            return self.sock
        return bind_tcp(self.address.host, self.address.port)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A nonblocking TCP socket bound to host:port with SO_REUSEADDR and SO_REUSEPORT, not listening.

    Raises OSError (the socket is closed first).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]:80" means IPv6 only, as in nginx; "0.0.0.0:80" may be listed beside it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)  # a live server with a full backlog would otherwise block us
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: left by a process that died without cleaning up
        else:
            raise OSError(errno.EADDRINUSE, f"{path} is in use by a running process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        st = os.stat(path)
        # Listening here, not in the workers, keeps connections queued while a worker restarts.
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def configured_address(server: Server) -> ListenAddress:
    """A server's listener as configured, ``localhost`` spelled 127.0.0.1 (validated configs only)."""
    addr = parse_listener(server.listener)
    if addr.host == "localhost":
        addr = ListenAddress(host="127.0.0.1", port=addr.port)
    return addr


def open_listener(name: str, server: Server) -> Listener:
    """Reserve one TCP address or bind one Unix socket. Raises ConfigError naming ``servers.NAME.listener``."""
    addr = configured_address(server)
    try:
        if addr.is_unix:
            sock, inode = _bind_unix(addr.path, server.backlog)
            return Listener(name=name, address=addr, backlog=server.backlog, sock=sock, inode=inode, spec=str(addr))
        sock = bind_tcp(addr.host, addr.port)
    except OSError as exc:
        raise ConfigError(f"servers.{name}.listener", f"cannot bind {addr}: {exc.strerror or exc}") from None
    resolved = ListenAddress(host=addr.host, port=sock.getsockname()[1])
    return Listener(name=name, address=resolved, backlog=server.backlog, sock=sock, spec=str(addr))


def _matches(lst: Listener, name: str, addr: ListenAddress) -> bool:
    if addr.is_unix or addr.port:
        return lst.address == addr
    return lst.name == name and lst.spec == str(addr)


def plan_listeners(cfg: Config, current: Sequence[Listener]) -> tuple[list[Listener], list[str], list[Listener]]:
    """Match ``cfg.servers`` to open listeners without opening or closing anything.

    Returns (kept, to_open, unused): ``kept`` are copies of matched listeners labelled
    with their new server name and backlog (same socket), ``to_open`` the server names
    that need a new listener, ``unused`` the listeners no server keeps.
    """
    free = list(current)
    kept: list[Listener] = []
    to_open: list[str] = []
    for name, server in cfg.servers.items():
        addr = configured_address(server)
        found = next((lst for lst in free if _matches(lst, name, addr)), None)
        if found is None:
            to_open.append(name)
            continue
        free.remove(found)
        kept.append(replace(found, name=name, backlog=server.backlog))
    return kept, to_open, free


def open_listeners(cfg: Config, inherited: Sequence[Listener] = ()) -> list[Listener]:
    """Reserve every TCP address and bind every Unix socket of ``cfg.servers``, in config order.

    ``inherited`` listeners (from an old supervisor) are taken over where they match and
    closed (without unlinking) where they do not. Raises ConfigError naming
    ``servers.NAME.listener`` if a bind fails; whatever was opened here is closed (and
    unlinked) first.
    """
    kept, to_open, unused = plan_listeners(cfg, inherited)
    for lst in unused:
        lst.owned = False
    close_listeners(unused)
    out: list[Listener] = []
    try:
        for name in to_open:
            out.append(open_listener(name, cfg.servers[name]))
    except BaseException:
        close_listeners(out)
        close_listeners(kept)
        raise
    by_name = {lst.name: lst for lst in [*kept, *out]}
    return [by_name[name] for name in cfg.servers]


def close_listeners(listeners: list[Listener]) -> None:
    """Close the supervisor's sockets and unlink the Unix socket files it created (if still ours)."""
    for lst in listeners:
        if lst.address.is_unix and lst.owned:
            try:
                st = os.stat(lst.address.path)
                if (st.st_dev, st.st_ino) == lst.inode:
                    os.unlink(lst.address.path)
            except OSError:
                pass
        lst.sock.close()
