"""Hot reload of a running proxy: real processes, real signals, real file changes.

Every reload is awaited on its outcome line (``reload N (TRIGGER) done|failed|aborted``)
and then checked through fresh connections until each worker has answered (the
``Tag`` filter names the worker that served a response).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reload_ops import TAG_MODULE, Fleet, statuses, tags_by_worker, write_atomic

from conftest import Origin, Proxy, ProxyFactory, RawClient, raw_request, render

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 5
{runtime}

[upstreams.backend]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
filters = [{ use = "tagmod:Tag", args = { value = "{tag}" } }{filters}]

[[servers.web.routes]]
path = "{path}"
upstream = "backend"
response_headers = { set = { "X-Chain" = "{chain}" } }
{extra}
"""

DEFAULTS = {"runtime": "", "tag": "v1", "filters": "", "path": "/", "chain": "one", "extra": ""}


def conf(origin: Origin, **values: str) -> str:
    return render(CONFIG, origin=origin.url, **{**DEFAULTS, **values})


@pytest.fixture
def start(proxy: ProxyFactory, tmp_path: Path) -> Iterator[object]:
    """``start(text, workers=N) -> (Proxy, Fleet)`` with the Tag filter importable."""
    (tmp_path / "tagmod.py").write_text(TAG_MODULE)
    fleets: list[Fleet] = []

    def _start(text: str, workers: int = 2) -> tuple[Proxy, Fleet]:
        p = proxy(text, workers=workers)
        fleet = Fleet(p)
        fleets.append(fleet)
        return p, fleet

    yield _start
    for fleet in fleets:
        fleet.close()


def test_sighup_changes_a_route(start, origin: Origin) -> None:
    p, fleet = start(conf(origin, path="/a", chain="one"))
    assert set(tags_by_worker(p.url, 2, "/a/echo").values()) == {"v1"}
    assert statuses(p.url, "/b/echo", 5) == {404}

    m = fleet.reload(conf(origin, path="/b", chain="two", tag="v2"))
    assert m[2] == "done", p.log.text
    assert "changed=web" in m.string

    tags = tags_by_worker(p.url, 2, "/b/echo")
    assert len(tags) == 2 and set(tags.values()) == {"v2"}, tags
    assert statuses(p.url, "/a/echo") == {404}
    r = httpx.get(p.url + "/b/echo", trust_env=False)
    assert r.headers["x-chain"] == "two"
    assert set(fleet.workers()) == {int(w) for w in tags}  # reloaded in place, no restart


def test_bad_config_keeps_the_running_one_and_names_the_key(start, origin: Origin) -> None:
    p, fleet = start(conf(origin, path="/a"))
    bad = conf(origin, path="/b").replace('upstream = "backend"', 'upstream = "nope"')
    m = fleet.reload(bad)
    assert m[2] == "failed"
    assert "config error: servers.web.routes[0].upstream: unknown cluster 'nope'" in m.string
    assert "still serving the running config" in m.string

    m = fleet.reload("[servers.web\nlistener = ")
    assert m[2] == "failed" and "is not valid TOML" in m.string

    assert set(tags_by_worker(p.url, 2, "/a/echo").values()) == {"v1"}
    assert statuses(p.url, "/b/echo", 5) == {404}
    # A good config after the bad ones goes through.
    assert fleet.reload(conf(origin, path="/b"))[2] == "done"
    assert statuses(p.url, "/b/echo", 5) == {200}


FLAKY = """\
import os
import pathlib

from monolake.proxy import HttpFilter

if pathlib.Path(f"fail-{os.getpid()}").exists():
    raise ImportError(f"refusing to load in {os.getpid()}")


class Pass(HttpFilter):
    def request_filter(self, req, ctx):
        return None
"""


