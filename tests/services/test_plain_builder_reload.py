"""A plain AppBuilder (a function of the config) cannot keep state on reload: the runtime has
no old service to give it. The reload must say so ("replaced"), not "unchanged" as it did
while a custom service's counter went back from 3 to 1; ``serve``'s builder keeps it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import READY, TIMEOUT, LineLog, _stop_process

SCRIPT = """
import sys
from monolake import Factory, Headers, HttpApp, Request, Response
from monolake.runtime import run
from monolake.runtime._serve import ServeBuilder, _InMemory, apps_config
from monolake.server._service_app import build_http_app


class Counter:
    def __init__(self, n: int) -> None:
        self.n = n

    async def __call__(self, req: Request) -> Response:
        self.n += 1
        return Response(200, Headers(), b"%d" % self.n)


class CounterFactory(Factory[Counter]):
    def make(self, old: Counter | None) -> Counter:
        return Counter(old.n if old is not None else 0)


app = HttpApp(name="web", listen="127.0.0.1:0", factory=CounterFactory())
cfg = apps_config([app], workers=1)


def plain(cfg):
    return {"web": build_http_app("web", cfg.servers["web"], CounterFactory())}


builder = plain if sys.argv[1] == "plain" else ServeBuilder([app])
sys.exit(run(cfg, builder, source=_InMemory("", None, cfg)))
"""


def reload_and_count(tmp_path: Path, kind: str) -> tuple[str, int]:
    script = tmp_path / "counter.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), kind], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    log = LineLog(proc.stderr, "counter.py stderr")
    try:
        url = "http://" + log.wait_line(READY)["servers"].split("=", 1)[1]
        assert [httpx.get(url, timeout=TIMEOUT).text for _ in range(3)] == ["1", "2", "3"]
        mark = log.mark()
        proc.send_signal(signal.SIGHUP)
        changes = log.wait_line(r"reload 1 \(SIGHUP\) done: (\S+)", after=mark)[1]
        return changes, int(httpx.get(url, timeout=TIMEOUT).text)
    finally:
        _stop_process(proc)
        log.join()
        proc.stderr.close()


def test_a_plain_builder_reports_its_apps_replaced(tmp_path: Path) -> None:
    assert reload_and_count(tmp_path, "plain") == ("replaced=web", 1)


def test_the_serve_builder_keeps_state_with_make_old(tmp_path: Path) -> None:
    assert reload_and_count(tmp_path, "serve") == ("rebuilt=web", 4)
