"""User-declared context slots: typed get/set on a request's Context, checked when a stack builds."""

from __future__ import annotations

from typing import Any

import pytest

from monolake.errors import ConfigError
from monolake.service import BUILTIN, Context, ContextSlot, Factory, Layer, Stack, UnsetSlotError

SERVER = ("peer", "server", "start")

TENANT = ContextSlot("tenant", str, "the tenant the request's API key belongs to")
QUOTA = ContextSlot("quota_left", int)


class Leaf:
    async def __call__(self, req: Any) -> Any:
        return req


class LeafFactory(Factory[Leaf]):
    def __init__(self, requires: tuple[Any, ...] = ()) -> None:
        self.requires = requires

    def make(self, old: Leaf | None) -> Leaf:
        return Leaf()


class Stage(Layer[Any, Any]):
    def __init__(self, name: str, requires: tuple[Any, ...] = (), provides: tuple[Any, ...] = ()) -> None:
        self._name = name
        self.requires = requires
        self.provides = provides

    @property
    def name(self) -> str:
        return self._name

    def layer(self, inner: Any) -> Any:
        return inner


def ctx() -> Context:
    return Context("127.0.0.1:1", "web", 0.0)


# --- get / set ----------------------------------------------------------------------


def test_set_then_get() -> None:
    c = ctx()
    TENANT.set(c, "acme")
    QUOTA.set(c, 3)
    assert TENANT.get(c) == "acme"
    assert QUOTA.get(c) == 3
    TENANT.set(c, "globex")
    assert TENANT.get(c) == "globex"
    assert TENANT.is_set(c) and QUOTA.is_set(c)


def test_unset_slot_raises_a_clear_error_or_gives_the_default() -> None:
    c = ctx()
    with pytest.raises(UnsetSlotError, match="context slot 'tenant' is not set"):
        TENANT.get(c)
    assert TENANT.get(c, None) is None
    assert TENANT.get(c, "nobody") == "nobody"
    assert not TENANT.is_set(c)
    QUOTA.set(c, 0)  # another slot set: this one still unset
    with pytest.raises(LookupError):
        TENANT.get(c)


def test_a_request_setting_no_slot_allocates_nothing() -> None:
    c = ctx()
    assert TENANT.get(c, None) is None
    assert c.user is None
    assert not hasattr(c, "__dict__")  # still a __slots__ object


def test_values_are_per_request() -> None:
    a, b = ctx(), ctx()
    TENANT.set(a, "acme")
    assert TENANT.get(b, None) is None


def test_legacy_user_dict_keeps_working_beside_slots() -> None:
    c = ctx()
    c.user = {"tenant": "legacy"}  # what filters did before slots; string keys
    TENANT.set(c, "acme")
    assert c.user["tenant"] == "legacy"
    assert TENANT.get(c) == "acme"


def test_builtin_slots_read_and_write_attributes() -> None:
    c = ctx()
    BUILTIN["route"].set(c, "r0")
    assert c.route == "r0"
    assert BUILTIN["peer"].get(c) == "127.0.0.1:1"
    assert BUILTIN["tls"].get(c) is None and BUILTIN["tls"].get(c, "plain") == "plain"
    assert set(BUILTIN) == {"peer", "server", "start", "route", "cluster", "endpoint", "tls", "user"}


@pytest.mark.parametrize(
    ("name", "reason"), [("route", "built-in"), ("peer", "built-in"), ("user id", "identifier"), ("", "identifier")]
)
def test_bad_slot_names_are_refused_at_declaration(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ContextSlot(name, str)


# --- checked when a stack builds -----------------------------------------------------


def test_required_but_not_provided_names_the_layer_and_the_slot() -> None:
    stack = Stack([Stage("Quota", requires=(TENANT,))], LeafFactory(), provided=SERVER)
    with pytest.raises(ConfigError, match=r"Quota.*'tenant'.*nothing outside it provides"):
        stack.build()


def test_provided_by_an_outer_layer_builds() -> None:
    stack = Stack(
        [Stage("Auth", provides=(TENANT,)), Stage("Quota", requires=(TENANT,), provides=(QUOTA,))],
        LeafFactory(requires=(QUOTA, TENANT, "peer")),
        provided=SERVER,
    )
    stack.check()
    assert isinstance(stack.build(), Leaf)


def test_provided_by_an_inner_layer_is_too_late() -> None:
    stack = Stack(
        [Stage("Quota", requires=(TENANT,)), Stage("Auth", provides=(TENANT,))], LeafFactory(), provided=SERVER
    )
    with pytest.raises(ConfigError, match=r"^Quota: requires context slot 'tenant'"):
        stack.check()


def test_the_leaf_requirement_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"LeafFactory: requires context slot 'quota_left'"):
        Stack([Stage("Auth", provides=(TENANT,))], LeafFactory(requires=(QUOTA,)), provided=SERVER).check()


def test_slots_may_be_named_by_string() -> None:
    Stack(
        [Stage("Auth", provides=("tenant",)), Stage("Quota", requires=(TENANT,))], LeafFactory(), provided=SERVER
    ).check()
    with pytest.raises(ConfigError, match="'tenant'"):
        Stack([Stage("Quota", requires=("tenant",))], LeafFactory(), provided=SERVER).check()


def test_unknown_slot_name_is_a_config_error_listing_the_known() -> None:
    with pytest.raises(ConfigError, match=r"Auth: declares unknown context slot 'tennant' \(known: .*tenant"):
        Stack([Stage("Auth", provides=("tennant",))], LeafFactory(), provided=SERVER).check()


def test_two_slots_of_one_name_in_a_stack_are_a_config_error() -> None:
    first = ContextSlot("login_session", str)
    second = ContextSlot("login_session", bytes)  # another module declaring the same name
    stack = Stack(
        [Stage("Login", provides=(first,)), Stage("Audit", requires=(second,))], LeafFactory(), provided=SERVER
    )
    with pytest.raises(
        ConfigError, match=r"Audit: declares context slot 'login_session', but another slot of that name"
    ):
        stack.check()
    # Each object is its own storage: they never alias, even where not checked.
    c = ctx()
    first.set(c, "s1")
    assert second.get(c, None) is None


def test_a_reloaded_module_s_slot_is_the_one_names_find() -> None:
    old = ContextSlot("reloaded_slot", str)
    new = ContextSlot("reloaded_slot", str)  # the module imported again by a reload
    Stack([Stage("Auth", provides=(new,)), Stage("Use", requires=("reloaded_slot",))], LeafFactory()).check()
    with pytest.raises(ConfigError, match="another slot of that name"):
        Stack([Stage("Auth", provides=(old,)), Stage("Use", requires=("reloaded_slot",))], LeafFactory()).check()