def test_import_error_in_one_worker_aborts_everywhere(start, origin: Origin, tmp_path: Path) -> None:
    p, fleet = start(conf(origin, path="/a"))
    (tmp_path / "flaky.py").write_text(FLAKY)
    victim = fleet.workers()[1]
    (tmp_path / f"fail-{victim}").touch()  # the new filter imports in one worker and not the other

    mark = p.log.mark()
    m = fleet.reload(conf(origin, path="/b", tag="v2", filters=', "flaky:Pass"'))
    assert m[2] == "aborted", p.log.text
    assert "servers.web.filters[1]: cannot import 'flaky': ImportError: refusing to load in" in m.string
    # The worker that had prepared dropped what it built.
    p.log.wait_line(r"worker \d: reload 1 aborted, the running apps stay", after=mark)

    tags = tags_by_worker(p.url, 2, "/a/echo")
    assert len(tags) == 2 and set(tags.values()) == {"v1"}, tags
    assert statuses(p.url, "/b/echo") == {404}

    (tmp_path / f"fail-{victim}").unlink()
    assert fleet.reload()[2] == "done"
    assert set(tags_by_worker(p.url, 2, "/b/echo").values()) == {"v2"}


CRASHY = """\
import os
import pathlib

if pathlib.Path(f"crash-{os.getpid()}").exists():
    os._exit(3)

from monolake.proxy import HttpFilter


class Pass(HttpFilter):
    def request_filter(self, req, ctx):
        return None
"""


def test_worker_dying_while_preparing_aborts_and_restarts_on_the_running_config(
    start, origin: Origin, tmp_path: Path
) -> None:
    p, fleet = start(conf(origin, path="/a"))
    (tmp_path / "crashy.py").write_text(CRASHY)
    victim = fleet.workers()[0]
    (tmp_path / f"crash-{victim}").touch()
    mark = p.log.mark()
    m = fleet.reload(conf(origin, path="/b", filters=', "crashy:Pass"'))
    assert m[2] == "aborted" and f"(pid {victim}) exited with status 3 during the reload" in m.string, m.string
    p.log.wait_line(r"worker \d restarted, pid \d+", after=mark)
    workers = fleet.workers()
    assert victim not in workers and len(workers) == 2
    tags = tags_by_worker(p.url, 2, "/a/echo")
    assert {int(w) for w in tags} == set(workers)
    assert statuses(p.url, "/b/echo") == {404}


STAMP = """\
from monolake.proxy import HttpFilter

STAMP = b"{stamp}"


class Stamp(HttpFilter):
    def response_filter(self, resp, ctx):
        resp.headers.add(b"X-Stamp", STAMP)
"""


def test_edited_filter_module_takes_effect_on_reload(start, origin: Origin, tmp_path: Path) -> None:
    module = tmp_path / "stampmod.py"
    module.write_text(STAMP.replace("{stamp}", "v1"))
    p, fleet = start(conf(origin, filters=', "stampmod:Stamp"'))
    with RawClient(p.address) as keep:
        keep.send(raw_request("GET", "/echo"))
        assert keep.read_response().header("X-Stamp") == "v1"

        # Same size, same second: a stale .pyc would look valid; the reload compiles the source.
        module.write_text(STAMP.replace("{stamp}", "v2"))
        m = fleet.reload()
        assert m[2] == "done" and "changed=web" in m.string, m.string

        keep.send(raw_request("GET", "/echo"))
        assert keep.read_response().header("X-Stamp") == "v2"  # the open connection too
    seen = set()
    for _ in range(100):
        r = httpx.get(p.url + "/echo", trust_env=False)
        assert r.headers["x-stamp"] == "v2"
        seen.add(r.headers["x-worker"])
        if len(seen) == 2:
            break
    assert len(seen) == 2

    # A syntax error in the edited module aborts; the running filter stays.
    module.write_text("from monolake.proxy import HttpFilter\nclass Stamp(HttpFilter):\n    def oops(:\n")
    m = fleet.reload()
    assert m[2] == "aborted" and "servers.web.filters[1]: cannot import 'stampmod': SyntaxError" in m.string
    assert httpx.get(p.url + "/echo", trust_env=False).headers["x-stamp"] == "v2"


def test_reload_refuses_a_filter_phase_of_the_wrong_shape(start, origin: Origin, tmp_path: Path) -> None:
    module = tmp_path / "stampmod.py"
    module.write_text(STAMP.replace("{stamp}", "v1"))
    p, fleet = start(conf(origin, filters=', "stampmod:Stamp"'))
    assert httpx.get(p.url + "/echo", trust_env=False).headers["x-stamp"] == "v1"
    wrong = STAMP.replace("{stamp}", "v2").replace(
        "def response_filter(self, resp, ctx)", "async def response_filter(self, resp)"
    )
    module.write_text(wrong)
    m = fleet.reload()
    assert m[2] == "aborted", m.string
    assert (
        "servers.web.filters[1]: `stampmod:Stamp.response_filter` takes 1 positional argument, "
        "a response_filter takes (resp, ctx)"
    ) in m.string
    assert httpx.get(p.url + "/echo", trust_env=False).headers["x-stamp"] == "v1"  # the running filter stays


