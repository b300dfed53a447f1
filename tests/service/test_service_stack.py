"""Stack: requirement checks, onion order, and rebuilds that hand over the old leaf."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from monolake.apps.config import parse_config
from monolake.apps.proxy import ProxyFactory, build_apps, server_stack
from monolake.core.errors import ConfigError
from monolake.core.service import SLOTS, Context, Factory, Layer, Stack

SERVER = ("peer", "server", "start")


# --- scripted pieces ----------------------------------------------------------------


class Recording:
    """A service that logs its way in and out around ``inner``."""

    def __init__(self, name: str, inner: Any, log: list[str]) -> None:
        self.name = name
        self.inner = inner
        self.log = log

    async def __call__(self, req: Any) -> Any:
        self.log.append(f"{self.name}>")
        resp = await self.inner(req)
        self.log.append(f"<{self.name}")
        return [*resp, self.name]


class RecordingLayer(Layer):
    def __init__(self, name: str, log: list[str], requires: set[str] = set(), provides: set[str] = set()) -> None:  # noqa: B006
        self._name = name
        self.log = log
        self.requires = frozenset(requires)
        self.provides = frozenset(provides)

    @property
    def name(self) -> str:
        return self._name

    def layer(self, inner: Any) -> Recording:
        return Recording(self._name, inner, self.log)


class Leaf:
    def __init__(self, log: list[str], generation: int, carried: Any = None) -> None:
        self.log = log
        self.generation = generation
        self.carried = carried

    async def __call__(self, req: Any) -> list[str]:
        self.log.append("leaf")
        return [f"leaf{self.generation}"]


class LeafFactory(Factory[Leaf]):
    requires = frozenset({"peer", "server"})
    provides = frozenset({"route", "cluster", "endpoint"})
    service_type = Leaf

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.made_from: list[Any] = []

    def make(self, old: Leaf | None) -> Leaf:
        self.made_from.append(old)
        return Leaf(self.log, 0 if old is None else old.generation + 1, carried=old)


class NeedsRoute(Layer):
    requires = frozenset({"route"})

    def layer(self, inner: Any) -> Any:
        return inner


# --- check --------------------------------------------------------------------------


def test_layer_requiring_what_nothing_outside_provides() -> None:
    stack = Stack([NeedsRoute()], LeafFactory([]), provided=SERVER)
    with pytest.raises(ConfigError) as info:
        stack.check()
    assert info.value.path == "NeedsRoute"
    assert "'route'" in info.value.reason
    assert "nothing outside it provides" in info.value.reason


def test_check_runs_before_build_makes_anything() -> None:
    leaf = LeafFactory([])
    with pytest.raises(ConfigError):
        Stack([NeedsRoute()], leaf, provided=SERVER).build()
    assert leaf.made_from == []


def test_leaf_requirements_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        Stack([], LeafFactory([]), provided=("peer",)).check()
    assert info.value.path == "LeafFactory"
    assert "'server'" in info.value.reason


def test_outer_layer_may_provide_for_inner_ones() -> None:
    log: list[str] = []
    outer = RecordingLayer("Auth", log, provides={"user"})
    inner = RecordingLayer("NeedsUser", log, requires={"user"})
    Stack([outer, inner], LeafFactory(log), provided=SERVER).check()


def test_inner_layer_cannot_provide_for_outer_ones() -> None:
    log: list[str] = []
    outer = RecordingLayer("NeedsUser", log, requires={"user"})
    inner = RecordingLayer("Auth", log, provides={"user"})
    with pytest.raises(ConfigError) as info:
        Stack([outer, inner], LeafFactory(log), provided=SERVER).check()
    assert info.value.path == "NeedsUser"
    assert "'user'" in info.value.reason


def test_a_layer_cannot_provide_for_itself() -> None:
    log: list[str] = []
    both = RecordingLayer("Selfish", log, requires={"tls"}, provides={"tls"})
    with pytest.raises(ConfigError) as info:
        Stack([both], LeafFactory(log), provided=SERVER).check()
    assert info.value.path == "Selfish"


def test_first_missing_slot_is_named_in_sorted_order() -> None:
    layer = RecordingLayer("Greedy", [], requires={"user", "cluster", "tls"})
    with pytest.raises(ConfigError) as info:
        Stack([layer], LeafFactory([]), provided=SERVER).check()
    assert "'cluster'" in info.value.reason


@pytest.mark.parametrize(("requires", "provides"), [({"routes"}, set()), (set(), {"session"})])
def test_unknown_slot_names_are_rejected(requires: set[str], provides: set[str]) -> None:
    layer = RecordingLayer("Typo", [], requires=requires, provides=provides)
    with pytest.raises(ConfigError) as info:
        Stack([layer], LeafFactory([]), provided=SERVER).check()
    assert info.value.path == "Typo"
    bad = next(iter(requires | provides))
    assert f"unknown context slot {bad!r}" in info.value.reason


def test_unknown_slot_on_the_leaf_is_rejected() -> None:
    class OddFactory(LeafFactory):
        provides = frozenset({"route", "upstream"})

    with pytest.raises(ConfigError) as info:
        Stack([], OddFactory([]), provided=SERVER).check()
    assert info.value.path == "OddFactory"
    assert "'upstream'" in info.value.reason


def test_unknown_provided_slot_is_rejected() -> None:
    with pytest.raises(ConfigError):
        Stack([], LeafFactory([]), provided=(*SERVER, "peers")).check()


def test_slots_match_the_context() -> None:
    # Compiled with mypyc, Context is a native class: its attributes are __mypyc_attrs__.
    attrs = getattr(Context, "__slots__", None) or getattr(Context, "__mypyc_attrs__", ())
    assert set(attrs) == SLOTS
    ctx = Context("10.0.0.1", "web", 1.5)
    assert (ctx.peer, ctx.server, ctx.start) == ("10.0.0.1", "web", 1.5)
    assert (ctx.route, ctx.cluster, ctx.endpoint, ctx.tls, ctx.user) == (None,) * 5
    with pytest.raises(AttributeError):
        ctx.routes = 1  # type: ignore[attr-defined]


def test_layer_name_defaults_to_the_class_name() -> None:
    assert NeedsRoute().name == "NeedsRoute"


# --- build --------------------------------------------------------------------------


async def test_build_order_is_an_onion() -> None:
    log: list[str] = []
    layers = [RecordingLayer(n, log) for n in ("A", "B", "C")]
    svc = Stack(layers, LeafFactory(log), provided=SERVER).build()
    assert await svc("req") == ["leaf0", "C", "B", "A"]
    assert log == ["A>", "B>", "C>", "leaf", "<C", "<B", "<A"]
    assert svc.name == "A" and svc.inner.name == "B" and svc.inner.inner.name == "C"
    assert isinstance(svc.inner.inner.inner, Leaf)


async def test_build_without_layers_is_the_leaf() -> None:
    svc = Stack([], LeafFactory([]), provided=SERVER).build()
    assert isinstance(svc, Leaf) and svc.generation == 0


async def test_rebuild_hands_the_old_leaf_through_several_layers() -> None:
    log: list[str] = []
    leaf = LeafFactory(log)
    stack = Stack([RecordingLayer(n, log) for n in ("A", "B", "C")], leaf, provided=SERVER)
    first = stack.build()
    old_leaf = first.inner.inner.inner
    second = stack.build(first)
    assert leaf.made_from == [None, old_leaf]
    new_leaf = second.inner.inner.inner
    assert new_leaf is not old_leaf
    assert new_leaf.carried is old_leaf and new_leaf.generation == 1
    assert await second("r") == ["leaf1", "C", "B", "A"]


async def test_rebuild_with_different_layers_still_finds_the_leaf() -> None:
    log: list[str] = []
    leaf = LeafFactory(log)
    first = Stack([RecordingLayer("A", log)], leaf, provided=SERVER).build()
    second = Stack([RecordingLayer(n, log) for n in "XYZW"], leaf, provided=SERVER).build(first)
    assert leaf.made_from[-1] is first.inner
    third = Stack([], leaf, provided=SERVER).build(second)
    assert third.generation == 2


def test_rebuild_from_a_leaf_of_another_type_starts_fresh() -> None:
    class Other:
        pass

    leaf = LeafFactory([])
    Stack([], leaf, provided=SERVER).build(Other())
    assert leaf.made_from == [None]


# --- the proxy's stacks ---------------------------------------------------------------

CONFIG = {
    "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"upstream": "app"}]}},
    "upstreams": {"app": {"endpoints": [{"endpoint": "127.0.0.1:9"}]}},
}


def test_user_layer_requiring_route_outside_the_proxy_fails_the_check() -> None:
    from monolake.apps.proxy import UpstreamCluster
    from monolake.core.client import Pool

    cfg = parse_config(CONFIG)
    pool = Pool()
    clusters = {n: UpstreamCluster.from_config(n, c, pool) for n, c in cfg.upstreams.items()}
    stack = server_stack("web", cfg, [], clusters, pool)
    assert isinstance(stack.leaf, ProxyFactory)
    stack.check()  # as built: fine
    stack.layers.append(NeedsRoute())
    with pytest.raises(ConfigError) as info:
        stack.build()
    assert info.value.path == "NeedsRoute"
    assert "'route'" in info.value.reason


def test_build_apps_names_a_filter_that_cannot_be_imported() -> None:
    raw = msgspec.json.decode(msgspec.json.encode(CONFIG))
    raw["servers"]["web"]["filters"] = ["nope_mod:X"]
    cfg = parse_config(raw)
    with pytest.raises(ConfigError) as info:
        build_apps(cfg)
    assert info.value.path == "servers.web.filters[0]"
    assert "cannot import 'nope_mod'" in info.value.reason


def test_build_apps_names_a_missing_filter_class() -> None:
    raw = msgspec.json.decode(msgspec.json.encode(CONFIG))
    raw["servers"]["web"]["filters"] = ["monolake.apps.proxy:HttpFilter", "monolake.apps.proxy:NoSuchFilter"]
    with pytest.raises(ConfigError) as info:
        build_apps(parse_config(raw))
    assert info.value.path == "servers.web.filters[1]"
    assert "no attribute 'NoSuchFilter'" in info.value.reason


def test_build_apps_builds_every_server() -> None:
    apps = build_apps(parse_config(CONFIG))
    assert list(apps) == ["web"]
