"""mypy --strict on user code of the public API: a correct chain passes, a wrong one is an error
(as is a runtime builder of another config type than the one ``run`` is given)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import monolake

GOOD = """
from monolake import Connection, Factory, Headers, HttpApp, ProxyApp, Request, Response, StreamApp, sse_response
from monolake.apps.config import Config, Server
from monolake.core.runtime import ServerApp, run
from monolake.core.server import HttpServerApp
from collections.abc import AsyncIterator, Mapping


class Hello:
    async def __call__(self, req: Request) -> Response:
        return Response(200, Headers(), self.events())

    async def events(self) -> AsyncIterator[bytes]:
        yield b"x"


class HelloFactory(Factory[Hello]):
    def make(self, old: Hello | None) -> Hello:
        return old if old is not None else Hello()


class Echo:
    async def __call__(self, conn: Connection) -> None:
        conn.write(await conn.read())
        await conn.drain()


class EchoFactory(Factory[Echo]):
    def make(self, old: Echo | None) -> Echo:
        return Echo()


async def events() -> AsyncIterator[str]:
    yield "tick"


http = HttpApp(name="web", listen="127.0.0.1:0", factory=HelloFactory())
stream = StreamApp(name="echo", listen="127.0.0.1:0", factory=EchoFactory())
sse = sse_response(events())
proxy = ProxyApp(
    name="p", listen="127.0.0.1:0", routes=[{"path": "/", "upstreams": [{"endpoint": "http://127.0.0.1:9"}]}]
)


def build(cfg: Config) -> Mapping[str, ServerApp]:
    return {}


def serve_it(cfg: Config) -> int:
    return run(cfg, build)
"""

BAD = (
    GOOD.split("http = ")[0]
    + """
wrong_http = HttpApp(name="web", listen="127.0.0.1:0", factory=EchoFactory())  # line A
wrong_stream = StreamApp(name="echo", listen="127.0.0.1:0", factory=HelloFactory())  # line B
wrong_server = HttpServerApp("web", Server(listener="127.0.0.1:0"), Echo())  # line C


def build_other(cfg: int) -> Mapping[str, ServerApp]:
    return {}


def run_other(cfg: Config) -> int:
    return run(cfg, build_other)  # line D
"""
)


def test_mypy_strict_accepts_a_right_chain_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    src = Path(monolake.__file__).resolve().parents[1]  # the monolake under test
    env = dict(os.environ, MYPYPATH=str(src))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "good.py", "bad.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("good.py")], out.stdout
    bad_lines = BAD.splitlines()
    flagged = {bad_lines[int(m[1]) - 1].rsplit("# ", 1)[-1] for e in errors if (m := re.match(r"bad\.py:(\d+):", e))}
    assert flagged == {"line A", "line B", "line C", "line D"}, out.stdout
