"""``@may_await`` filter phases: a plain call that returns its result, or an awaitable the proxy
awaits only when it gets one (apps/proxy/_filters.py); and examples/filters/may_await.py."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monolake.apps.config import FilterSpec
from monolake.apps.proxy._filters import ASYNC, MAYBE, PLAIN, Phases, load_filters
from monolake.core.proto.http1 import Headers, Request
from monolake.core.service import Context

from ._support import EchoOrigin, InProcessProxy, LoopThread, echo

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def answer(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    status, out, data = echo(method, target, headers, body)
    if target.startswith(b"/wait/"):
        out = [*out, ("X-Wait", "1")]  # the response_filter awaits on these
    return status, out, data


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessProxy, Path]]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys.json"
    keys.write_text(json.dumps(["k1"]))
    lt = LoopThread()
    origin = EchoOrigin(lt, answer)
    up = [{"endpoint": origin.url}]
    raw = {
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "request_timeout": 1.0,
                "filters": [
                    {"use": "edge_maybe_filters:Maybe", "args": {"name": "a"}},
                    {"use": "edge_maybe_filters:Plain", "args": {"name": "p"}},
                    {"use": "edge_maybe_filters:Maybe", "args": {"name": "b"}},
                ],
                "routes": [
                    {
                        "path": "/keyed/",
                        "upstreams": up,
                        "filters": [
                            {
                                "use": "examples.filters.may_await:ApiKeys",
                                "args": {"path": str(keys), "reload_every": 3600.0},
                            }
                        ],
                    },
                    {"path": "/", "upstreams": up},
                ],
            }
        }
    }
    proxy = InProcessProxy(lt, raw, base_dir=HERE)
    yield proxy, keys
    proxy.close()
    origin.close()
    lt.close()


def get(proxy: InProcessProxy, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        return c.get(path, **kw)


def test_phases_keep_the_plain_loop_for_a_may_await_request_filter() -> None:
    from .edge_maybe_filters import Maybe, Plain

    filters = [Maybe("a"), Plain("p")]
    phases = Phases(filters)
    assert phases.awaits["request_filter"] is None  # answered in the plain loop, awaited only when it must
    assert phases.awaits["upstream_request_filter"] == (MAYBE, PLAIN)
    assert phases.awaits["response_filter"] == (MAYBE, PLAIN)
    assert phases.awaits["logging"] == (MAYBE,)

    class Async(Plain):
        async def request_filter(self, req: Request, ctx: Context) -> None:
            return None

    assert Phases([Async("x"), *filters]).awaits["request_filter"] == (ASYNC, MAYBE)


def test_direct_results_and_awaited_ones_in_config_order(stack: tuple[InProcessProxy, Path]) -> None:
    proxy, _ = stack
    r = get(proxy, "/direct")
    assert r.status_code == 200
    assert r.json()["headers"]["x-order"] == "a,p,b"  # upstream phase: each called, nothing awaited
    assert r.headers["x-order"] == "a,p,b"
    r = get(proxy, "/wait/ok")
    assert r.status_code == 200
    sent = r.json()["headers"]
    assert sent["x-waited-a"] == "1" and sent["x-waited-b"] == "1"  # both request filters' awaitables awaited
    assert sent["x-order"] == "a~,p,b~"  # the awaited ones in their config place
    assert r.headers["x-order"] == "a~,p,b~"


def test_logging_runs_direct_calls_and_awaitables(stack: tuple[InProcessProxy, Path]) -> None:
    LOGGED = sys.modules["edge_maybe_filters"].LOGGED  # the module the config loaded

    assert get(proxy_of(stack), "/log-direct").status_code == 200
    assert get(proxy_of(stack), "/wait/log").status_code == 200
    deadline = time.monotonic() + 10
    want = {("a", b"/log-direct"), ("b", b"/log-direct"), ("a~", b"/wait/log"), ("b~", b"/wait/log")}
    while not want <= set(LOGGED):
        assert time.monotonic() < deadline, LOGGED
        time.sleep(0.01)


def proxy_of(stack: tuple[InProcessProxy, Path]) -> InProcessProxy:
    return stack[0]


def test_awaited_answer_failure_and_deadline(stack: tuple[InProcessProxy, Path], caplog: Any) -> None:
    proxy, _ = stack
    r = get(proxy, "/wait/deny")
    assert r.status_code == 403 and r.text == "denied after a wait\n"
    with caplog.at_level("WARNING"):
        assert get(proxy, "/wait/fail").status_code == 500  # a filter's failure: 500, not an upstream's 502
        assert get(proxy, "/wait/slow").status_code == 500  # the deadline passed while it awaited
    text = caplog.text
    assert "edge_maybe_filters:Maybe.request_filter failed: RuntimeError: the store is down" in text
    assert "request timeout of 1s exceeded while edge_maybe_filters:Maybe.request_filter ran" in text


def test_api_keys_example(stack: tuple[InProcessProxy, Path]) -> None:
    """examples/filters/may_await.py: a known key answered by the call itself, an unknown one
    after a reload of the key file (at most once per reload_every)."""
    proxy, keys = stack
    assert get(proxy, "/keyed/x").status_code == 401
    assert get(proxy, "/keyed/x", headers={"X-Api-Key": "k1"}).status_code == 200
    keys.write_text(json.dumps(["k1", "k2"]))
    assert get(proxy, "/keyed/x", headers={"X-Api-Key": "k2"}).status_code == 200  # reloaded: k2 is known now
    keys.write_text(json.dumps(["k1", "k2", "k3"]))
    assert get(proxy, "/keyed/x", headers={"X-Api-Key": "k3"}).status_code == 403  # no second reload this soon


def test_api_keys_example_returns_directly_for_a_known_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(["k1"]))
    (f,) = load_filters(
        [FilterSpec(use="examples.filters.may_await:ApiKeys", args={"path": str(keys)})],
        "servers.api.filters",
        base_dir=str(ROOT),
    )

    async def go() -> None:
        ctx = Context("10.0.0.1", "api", asyncio.get_running_loop().time())
        known = Request(b"GET", b"/", Headers([(b"X-Api-Key", b"k1")]))
        assert f.request_filter(known, ctx) is None  # type: ignore[attr-defined]  # no coroutine made
        unknown = Request(b"GET", b"/", Headers([(b"X-Api-Key", b"nope")]))
        pending = f.request_filter(unknown, ctx)  # type: ignore[attr-defined]
        assert inspect.isawaitable(pending)
        assert (await pending).status == 403
        assert f.reloads == 1  # type: ignore[attr-defined]

    asyncio.run(go())


def test_tcp_thrift_and_after_the_fact_runners_take_may_await_phases() -> None:
    """``on_connect``, ``call_filter`` and ``on_close``: a direct result is used as it is, an
    awaitable awaited (or, after the fact, run as a task)."""
    from monolake.apps.proxy import TcpFilter, ThriftFilter, may_await
    from monolake.apps.proxy._filters import TcpPhases, ThriftPhases

    seen: list[str] = []

    async def later(value: Any, tag: str) -> Any:
        await asyncio.sleep(0)
        seen.append(tag)
        return value

    class Gate(TcpFilter):
        @may_await
        def on_connect(self, peer: str, ctx: Context) -> Any:
            if peer == "10.0.0.1":
                return True  # direct
            return later(peer != "10.0.0.9", f"connect {peer}")

        @may_await
        def on_close(self, ctx: Context, stats: Any) -> Any:
            return later(None, "closed") if stats == "slow" else seen.append("closed now")

    class Calls(ThriftFilter):
        @may_await
        def call_filter(self, call: Any, ctx: Context) -> Any:
            return later(None, f"call {call}") if call == "wait" else seen.append(f"call {call} now")

    async def go() -> None:
        tcp = TcpPhases("t", [Gate()])
        assert [k for _, k, _ in tcp.on_connect] == [MAYBE]
        ctx = Context("10.0.0.1", "t", asyncio.get_running_loop().time())
        assert await tcp.allow("10.0.0.1", ctx) is True
        assert await tcp.allow("10.0.0.2", ctx) is True
        assert await tcp.allow("10.0.0.9", ctx) is False
        tcp.closed(ctx, "now")
        tcp.closed(ctx, "slow")
        thrift = ThriftPhases("th", [Calls()])
        assert thrift.awaits  # a call filter that may wait: calls go through the awaiting variant
        await thrift.check_async("now", ctx)
        await thrift.check_async("wait", ctx)
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(go())
    # the on_close task ("closed") runs whenever the loop gets to it; the rest in call order
    assert [t for t in seen if t != "closed"] == [
        "connect 10.0.0.2",
        "connect 10.0.0.9",
        "closed now",
        "call now now",
        "call wait",
    ]
    assert "closed" in seen
