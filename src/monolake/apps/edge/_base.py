"""The built-in filter registry and how a built-in's ``args`` become its settings."""

from __future__ import annotations

import importlib
import re
from typing import Any

import msgspec

from ...core.errors import ConfigError

BUILTINS: dict[str, str] = {
    "request_id": "monolake.apps.edge.request_id:RequestId",
    "compress": "monolake.apps.edge.compress:Compress",
    "decompress": "monolake.apps.edge.compress:Decompress",
    "cors": "monolake.apps.edge.cors:Cors",
    "ip_rules": "monolake.apps.edge.ip_rules:IpRules",
    "rate_limit": "monolake.apps.edge.ratelimit:RateLimit",
    "connection_limit": "monolake.apps.edge.ratelimit:ConnectionLimit",
    "jwt": "monolake.apps.edge.jwt:Jwt",
    "basic_auth": "monolake.apps.edge.basic_auth:BasicAuth",
    "ext_authz": "monolake.apps.edge.ext_authz:ExtAuthz",
    "tracing": "monolake.apps.edge.tracing:Tracing",
    "cache": "monolake.apps.edge.cache:Cache",
}
"""Built-in filter name -> "module:Class" (imported when a config names it)."""


class ArgError(ValueError):
    """A built-in's constructor refuses a setting: ``key`` is its path under ``args``
    (``"allow_origins[1]"``), ``reason`` why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def is_builtin(use: str) -> bool:
    """A ``use`` naming a built-in (no ``module:`` part)."""
    return ":" not in use


def builtin_class(name: str, where: str) -> type:
    """The class of built-in ``name``. Raises ConfigError at ``where`` for an unknown one."""
    target = BUILTINS.get(name)
    if target is None:
        known = ", ".join(sorted(BUILTINS))
        raise ConfigError(
            where, f"unknown built-in filter {name!r} (built-ins: {known}; a user filter is 'module:Class')"
        )
    module, _, attr = target.partition(":")
    cls: type = getattr(importlib.import_module(module), attr)
    return cls


_AT = re.compile(r" - at `\$(.*)`$")


def _key(base: str, sub: str) -> str:
    if not sub:
        return base
    return f"{base}{sub}" if sub[0] in ".[" else f"{base}.{sub}"


def make_builtin(name: str, args: dict[str, Any], where: str, kind: str = "http") -> object:
    """Build built-in ``name`` from its ``args`` table for a ``kind`` server. Raises ConfigError
    naming ``where`` (the filters entry) or ``where.args.KEY``."""
    cls = builtin_class(name, where)
    kinds: tuple[str, ...] = getattr(cls, "kinds", ("http",))
    if kind not in kinds:
        raise ConfigError(where, f"built-in {name!r} is for {' or '.join(kinds)} servers, not {kind}")
    return build_from_args(cls, args, f"{where}.args")


def build_from_args(cls: Any, args: dict[str, Any], at: str) -> Any:
    """``cls(settings)``, its ``args`` table converted to ``cls.Args``. Raises ConfigError at ``at.KEY``
    (a built-in's ``filters[i].args``, or a table of the same settings elsewhere: ``rpc_grpc.tracing``)."""
    try:
        settings = msgspec.convert(args, cls.Args, str_keys=True)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _AT.search(msg)
        sub = m.group(1) if m else ""
        reason = msg[: m.start()] if m else msg
        raise ConfigError(_key(at, sub), reason) from None
    try:
        return cls(settings)
    except ArgError as exc:
        raise ConfigError(_key(at, exc.key), exc.reason) from None