def test_config_file_change_reloads_with_debounce(start, origin: Origin) -> None:
    watched = "watch_config = true\n"
    p, fleet = start(conf(origin, runtime=watched, path="/a"))
    p.log.wait_line(r"watching .* for changes")

    mark = p.log.mark()
    write_atomic(p.config_path, conf(origin, runtime=watched, path="/b"))
    m = p.log.wait_line(r"reload (\d+) \(config file changed\) (done|failed|aborted)", after=mark)
    assert (m[1], m[2]) == ("1", "done"), p.log.text
    assert statuses(p.url, "/b/echo", 5) == {200}

    # A burst of in-place writes (the middle ones invalid) is one reload of the last content.
    mark = p.log.mark()
    for i in range(5):
        p.config_path.write_text("[servers.web\n" if i < 4 else conf(origin, runtime=watched, path="/c"))
    m = p.log.wait_line(r"reload (\d+) \(config file changed\) (done|failed|aborted)", after=mark)
    assert (m[1], m[2]) == ("2", "done"), p.log.text
    assert statuses(p.url, "/c/echo", 5) == {200}

    # Rewriting the same bytes is no change. The next reload (a SIGHUP) is number 3:
    # nothing reloaded in between.
    p.config_path.write_text(p.config_path.read_text())
    m = fleet.reload()
    assert m[1] == "3" and m[2] == "done", p.log.text


def test_keepalive_next_request_uses_new_chain_while_in_flight_finishes_on_old(start, origin: Origin) -> None:
    p, fleet = start(conf(origin, chain="one"), workers=1)
    with RawClient(p.address) as keep, RawClient(p.address) as slow:
        keep.send(raw_request("GET", "/echo"))
        assert keep.read_response().header("X-Chain") == "one"

        mark = origin.log.mark()
        slow.send(raw_request("GET", "/delay/2"))
        origin.log.wait_line(r"REQ GET /delay/2 ", after=mark)

        assert fleet.reload(conf(origin, chain="two"))[2] == "done"

        keep.send(raw_request("GET", "/echo"))
        r = keep.read_response()
        assert r.status == 200 and r.header("X-Chain") == "two"
        assert r.header("Connection") != "close"

        r = slow.read_response()
        assert (r.status, r.body, r.header("X-Chain")) == (200, b"delayed\n", "one")

        keep.send(raw_request("GET", "/echo"))
        assert keep.read_response().header("X-Chain") == "two"


def test_upstream_pool_survives_a_reload_that_kept_the_upstream(start, origin: Origin) -> None:
    p, fleet = start(conf(origin, chain="one"), workers=1)
    first = httpx.get(p.url + "/conn", trust_env=False).text
    assert httpx.get(p.url + "/conn", trust_env=False).text == first  # pooled

    extra = '[[servers.web.routes]]\npath = "/other"\nupstream = "backend"\n'
    m = fleet.reload(conf(origin, chain="two", extra=extra))
    assert m[2] == "done" and "changed=web" in m.string

    r = httpx.get(p.url + "/conn", trust_env=False)
    assert r.headers["x-chain"] == "two"
    assert r.text == first  # the origin sees the same upstream connection
    assert httpx.get(p.url + "/other/echo", trust_env=False).json()["conn"] == int(first)


LISTENERS = """
[upstreams.backend]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
filters = ["tagmod:Tag"]
[[servers.web.routes]]
upstream = "backend"
{more}
"""

SERVER = """
[servers.{name}]
listener = "{listener}"
filters = ["tagmod:Tag"]
[[servers.{name}.routes]]
upstream = "backend"
"""


def servers(**listeners: str) -> str:
    return "".join(render(SERVER, name=n, listener=addr) for n, addr in listeners.items())


def unix_get(path: Path, target: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), trust_env=False) as c:
        return c.get("http://local" + target)


