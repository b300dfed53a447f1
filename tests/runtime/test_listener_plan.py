"""Matching a new config's servers to open listeners (reload and upgrade keep sockets),
and which runtime settings a reload cannot change."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.apps.config import Config, parse_config
from monolake.core.runtime._listeners import Listener, close_listeners, open_listeners, plan_listeners
from monolake.core.runtime._reload import keep_runtime

from ._harness import ROUTES


def _cfg(runtime: dict[str, object] | None = None, **listeners: str) -> Config:
    servers = {name: {"listener": spec, "routes": ROUTES} for name, spec in listeners.items()}
    return parse_config({"runtime": runtime or {}, "servers": servers})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[list[Listener], int, Path]]:
    port = _free_port()
    path = tmp_path / "u.sock"
    listeners = open_listeners(_cfg(web=f"127.0.0.1:{port}", any="127.0.0.1:0", unix=f"unix:{path}"))
    yield listeners, port, path
    close_listeners(listeners)


def test_same_addresses_keep_their_sockets(opened: tuple[list[Listener], int, Path]) -> None:
    listeners, port, path = opened
    cfg = _cfg(web=f"127.0.0.1:{port}", any="127.0.0.1:0", unix=f"unix:{path}")
    kept, to_open, unused = plan_listeners(cfg, listeners)
    assert to_open == [] and unused == []
    assert [k.sock for k in kept] == [lst.sock for lst in listeners]
    assert kept[1].address.port == listeners[1].address.port  # the :0 port resolved once


def test_renamed_fixed_address_keeps_its_socket_but_port_zero_does_not(
    opened: tuple[list[Listener], int, Path],
) -> None:
    listeners, port, path = opened
    cfg = _cfg(site=f"localhost:{port}", other="127.0.0.1:0", sock=f"unix:{path}")
    kept, to_open, unused = plan_listeners(cfg, listeners)
    assert {k.name: k.sock for k in kept} == {"site": listeners[0].sock, "sock": listeners[2].sock}
    assert to_open == ["other"]  # a new name on :0 is a new port
    assert unused == [listeners[1]]
    assert listeners[0].name == "web"  # the running list is not touched


def test_moved_and_removed_listeners(opened: tuple[list[Listener], int, Path], tmp_path: Path) -> None:
    listeners, _, _ = opened
    cfg = _cfg(web=f"127.0.0.1:{_free_port()}", unix=f"unix:{tmp_path / 'v.sock'}")
    kept, to_open, unused = plan_listeners(cfg, listeners)
    assert kept == [] and to_open == ["web", "unix"] and unused == listeners


def test_inherited_listeners_are_taken_over_and_the_rest_closed_without_unlinking(
    opened: tuple[list[Listener], int, Path],
) -> None:
    listeners, port, path = opened
    for lst in listeners:
        lst.owned = False  # as received from an old supervisor
    taken = open_listeners(_cfg(unix=f"unix:{path}", web=f"127.0.0.1:{port}"), listeners)
    assert [t.name for t in taken] == ["unix", "web"]
    assert {t.sock.fileno() for t in taken} == {listeners[2].sock.fileno(), listeners[0].sock.fileno()}
    assert listeners[1].sock.fileno() == -1  # the unused one is closed
    assert path.exists()


def test_restart_only_runtime_settings_are_kept_and_reported() -> None:
    old = _cfg({"workers": 2, "loop": "uvloop", "drain_timeout": 10}, web="127.0.0.1:0")
    new = _cfg({"workers": 4, "loop": "asyncio", "drain_timeout": 3, "watch_config": True}, web="127.0.0.1:0")
    cfg, notes = keep_runtime(old, new)
    assert (cfg.runtime.workers, cfg.runtime.loop) == (2, "uvloop")
    assert (cfg.runtime.drain_timeout, cfg.runtime.watch_config) == (3, True)  # applied live
    assert notes == [
        "runtime.workers changed (2 -> 4): needs a restart or an upgrade; keeping 2",
        "runtime.loop changed ('uvloop' -> 'asyncio'): needs a restart or an upgrade; keeping 'uvloop'",
    ]
    assert keep_runtime(old, old) == (old, [])
