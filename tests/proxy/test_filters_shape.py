"""Loading filters and layers: phase shapes checked at load, async phases found at build time,
after-the-fact async phases run as bounded tasks."""

from __future__ import annotations

import asyncio
import functools
import logging
import types
from typing import Any

import pytest

from monolake.config import FilterSpec, parse_config
from monolake.errors import ConfigError
from monolake.proxy import HttpFilter, TcpFilter, ThriftFilter, build_apps, load_filters, load_layers
from monolake.proxy._filters import Background, Phases, ThriftPhases
from monolake.service import Layer


class OneArg(HttpFilter):
    async def request_filter(self, req):  # type: ignore[no-untyped-def,override]
        return None


class NotCallable(HttpFilter):
    response_filter = 3  # type: ignore[assignment]


class Yields(HttpFilter):
    async def upstream_request_filter(self, req, ctx):  # type: ignore[no-untyped-def,override]
        yield None


class LoggingTooFew(HttpFilter):
    def logging(self, req, resp):  # type: ignore[no-untyped-def,override]
        return None


class Flexible(HttpFilter):
    def request_filter(self, *args: Any) -> None:
        return None

    async def logging(self, req: Any, resp: Any, ctx: Any, extra: int = 0) -> None:
        return None


def _traced(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)  # a coroutine, from a plain function

    return wrapper


class Wrapped(HttpFilter):
    @_traced
    async def request_filter(self, req: Any, ctx: Any) -> None:
        return None


class Plain:
    """Not an HttpFilter subclass: duck-typed phases are fine."""

    def response_filter(self, resp: Any, ctx: Any) -> None:
        return None


class Nothing:
    pass


class ConnectOnly(TcpFilter):
    def on_connect(self, peer: str, ctx: Any) -> bool:
        return True


class BadClose(TcpFilter):
    def on_close(self, ctx: Any) -> None:  # type: ignore[override]
        return None


class BadCall(ThriftFilter):
    async def call_done(self, call: Any, ctx: Any) -> None:  # type: ignore[override]
        return None


class NotALayer:
    def layer(self, inner: Any) -> Any:
        return inner


class GoodLayer(Layer):
    def layer(self, inner: Any) -> Any:
        return inner


MOD = types.ModuleType("h9mod")
for _cls in (
    OneArg,
    NotCallable,
    Yields,
    LoggingTooFew,
    Flexible,
    Plain,
    Nothing,
    ConnectOnly,
    BadClose,
    BadCall,
    NotALayer,
    GoodLayer,
):
    setattr(MOD, _cls.__name__, _cls)
MODULES = {"h9mod": MOD}


