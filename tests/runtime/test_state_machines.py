"""The reload and upgrade state machines on their own: events in, phases and worker messages out.

No processes: a fake host stands in for the supervisor (its workers are indexes, what the
machine sends them is recorded). The end-to-end behaviour is in test_supervisor.py and
tests/e2e/test_reload*.py / test_upgrade.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monolake.apps.config import Config, parse_config
from monolake.core.errors import ConfigError
from monolake.core.runtime._control import Message
from monolake.core.runtime._listeners import Listener, close_listeners, open_listeners
from monolake.core.runtime._reload import ConfigSource, Reloader, ReloadPhase
from monolake.core.runtime._upgrade import UpgradePhase, Upgrader

from ._harness import ROUTES


def _cfg(**listeners: str) -> Config:
    servers = {name: {"listener": spec, "routes": ROUTES} for name, spec in listeners.items()}
    return parse_config({"runtime": {"workers": 2}, "servers": servers})


class Host:
    def __init__(self, cfg: Config, workers: int = 2) -> None:
        self.config = cfg
        self.listeners: list[Listener] = open_listeners(cfg)
        self.workers = list(range(workers))
        self.sent: list[tuple[int, Message]] = []
        self.adopted: list[Any] = []
        self.upgraded_to: int | None = None

    def live_workers(self) -> list[int]:
        return list(self.workers)

    def running_workers(self) -> list[int]:
        return list(self.workers)

    def send(self, index: int, msg: Message, fds: list[int] | None = None) -> bool:
        self.sent.append((index, msg))
        return True

    def adopt(self, cfg: Any, listeners: list[Listener]) -> None:
        self.adopted.append(cfg)
        self.config, self.listeners = cfg, listeners

    def upgraded(self, pid: int, unused_paths: set[str]) -> None:
        self.upgraded_to = pid

    def ops(self) -> list[tuple[int, str]]:
        out = [(i, str(m["op"])) for i, m in self.sent]
        self.sent.clear()
        return out


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(_cfg(web="127.0.0.1:0"))
    yield h
    close_listeners(h.listeners)


def _reloader(host: Host, tmp_path: Path, new: Config | Exception) -> Reloader:
    path = tmp_path / "monolake.toml"
    path.write_text("# v1\n")

    def load(_: str) -> Config:
        if isinstance(new, Exception):
            raise new
        return new

    return Reloader(host, ConfigSource(str(path), load))


def test_reload_merges_requests_prepares_commits_and_answers_the_requester(host: Host, tmp_path: Path) -> None:
    new = _cfg(web="127.0.0.1:0", api="127.0.0.1:0")
    rl = _reloader(host, tmp_path, new)
    rl.request("SIGHUP")
    rl.request("request", (1, 7))
    assert rl.pending and rl.phase is ReloadPhase.IDLE
    rl.start()
    assert rl.phase is ReloadPhase.PREPARE and not rl.pending
    assert host.ops() == [(0, "prepare"), (1, "prepare")]
    assert rl.txn is not None and rl.txn.trigger == "SIGHUP, request"
    txn_id = rl.txn.id
    rl.on_reply(0, {"op": "prepared", "id": txn_id, "ok": True, "changes": {"web": "changed"}})
    assert rl.phase is ReloadPhase.PREPARE and host.adopted == []
    assert not rl.on_reply(1, {"op": "prepared", "id": txn_id + 1, "ok": True}), "another reload's reply"
    rl.on_reply(1, {"op": "prepared", "id": txn_id, "ok": True, "changes": {}})
    assert rl.phase is ReloadPhase.COMMIT and host.adopted == [new]
    assert host.ops() == [(0, "commit"), (1, "commit")]
    rl.on_reply(0, {"op": "committed", "id": txn_id, "ok": True})
    rl.on_worker_exit(1, 1234, "exited with status 0")  # a worker gone after COMMIT does not abort it
    assert rl.phase is ReloadPhase.IDLE and rl.txn is None
    assert rl.last is not None and rl.last.ok
    assert rl.last.changes == {"api": "added", "web": "changed"}
    assert host.sent == [(1, {"op": "reload_result", "req": 7, "result": rl.last.as_dict()})]


@pytest.mark.parametrize("event", ["refused", "worker_exit", "timeout"])
def test_reload_aborts_in_prepare_and_keeps_the_running_config(host: Host, tmp_path: Path, event: str) -> None:
    running = host.config
    rl = _reloader(host, tmp_path, _cfg(web="127.0.0.1:0", api="127.0.0.1:0"))
    rl.request("SIGHUP")
    rl.start()
    assert rl.txn is not None
    opened = list(rl.txn.opened)
    host.ops()
    if event == "refused":
        rl.on_reply(1, {"op": "prepared", "id": rl.txn.id, "ok": False, "error": "bad handler"})
        error = "worker 1: bad handler"
    elif event == "worker_exit":
        rl.on_worker_exit(0, 4321, "was killed by signal 9 (SIGKILL)")
        error = "worker 0 (pid 4321) was killed by signal 9 (SIGKILL) during the reload"
    else:
        rl.on_timer(time.monotonic() + 3600)
        error = "worker 0, worker 1 did not prepare within 30s"
    assert rl.phase is ReloadPhase.IDLE and host.config is running and host.adopted == []
    assert host.ops() == [(0, "abort"), (1, "abort")]
    assert rl.last is not None and not rl.last.ok and rl.last.error == error
    assert [lst.sock.fileno() for lst in opened] == [-1], "the listener opened for the reload is closed"


def test_reload_config_error_and_stop(host: Host, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rl = _reloader(host, tmp_path, ConfigError("servers.web.listener", "bad address"))
    rl.request("SIGHUP", (0, 1))
    rl.start()
    assert rl.phase is ReloadPhase.IDLE and host.adopted == []
    assert rl.last is not None and rl.last.error == "config error: servers.web.listener: bad address"
    assert host.ops() == [(0, "reload_result")]
    rl.stop()
    with caplog.at_level(logging.INFO, logger="monolake"):
        rl.request("SIGHUP", (1, 2))
    assert not rl.pending and "SIGHUP: stopping, not reloading" in caplog.text
    assert host.sent[0][1]["result"]["error"] == "the supervisor is stopping"


def test_reload_of_a_changed_file_only(host: Host, tmp_path: Path) -> None:
    rl = _reloader(host, tmp_path, host.config)
    rl.file_changed()
    assert not rl.pending, "same bytes: nothing to do"
    (tmp_path / "monolake.toml").write_text("# v2\n")
    rl.file_changed()
    assert rl.pending


def test_upgrade_collects_and_fails_without_a_successor(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    up = Upgrader(host)
    up.request("SIGUSR2")
    assert up.wanted and not up.busy
    with caplog.at_level(logging.INFO, logger="monolake"):
        up.request("request")
    assert "request: an upgrade is already under way" in caplog.text
    up.start()
    assert up.phase is UpgradePhase.COLLECT and up.deadline is not None
    assert host.ops() == [(0, "handover"), (1, "handover")]
    assert not up.on_sockets(0, {"op": "status"}, []), "not a sockets reply"
    up.on_worker_exit(1, 99, "exited with status 1")
    assert up.phase is UpgradePhase.IDLE and not up.busy and up.deadline is None
    assert "worker 1 (pid 99) exited with status 1 during the upgrade" in caplog.text
    up.request("SIGUSR2")
    up.start()
    up.on_timer(time.monotonic() + 3600)
    assert up.phase is UpgradePhase.IDLE
    assert "workers did not hand over their sockets in time" in caplog.text
    up.stop()
    up.request("SIGUSR2")
    assert up.phase is UpgradePhase.IDLE and host.upgraded_to is None
