"""The HTTP → Thrift gateway through ``monolake run``, on both loop kinds, with httpx.

The IDL is the example's (examples/gateway/echo.thrift); its service runs on
thriftpy2 servers in this process: framed binary, framed compact, and behind
TTHeader (to carry rpc-persist-*/rpc-transit-* metadata).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import thriftpy2
from thrift_peers import Handler, ThriftpyServer, TTHeaderServer, Upstream

from conftest import REPO, Proxy, ProxyFactory, refused_port

pytestmark = pytest.mark.e2e

IDL = REPO / "examples" / "gateway" / "echo.thrift"
echo: Any = thriftpy2.load(str(IDL), module_name="echo_gateway_test_thrift")


class EchoHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def Echo(self, req: Any) -> Any:
        headers = getattr(Handler.current, "headers", None)
        return echo.EchoResponse(
            id=req.id,
            text=req.text,
            lang=req.lang,
            trace=req.trace,
            session=req.session,
            tags=req.tags,
            counts=req.counts,
            mood=req.mood,
            code=req.status,
            internal="never shown",
            meta=sorted(f"{k}={v}" for k, v in headers.items()) if headers is not None else None,
        )

    def Lookup(self, req: Any) -> Any:
        if req.key == 0:
            raise echo.NotFound(what="key", key=req.key)
        if req.key < 0:
            raise echo.Invalid(why="negative key")
        return echo.LookupResponse(keys=[req.key, *(req.also or [])], name=f"k{req.key}")

    def Ping(self, sleep: float) -> str:
        time.sleep(sleep or 0)
        return "pong"


@pytest.fixture(scope="module")
def echo_ups() -> Iterator[dict[str, Upstream]]:
    started: dict[str, Upstream] = {
        "framed": ThriftpyServer("gw-framed", "binary", echo.EchoService, EchoHandler()),
        "compact": ThriftpyServer("gw-compact", "compact", echo.EchoService, EchoHandler()),
        "tt": TTHeaderServer("gw-tt", echo.EchoService, EchoHandler()),
    }
    yield started
    for up in started.values():
        up.close()


CONFIG = """
[upstreams.echo]
endpoints = [{ endpoint = "{framed}" }]

[servers.framed]
listener = "127.0.0.1:0"
[[servers.framed.routes]]
upstream = "echo"
timeout = 1.0
gateway = { idl = "{idl}", service = "EchoService" }

[servers.compact]
listener = "127.0.0.1:0"
[[servers.compact.routes]]
upstreams = [{ endpoint = "{compact}" }]
gateway = { idl = "{idl}", service = "EchoService", protocol = "compact" }

[servers.tt]
listener = "127.0.0.1:0"
[[servers.tt.routes]]
path = "/echo/"
upstreams = [{ endpoint = "{tt}" }]
gateway = { idl = "{idl}", service = "EchoService", transport = "ttheader" }
[[servers.tt.routes]]
path = "/"
upstreams = [{ endpoint = "{framed}" }]
gateway = { idl = "{idl}", service = "EchoService", transport = "framed" }