def _load(name: str, kind: str = "http") -> list[object]:
    return load_filters([f"h9mod:{name}"], "servers.s.filters", modules=MODULES, kind=kind)


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        (
            "OneArg",
            "http",
            "`h9mod:OneArg.request_filter` takes 1 positional argument, a request_filter takes (req, ctx)",
        ),
        ("NotCallable", "http", "`h9mod:NotCallable.response_filter` is a int, not a method"),
        ("Yields", "http", "`h9mod:Yields.upstream_request_filter` is an async generator"),
        (
            "LoggingTooFew",
            "http",
            "`h9mod:LoggingTooFew.logging` takes 2 positional arguments, a logging takes (req, resp, ctx)",
        ),
        ("Nothing", "http", "defines none of the http filter phases"),
        ("BadClose", "tcp", "`h9mod:BadClose.on_close` takes 1 positional argument, a on_close takes (ctx, stats)"),
        ("BadCall", "thrift", "a call_done takes (call, outcome, ctx)"),
        ("Plain", "tcp", "defines none of the tcp filter phases on_connect, on_close (it has http phases"),
        ("ConnectOnly", "http", "defines none of the http filter phases"),
    ],
)
def test_wrong_shapes_name_the_filter_and_phase(name: str, kind: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(name, kind)
    assert info.value.path == "servers.s.filters[0]"
    assert message in info.value.reason


@pytest.mark.parametrize(("name", "kind"), [("Flexible", "http"), ("Plain", "http"), ("ConnectOnly", "tcp")])
def test_right_shapes_load(name: str, kind: str) -> None:
    (obj,) = _load(name, kind)
    assert type(obj).__name__ == name


def test_phases_know_which_filters_are_async_at_build_time() -> None:
    (flexible,) = _load("Flexible")
    (plain,) = _load("Plain")
    phases = Phases([flexible, plain])
    assert phases.awaits["request_filter"] is None  # all plain: the proxy keeps its plain loop
    assert phases.mixed("request_filter") == ()
    assert phases.awaits["logging"] == (True,)
    assert [n for _, _, n in phases.mixed("logging")] == [f"{Flexible.__module__}:Flexible.logging"]
    assert phases.awaits["response_filter"] is None
    assert len(phases.response_filter) == 1
    # An async def under a functools.wraps decorator is still awaited.
    assert Phases([Wrapped()]).awaits["request_filter"] == (True,)


def test_layers_must_be_layers() -> None:
    (layer,) = load_layers(["h9mod:GoodLayer"], "servers.s.layers", modules=MODULES)
    assert isinstance(layer, GoodLayer)
    with pytest.raises(ConfigError) as info:
        load_layers(["h9mod:GoodLayer", FilterSpec(use="h9mod:NotALayer")], "servers.s.layers", modules=MODULES)
    assert info.value.path == "servers.s.layers[1]"
    assert "made a NotALayer, not a monolake.service.Layer" in info.value.reason


def test_a_server_without_filters_gets_no_hooks() -> None:
    cfg = parse_config(
        {
            "servers": {
                "t": {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstreams": [{"endpoint": "127.0.0.1:9"}]},
                "r": {"listener": "127.0.0.1:0", "proxy_type": "thrift", "routes": [{"upstream": "u"}]},
            },
            "upstreams": {"u": {"endpoints": [{"endpoint": "127.0.0.1:9"}]}},
        }
    )
    apps: Any = build_apps(cfg)
    assert apps["t"].hooks is None
    assert apps["r"].dispatcher.phases is None


def test_config_refuses_base_dir_in_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"base_dir": "/tmp", "servers": {}})
    assert info.value.path == "base_dir"


# -- after-the-fact async phases -------------------------------------------------------------


def test_background_is_bounded_and_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, int]:
        bg = Background("web", limit=2)
        gate = asyncio.Event()
        ran: list[int] = []

        async def wait(i: int) -> None:
            await gate.wait()
            ran.append(i)

        async def boom() -> None:
            raise RuntimeError("broken logger")

        for i in range(4):
            bg.start(wait(i), f"w{i}")
        dropped = bg.dropped
        gate.set()
        while bg.tasks:
            await asyncio.sleep(0)
        bg.start(boom(), "m:Broken.logging")
        while bg.tasks:
            await asyncio.sleep(0)
        return dropped, len(ran)

    with caplog.at_level(logging.WARNING, logger="monolake.filters"):
        dropped, ran = asyncio.run(main())
    assert (dropped, ran) == (2, 2)
    assert "servers.web: 2 async filter calls running, w2 dropped (1 so far)" in caplog.text
    assert "servers.web: m:Broken.logging failed: RuntimeError: broken logger" in caplog.text


def test_thrift_phases_run_sync_and_async_call_filters_in_order() -> None:
    seen: list[str] = []

    class A(ThriftFilter):
        def call_filter(self, call: Any, ctx: Any) -> None:
            seen.append("a")

    class B(ThriftFilter):
        async def call_filter(self, call: Any, ctx: Any) -> None:
            await asyncio.sleep(0)
            seen.append("b")

    class C(ThriftFilter):
        def call_filter(self, call: Any, ctx: Any) -> None:
            seen.append("c")

    phases = ThriftPhases("rpc", [A(), B(), C()], timeout=5)
    assert phases.awaits
    asyncio.run(phases.check_async(object(), None))  # type: ignore[arg-type]
    assert seen == ["a", "b", "c"]
