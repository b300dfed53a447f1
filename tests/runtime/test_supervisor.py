"""The supervisor and its workers as real processes on 127.0.0.1 and Unix sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from monolake.apps.config import Config, parse_config
from monolake.core.errors import ConfigError
from monolake.core.runtime import ServerApp, cpu_count, run

from ._harness import (
    READY,
    ROUTES,
    Supervisor,
    config,
    connect,
    cpus_allowed,
    get,
    pids_serving,
    read_response,
    send_request,
)

LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
LOOP_MODULE = {"uvloop": "uvloop", "asyncio": "asyncio.unix_events"}

StartFn = Callable[..., Supervisor]


@pytest.fixture
def start() -> Iterator[StartFn]:
    started: list[Supervisor] = []

    def _start(cfg: dict[str, Any], crash_flag: Path | None = None) -> Supervisor:
        sup = Supervisor(cfg, crash_flag)
        started.append(sup)
        return sup

    yield _start
    for sup in started:
        sup.close()


def stop_cleanly(sup: Supervisor) -> None:
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0, sup.log
    assert sum(bool(READY.search(line)) for line in sup.lines) == 1, sup.log
    assert " ERROR " not in sup.log and "Traceback" not in sup.log, sup.log


@LOOPS
def test_workers_start_pinned_and_share_the_port(start: StartFn, loop: str) -> None:
    sup = start(config(loop, web="127.0.0.1:0"))
    servers = sup.wait_ready()
    host, _, port = servers["web"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0  # port 0 resolved and logged
    assert sup.wait_line(READY)["loop"] == loop

    workers = sup.workers()
    assert len(workers) == 2
    if cpu_count() >= 2:
        pinned = [cpus_allowed(pid) for pid in workers]
        assert all(cpus.isdigit() for cpus in pinned), pinned  # one core each
        assert len(set(pinned)) == 2, pinned

    # SO_REUSEPORT hashes each new connection's 4-tuple: both workers get some.
    assert pids_serving(servers["web"], set(workers)) == set(workers)
    status, fields = get(servers["web"], "/hello")
    assert status == 200 and fields["loop"] == LOOP_MODULE[loop] and fields["path"] == "/hello"
    stop_cleanly(sup)


@LOOPS
def test_unix_listener_is_shared_and_removed_on_exit(start: StartFn, loop: str, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    sup = start(config(loop, web="127.0.0.1:0", sock=f"unix:{path}"))
    servers = sup.wait_ready()
    assert servers["sock"] == f"unix:{path}"
    workers = set(sup.workers())
    status, fields = get(servers["sock"], "/u")
    assert status == 200 and int(fields["pid"]) in workers
    stop_cleanly(sup)
    assert not path.exists()


def test_stale_unix_socket_file_is_replaced(start: StartFn, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody accepts: what a killed server leaves behind
    sup = start(config("uvloop", workers=1, sock=f"unix:{path}"))
    servers = sup.wait_ready()
    assert get(servers["sock"])[0] == 200
    stop_cleanly(sup)
    assert not path.exists()


@LOOPS
def test_sigterm_lets_the_request_in_flight_finish(start: StartFn, loop: str, tmp_path: Path) -> None:
    path = tmp_path / "drain.sock"
    sup = start(config(loop, web="127.0.0.1:0", sock=f"unix:{path}"))
    servers = sup.wait_ready()
    with connect(servers["web"]) as slow:
        mark = sup.mark()
        send_request(slow, "/slow?s=1")
        sup.wait_line("slow request in flight", after=mark)
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        sup.wait_line(r"worker 0 draining", after=mark)
        sup.wait_line(r"worker 1 draining", after=mark)
        # Every worker closed its listener; the supervisor's reservation socket is bound to the
        # same port with SO_REUSEPORT but not listening, and must not take the connection.
        with pytest.raises(ConnectionRefusedError):
            connect(servers["web"]).close()
        status, fields = read_response(slow)
    assert status == 200 and fields["path"] == "/slow"
    assert sup.wait_exit() == 0, sup.log
    assert time.monotonic() - t0 >= 0.5  # it did wait for the request
    assert not path.exists()
    assert "Traceback" not in sup.log, sup.log


@LOOPS
def test_drain_timeout_force_closes(start: StartFn, loop: str) -> None:
    cfg = config(loop, workers=1, web="127.0.0.1:0")
    cfg["runtime"]["drain_timeout"] = 0.3
    sup = start(cfg)
    servers = sup.wait_ready()
    with connect(servers["web"]) as slow:
        send_request(slow, "/slow?s=60")
        sup.wait_line("slow request in flight")
        sup.signal(signal.SIGTERM)
        assert read_response(slow) == (0, {})  # closed without an answer (it asked for 60 s)
    assert sup.wait_exit() == 0, sup.log
    sup.wait_line(r"drain timeout 0.3s, closing requests still in flight")


@LOOPS
def test_second_sigterm_hurries(start: StartFn, loop: str) -> None:
    cfg = config(loop, workers=1, web="127.0.0.1:0")
    cfg["runtime"]["drain_timeout"] = 60
    sup = start(cfg)
    servers = sup.wait_ready()
    with connect(servers["web"]) as slow:
        send_request(slow, "/slow?s=60")
        sup.wait_line("slow request in flight")
        sup.signal(signal.SIGTERM)
        sup.wait_line("worker 0 draining")
        sup.signal(signal.SIGINT)
        assert read_response(slow) == (0, {})  # cut short: the drain would have waited 60 s
    assert sup.wait_exit() == 0, sup.log
    sup.wait_line("SIGINT again: workers close now")
    sup.wait_line("worker 0: hurried, closing requests still in flight")


@LOOPS
def test_killed_worker_is_restarted(start: StartFn, loop: str, tmp_path: Path) -> None:
    sup = start(config(loop, web="127.0.0.1:0", sock=f"unix:{tmp_path / 'k.sock'}"))
    servers = sup.wait_ready()
    old = sup.workers()
    victim = old[0]
    victim_cpus = cpus_allowed(victim)
    mark = sup.mark()
    os.kill(victim, signal.SIGKILL)
    sup.wait_line(
        rf"WARNING monolake\[{sup.pid}\]: worker \d \(pid {victim}\) was killed by signal 9 \(SIGKILL\); "
        r"restarting in",
        after=mark,
    )
    new = int(sup.wait_line(r"worker \d restarted, pid (\d+)", after=mark)[1])
    workers = sup.workers()
    assert len(workers) == 2 and new in workers and victim not in workers
    assert cpus_allowed(new) == victim_cpus  # the replacement takes over the same core
    assert new in pids_serving(servers["web"], {new})  # same port, rebound by the new worker
    assert (tmp_path / "k.sock").is_socket()
    assert int(get(servers["sock"])[1]["pid"]) in workers  # the Unix socket is inherited again
    stop_cleanly(sup)


@LOOPS
def test_workers_stop_when_the_supervisor_dies(start: StartFn, loop: str) -> None:
    sup = start(config(loop, web="127.0.0.1:0"))
    sup.wait_ready()
    workers = sup.workers()
    sup.signal(signal.SIGKILL)
    assert sup.wait_exit() == -signal.SIGKILL
    for i in range(2):
        sup.wait_line(rf"worker {i}: supervisor is gone, stopping")
    # The workers hold the other end of our stderr pipe: EOF means every one of them exited.
    sup.wait_eof()
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}/cmdline") or not Path(f"/proc/{pid}/cmdline").read_bytes()


@LOOPS
def test_crashing_worker_is_restarted(start: StartFn, loop: str) -> None:
    sup = start(config(loop, web="127.0.0.1:0"))
    servers = sup.wait_ready()
    old = set(sup.workers())
    mark = sup.mark()
    assert get(servers["web"], "/crash") == (0, {})
    dead = int(sup.wait_line(r"WARNING monolake\[\d+\]: worker \d \(pid (\d+)\) exited with status 3", after=mark)[1])
    assert dead in old
    new = int(sup.wait_line(r"worker \d restarted, pid (\d+)", after=mark)[1])
    workers = set(sup.workers())
    assert workers == old - {dead} | {new}
    assert new in pids_serving(servers["web"], {new})
    stop_cleanly(sup)


def test_crash_loop_backs_off(start: StartFn, tmp_path: Path) -> None:
    flag = tmp_path / "crash"
    sup = start(config("uvloop", workers=1, web="127.0.0.1:0"), crash_flag=flag)
    servers = sup.wait_ready()
    (victim,) = sup.workers()
    mark = sup.mark()
    flag.touch()  # from now on a new worker exits 4 in build()
    os.kill(victim, signal.SIGKILL)
    delays = []
    at = mark
    rx = re.compile(r"worker 0 \(pid \d+\) exited with status 4; restarting in ([\d.]+)s")
    while len(delays) < 3:
        m = sup.wait_line(rx, after=at)
        delays.append(float(m[1]))
        at = sup.lines.index(m.string, at) + 1
    assert delays == sorted(delays) and delays[2] > delays[0] > 0, delays
    flag.unlink()
    new = int(sup.wait_line(r"worker 0 restarted, pid (\d+)", after=mark)[1])
    assert sup.workers() == [new]
    assert get(servers["web"])[1]["pid"] == str(new)
    stop_cleanly(sup)


def test_worker_failing_before_ready_stops_the_supervisor(start: StartFn, tmp_path: Path) -> None:
    flag = tmp_path / "crash"
    flag.touch()
    path = tmp_path / "s.sock"
    sup = start(config("uvloop", web="127.0.0.1:0", sock=f"unix:{path}"), crash_flag=flag)
    assert sup.wait_exit() == 1
    assert "exited with status 4 before it was ready; stopping" in sup.log
    assert not READY.search(sup.log)
    assert not path.exists()


# -- in process: nothing may be bound or forked before the config is known good --------


def _cfg(tmp_path: Path) -> Config:
    return parse_config(
        {
            "runtime": {"workers": 1},
            "servers": {
                "web": {"listener": "127.0.0.1:0", "routes": ROUTES},
                "sock": {"listener": f"unix:{tmp_path / 'never.sock'}", "routes": ROUTES},
            },
        }
    )


@pytest.fixture
def nothing_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("bound or forked before the config was validated")

    monkeypatch.setattr(socket, "socket", forbidden)
    monkeypatch.setattr(os, "fork", forbidden)


@pytest.mark.usefixtures("nothing_bound")
def test_config_error_from_build_is_raised_before_binding(tmp_path: Path) -> None:
    def build(cfg: Config) -> Mapping[str, ServerApp]:
        raise ConfigError("servers.web.routes[0]", "no such filter")

    with pytest.raises(ConfigError, match=re.escape("servers.web.routes[0]: no such filter")):
        run(_cfg(tmp_path), build)
    assert not (tmp_path / "never.sock").exists()


@pytest.mark.usefixtures("nothing_bound")
def test_app_missing_for_a_server_is_a_config_error(tmp_path: Path) -> None:
    def build(cfg: Config) -> Mapping[str, ServerApp]:
        return {}

    with pytest.raises(ConfigError, match=r"^servers\.web: "):
        run(_cfg(tmp_path), build)
    assert not (tmp_path / "never.sock").exists()


def test_sighup_without_a_config_file_is_refused_and_serving_goes_on(start: StartFn) -> None:
    # echo_app passes a Config, not a file: there is nothing to reload from.
    sup = start(config("uvloop", workers=1, web="127.0.0.1:0"))
    servers = sup.wait_ready()
    before = pids_serving(servers["web"], set(), tries=3)
    sup.signal(signal.SIGHUP)
    sup.wait_line(r"ERROR monolake\[\d+\]: reload 1 \(SIGHUP\) refused: reload needs a config file")
    assert pids_serving(servers["web"], set(), tries=3) == before
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0, sup.log