def test_listeners_added_and_removed(start, origin: Origin, tmp_path: Path) -> None:
    old_sock, new_sock = tmp_path / "old.sock", tmp_path / "new.sock"
    p, fleet = start(render(LISTENERS, origin=origin.url, more=servers(old=f"unix:{old_sock}")))
    assert unix_get(old_sock, "/echo").status_code == 200
    web_pids = {int(w) for w in tags_by_worker(p.url, 2)}

    with httpx.Client(trust_env=False) as keep:
        assert keep.get(p.url + "/echo").status_code == 200
        more = servers(fresh="127.0.0.1:0", fresh_unix=f"unix:{new_sock}")
        m = fleet.reload(render(LISTENERS, origin=origin.url, more=more))
        assert m[2] == "done", p.log.text
        assert "added=fresh,fresh_unix removed=old unchanged=web" in m.string
        listening = p.log.wait_line(r"listening servers=(\S+)")
        addrs = dict(pair.split("=", 1) for pair in listening[1].split(","))
        assert addrs["web"] == p.servers["web"] and addrs["fresh_unix"] == f"unix:{new_sock}"

        assert keep.get(p.url + "/echo").status_code == 200  # the unchanged listener kept its connections
    assert {int(w) for w in tags_by_worker(p.url, 2)} == web_pids
    assert len(tags_by_worker("http://" + addrs["fresh"], 2)) == 2
    assert unix_get(new_sock, "/echo").status_code == 200
    assert not old_sock.exists()
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
        s.connect(str(old_sock))

    # A listener that cannot be bound fails the reload before any worker is asked.
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        more = servers(fresh="127.0.0.1:0", fresh_unix=f"unix:{new_sock}", busy=f"127.0.0.1:{port}")
        m = fleet.reload(render(LISTENERS, origin=origin.url, more=more))
        assert m[2] == "failed" and f"servers.busy.listener: cannot bind 127.0.0.1:{port}" in m.string
    finally:
        taken.close()
    assert len(tags_by_worker("http://" + addrs["fresh"], 2)) == 2


ADMIN = '''\
"""A stand-in for the admin endpoint: GET /-/reload asks for a reload, /-/result shows its outcome."""

import asyncio
import json

from monolake.proto.http1 import Headers, Response
from monolake.proxy import HttpFilter
from monolake.runtime import reload_status, request_reload

_task = None


class Admin(HttpFilter):
    def request_filter(self, req, ctx):
        global _task
        if req.path == b"/-/reload":
            _task = asyncio.get_running_loop().create_task(request_reload("admin test"))
            return Response(202, Headers([]), b"started\\n")
        if req.path == b"/-/status":
            _task = asyncio.get_running_loop().create_task(reload_status())
            return Response(202, Headers([]), b"started\\n")
        if req.path == b"/-/result":
            if _task is None or not _task.done():
                return Response(503, Headers([]), b"not yet\\n")
            body = json.dumps(_task.result()).encode()
            return Response(200, Headers([(b"Content-Type", b"application/json")]), body)
        return None
'''


def admin_result(url: str, what: str) -> dict[str, object]:
    assert httpx.get(url + f"/-/{what}", trust_env=False).status_code == 202
    for _ in range(200):
        r = httpx.get(url + "/-/result", trust_env=False)
        if r.status_code == 200:
            return dict(r.json())
        time.sleep(0.02)  # the outcome reaches the worker just after the supervisor logs it
    raise AssertionError("no result")


def test_request_reload_from_a_worker_returns_the_outcome(start, origin: Origin, tmp_path: Path) -> None:
    (tmp_path / "adminmod.py").write_text(ADMIN)
    p, fleet = start(conf(origin, path="/a", filters=', "adminmod:Admin"'), workers=1)
    fleet.write(conf(origin, path="/b", filters=', "adminmod:Admin"'))
    result = admin_result(p.url, "reload")
    assert result["ok"] is True and result["trigger"] == "admin test" and result["id"] == 1, result
    assert result["changes"] == {"web": "changed"} and result["error"] is None
    assert statuses(p.url, "/b/echo", 3) == {200}

    fleet.write(
        conf(origin, path="/b", filters=', "adminmod:Admin"').replace("drain_timeout = 5", "drain_timeout = -1")
    )
    result = admin_result(p.url, "reload")
    assert result["ok"] is False and result["id"] == 2
    assert str(result["error"]).startswith("config error: runtime.drain_timeout: must be >= 0"), result
    assert admin_result(p.url, "status") == result
