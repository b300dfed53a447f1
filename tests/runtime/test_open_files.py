"""runtime.max_open_files: the workers' RLIMIT_NOFILE, the start-up warning, accept failures logged."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import TIMEOUT, Origin, ProxyFactory

pytestmark = pytest.mark.e2e

LOW = """
[runtime]
max_open_files = 64
trim_interval = 0.1

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]
"""

ACCEPT_FAILED = r"accept failed: too many open files \(limit 64\); raise runtime\.max_open_files"


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def test_low_limit_warns_logs_accept_failures_and_recovers(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(LOW, origin=origin.url)
    assert p.log.count(r"runtime\.max_open_files: each worker may open 64 files, low for the configured connections")
    (worker,) = p.workers()
    assert soft_nofile(worker) == 64
    host, port = p.servers["web"].rsplit(":", 1)
    mark = p.log.mark()
    held: list[socket.socket] = []
    try:
        # More connections than the worker has descriptors left: the kernel queues them all,
        # the worker's accepts fail with EMFILE once its table is full.
        for _ in range(100):
            held.append(socket.create_connection((host, int(port)), timeout=TIMEOUT))
        p.log.wait_line(ACCEPT_FAILED, after=mark)
    finally:
        for s in held:
            s.close()
    # One line per interval, however many accepts failed meanwhile, and nothing else failed (the
    # worker's own periodic work needs no new descriptor).
    assert p.log.count(ACCEPT_FAILED, after=mark) == 1
    assert p.log.count(r" ERROR ", after=mark) == 1, "\n".join(p.log.since(mark))
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        assert c.get(p.url + "/echo").status_code == 200
    assert p.workers() == [worker]
    assert not p.log.count(r"worker \d+ (exited|was killed)")


def test_default_is_the_hard_limit(tmp_path: Path) -> None:
    # A soft limit of 1024 under a higher hard limit is raised to the hard limit.
    code = (
        "import resource\n"
        "from monolake.config import Config\n"
        "from monolake.runtime._limits import apply_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = apply_open_files(Config())\n"
        "assert got == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0], (got, hard)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.stdout.strip() == "ok", out.stderr


def _lower_hard_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))


def test_above_the_hard_limit_is_a_config_error(tmp_path: Path, origin: Origin) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(LOW.replace("max_open_files = 64", "max_open_files = 8192").replace("{origin}", origin.url))
    cmd = [sys.executable, "-m", "monolake.cli", "run", "-c", str(config), "--workers", "1"]
    if os.geteuid() == 0:
        # Root may raise the hard limit; without CAP_SYS_RESOURCE it may not, as any other user.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is not installed to drop CAP_SYS_RESOURCE")
        cmd = [setpriv, "--bounding-set=-sys_resource", "--inh-caps=-sys_resource", *cmd]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=_lower_hard_limit, cwd=tmp_path
    )
    assert out.returncode != 0
    assert re.search(r"runtime\.max_open_files.*8192 is above the hard limit of open files \(4096\)", out.stderr), (
        out.stderr
    )
    assert "monolake ready" not in out.stderr


def test_below_the_minimum_names_the_key() -> None:
    from monolake.config import parse_config
    from monolake.errors import ConfigError

    server = {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstreams": [{"endpoint": "http://127.0.0.1:1"}]}]}
    with pytest.raises(ConfigError, match=r"runtime\.max_open_files: .*>= 64"):
        parse_config({"runtime": {"max_open_files": 10}, "servers": {"web": server}})


def test_warning_rule() -> None:
    from monolake.config import parse_config
    from monolake.runtime._limits import WORKER_MARGIN, fds_needed, low_limit_warning

    server = {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstreams": [{"endpoint": "http://127.0.0.1:1"}]}]}
    cfg = parse_config(
        {"servers": {"a": {**server, "backlog": 100}, "b": {**server, "backlog": 10, "max_concurrency": 50}}}
    )
    need = WORKER_MARGIN + (1 + 2 * 100) + (1 + 2 * 50)
    assert fds_needed(cfg) == need
    assert low_limit_warning(cfg, need) is None
    assert low_limit_warning(cfg, need - 1) is not None


def test_reload_warns_and_keeps_the_limit(tmp_path: Path, origin: Origin) -> None:
    # Supervisor behaviour, the same on every loop: one loop is enough.
    factory = ProxyFactory(tmp_path, "uvloop")
    try:
        p = factory(LOW.replace("max_open_files = 64", "max_open_files = 4096"), origin=origin.url)
        assert not p.log.count(r"runtime\.max_open_files: each worker may open")
        (worker,) = p.workers()
        bigger = LOW.replace("max_open_files = 64", "max_open_files = 8192").replace("{origin}", origin.url)
        p.config_path.write_text(bigger.replace('listener = "127.0.0.1:0"', 'listener = "127.0.0.1:0"\nbacklog = 4096'))
        mark = p.log.mark()
        os.kill(p.pid, signal.SIGHUP)
        p.log.wait_line(r"reload 1 \(SIGHUP\) done", after=mark)
        assert p.log.count(r"reload 1: runtime\.max_open_files changed \(4096 -> 8192\): needs a restart", after=mark)
        assert p.log.count(r"reload 1: runtime\.max_open_files: each worker may open 4096 files", after=mark)
        assert soft_nofile(worker) == 4096
    finally:
        factory.close()