[servers.down]
listener = "127.0.0.1:0"
[[servers.down.routes]]
upstreams = [{ endpoint = "127.0.0.1:{dead_port}" }]
gateway = { idl = "{idl}", service = "EchoService" }
"""


@pytest.fixture(scope="module")
def gw(module_proxy: ProxyFactory, echo_ups: dict[str, Upstream]) -> Proxy:
    return module_proxy(CONFIG, idl=IDL, dead_port=refused_port(), **{k: u.address for k, u in echo_ups.items()})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as c:
        yield c


FULL = {
    "text": "hi",
    "tags": [{"name": "a"}, {"name": "b", "weight": 5}],
    "counts": {"x": 1, "y": 2},
    "mood": "GRUMPY",
}


@pytest.mark.parametrize("server", ["framed", "compact", "tt"])
def test_echo_maps_path_query_header_cookie_body(gw: Proxy, client: httpx.Client, server: str) -> None:
    r = client.post(
        f"{gw.url_of(server)}/echo/123?lang=fr",
        json={**FULL, "secret": "ignored"},
        headers={"X-Trace": "tr-1", "Cookie": "session=s-9; other=1"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-trace"] == "tr-1"  # api.header in the response: a header, not a body key
    body = r.json()
    body.pop("meta", None)
    assert body == {
        "id": "123",  # api.js_conv: i64 as a string
        "text": "hi",
        "lang": "fr",
        "session": "s-9",
        "tags": [{"name": "a", "weight": 1}, {"name": "b", "weight": 5}],
        "counts": {"x": 1, "y": 2},
        "mood": 2,
    }


def test_js_conv_keeps_int64_exact(gw: Proxy, client: httpx.Client) -> None:
    big = 2**63 - 1
    r = client.post(f"{gw.url_of('framed')}/echo/{big}", json={"text": "x"})
    assert r.status_code == 200 and r.json()["id"] == str(big)


def test_http_code_field_sets_the_status(gw: Proxy, client: httpx.Client) -> None:
    r = client.post(f"{gw.url_of('framed')}/echo/1", json={"text": "x", "status": 201})
    assert r.status_code == 201 and r.json()["text"] == "x"


def test_get_with_path_and_repeated_query(gw: Proxy, client: httpx.Client) -> None:
    r = client.get(f"{gw.url_of('framed')}/lookup/5", params=[("also", "1"), ("also", "2")])
    assert r.status_code == 200
    assert r.json() == {"keys": [5, 1, 2], "name": "k5"}
    r = client.get(f"{gw.url_of('framed')}/ping", params={"sleep": "0"})
    assert (r.status_code, r.json()) == (200, "pong")


def test_declared_exceptions_are_4xx(gw: Proxy, client: httpx.Client) -> None:
    r = client.get(f"{gw.url_of('framed')}/lookup/0")
    assert r.status_code == 404  # the exception's api.http_code
    assert r.json() == {"error": "NotFound", "detail": {"what": "key", "key": 0}}
    r = client.get(f"{gw.url_of('framed')}/lookup/-1")
    assert r.status_code == 400
    assert r.json() == {"error": "Invalid", "detail": {"why": "negative key"}}


@pytest.mark.parametrize(
    ("target", "body", "field"),
    [
        ("/echo/1", {}, "body.text"),
        ("/echo/1", {"text": 5}, "body.text"),
        ("/echo/abc", {"text": "x"}, "path.id"),
        ("/echo/1", {"text": "x", "tags": [{"weight": 2}]}, "body.tags[0].name"),
        ("/echo/1", {"text": "x", "tags": [{"name": "n", "weight": 2**40}]}, "body.tags[0].weight"),
        ("/echo/1", {"text": "x", "mood": "SLEEPY"}, "body.mood"),
        ("/echo/1", {"text": "x", "counts": {"a": "1"}}, "body.counts.a"),
        ("/echo/1", [1, 2], "body"),
    ],
)
def test_bad_input_is_400_naming_the_field(gw: Proxy, client: httpx.Client, target: str, body: Any, field: str) -> None:
    r = client.post(f"{gw.url_of('framed')}{target}", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_bad_query_value_and_not_json(gw: Proxy, client: httpx.Client) -> None:
    r = client.get(f"{gw.url_of('framed')}/lookup/5?also=x")
    assert (r.status_code, r.json()["field"]) == (400, "query.also[0]")
    r = client.post(f"{gw.url_of('framed')}/echo/1", content=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["field"]) == (400, "body")


def test_unknown_path_and_wrong_method(gw: Proxy, client: httpx.Client) -> None:
    assert client.get(f"{gw.url_of('framed')}/nope").status_code == 404
    r = client.get(f"{gw.url_of('framed')}/echo/1")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_upstream_down_is_502(gw: Proxy, client: httpx.Client) -> None:
    mark = gw.log.mark()
    r = client.get(f"{gw.url_of('down')}/lookup/1")
    assert r.status_code == 502
    assert "ConnectError" in r.json()["error"]
    gw.log.wait_line(r"gateway down\.routes\[0\] Lookup: upstream 127\.0\.0\.1:\d+ failed: ConnectError", after=mark)


def test_upstream_timeout_is_504(gw: Proxy, client: httpx.Client) -> None:
    r = client.get(f"{gw.url_of('framed')}/ping", params={"sleep": "3"})
    assert r.status_code == 504
    assert "ReadTimeout" in r.json()["error"]


def test_metadata_travels_as_ttheader_keys(gw: Proxy, client: httpx.Client) -> None:
    r = client.post(
        f"{gw.url_of('tt')}/echo/7",
        json={"text": "m"},
        headers={"rpc-persist-trace-id": "t-77", "RPC-Transit-Hop": "h1", "x-other": "no"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["meta"] == ["RPC_PERSIST_TRACE_ID=t-77", "RPC_TRANSIT_HOP=h1", "isn=EchoService"]
    assert r.headers["rpc-backward-server"] == "gw-tt"  # RPC_BACKWARD_* reply keys come back as headers
    # The second route of that server is framed: nowhere to carry metadata, and none arrives.
    r = client.get(f"{gw.url_of('tt')}/lookup/3", headers={"rpc-persist-trace-id": "t"})
    assert r.status_code == 200 and "rpc-backward-server" not in r.headers


def test_concurrent_requests(gw: Proxy, echo_ups: dict[str, Upstream]) -> None:
    def one(i: int) -> tuple[int, str]:
        with httpx.Client(timeout=20) as c:
            r = c.post(f"{gw.url_of('framed')}/echo/{i}", json={"text": f"t{i}"})
            return r.status_code, r.json()["text"]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(40)))
    assert results == [(200, f"t{i}") for i in range(40)]


BIG = {
    "text": "lorem ipsum dolor sit amet " * 9,
    "tags": [{"name": f"tag-{i}", "weight": i} for i in range(20)] + [{"name": "no-weight"}],
    "counts": {f"k{i}": i for i in range(12)},
    "mood": "HAPPY",
    "status": 200,
}


def test_a_1kb_request_is_the_same_on_every_protocol(gw: Proxy, client: httpx.Client) -> None:
    # Binary upstreams get bytes written straight from the JSON (the generated fast path),
    # compact ones thriftpy2 objects: the answers must not differ.
    answers = []
    for server in ("framed", "compact", "tt"):
        r = client.post(f"{gw.url_of(server)}/echo/9007199254740993?lang=en", json=BIG, headers={"X-Trace": "t"})
        assert r.status_code == 200, r.text
        body = r.json()
        body.pop("meta", None)
        answers.append(body)
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["id"] == "9007199254740993"
    assert answers[0]["tags"][-1] == {"name": "no-weight", "weight": 1}  # the IDL default, written by the gateway


@pytest.mark.parametrize("server", ["framed", "compact"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x", "tags": [{"name": "n"}, {"name": 5}]}, "body.tags[1].name"),
        ({"text": "x", "counts": {"a": 2**31}}, "body.counts.a"),
        ({"text": "x", "status": True}, "body.status"),
        ({"tags": []}, "body.text"),
    ],
)
def test_bad_input_names_the_field_on_both_protocols(
    gw: Proxy, client: httpx.Client, server: str, body: Any, field: str
) -> None:
    r = client.post(f"{gw.url_of(server)}/echo/1", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
