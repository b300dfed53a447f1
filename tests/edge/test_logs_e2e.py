"""A real ``monolake run`` with ``[log] format = "json"``: its error log is JSON lines, and the admin
endpoint's ``POST /log_level`` turns a worker's debug lines on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from conftest import ProxyFactory, free_port

from ._support import EchoOrigin, LoopThread

HERE = Path(__file__).parent

CONFIG = """
[log]
level = "info"
format = "json"

[admin]
listen = "127.0.0.1:{admin}"

[servers.web]
listener = "127.0.0.1:0"
filters = ["edge_user_filters:DebugLine"]

[[servers.web.routes]]
upstreams = [{ endpoint = "{origin}" }]
"""


def test_json_error_log_and_admin_log_level(tmp_path: Path) -> None:
    lt = LoopThread()
    origin = EchoOrigin(lt)
    factory = ProxyFactory(tmp_path, "uvloop")
    admin = free_port()
    try:
        # cwd: the filter module is found in the config file's directory; put it there
        (tmp_path / "edge_user_filters.py").write_text((HERE / "edge_user_filters.py").read_text())
        p = factory(CONFIG, admin=admin, origin=origin.url)
        ready = next(line for line in p.log.lines if "monolake ready" in line)
        doc = json.loads(ready)
        assert doc["level"] == "INFO" and doc["logger"] == "monolake" and doc["pid"] == p.pid
        with httpx.Client(trust_env=False, timeout=30) as c:
            assert c.get(f"{p.url}/before").status_code == 200
            r = c.post(f"http://127.0.0.1:{admin}/log_level?level=debug")
            assert r.status_code == 200 and r.json() == {"level": "debug"}
            assert c.get(f"http://127.0.0.1:{admin}/log_level").json() == {"level": "debug"}
            # the worker follows the shared level within a second: keep asking until its line shows
            deadline = time.monotonic() + 30
            while not p.log.count(r"debug line for /after"):
                assert time.monotonic() < deadline, "no debug line from the worker"
                c.get(f"{p.url}/after")
                time.sleep(0.05)
        lines = [json.loads(line) for line in p.log.lines if "debug line for" in line]
        assert all(d["level"] == "DEBUG" and d["logger"] == "monolake.test" for d in lines)
        assert {d["pid"] for d in lines} <= set(p.workers()) | p.seen_workers
        assert not any("/before" in d["message"] for d in lines)
    finally:
        factory.close()
        origin.close()
        lt.close()
