"""Load and validate a TOML config.

Two passes: msgspec converts the TOML tables into the frozen Structs of
``_schema`` (types, unknown keys), then ``validate`` checks what a schema cannot
(references between tables, regexes, addresses, balancer options). Both report
``ConfigError``s whose ``path`` is the dotted key path, e.g.
``servers.web.routes[2].upstream``.

Every error is reported, not only the first: msgspec stops at the first error of a
table, so a table that fails is taken apart field by field (``_explain``) to name
each bad value; those values are then dropped for their defaults (``_repair``) and
the semantic checks run on the rest, each adding to a ``_Report`` instead of
raising. A semantic error about a dropped value (or a table holding one) is not
reported: the check saw the default, not the file. A named server or cluster that
cannot be kept (a required value is bad) is not checked further, and a reference to
it is not "unknown". One error is raised as itself; several as ``ConfigErrors``
(the first one's path and reason, all in ``errors``). Enum errors list the allowed
values (from the schema's Literal types); errors on durations say they are seconds.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ...core.errors import ConfigError
from ._report import _SECONDS, _join, _last_key, _Report
from ._schema import (
    Cluster,
    Config,
    Server,
    ServerTls,
    UpstreamTls,
)
from ._validate import _validate
from ._validate import validate as validate

T = TypeVar("T")

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _base(typ: Any) -> Any:
    """``typ`` without ``Annotated[...]`` constraints."""
    return typing.get_args(typ)[0] if typing.get_origin(typ) is typing.Annotated else typ


def _members(typ: Any) -> tuple[Any, ...]:
    """The types a union accepts (``typ`` itself if it is not a union), constraints stripped."""
    typ = _base(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return tuple(_base(t) for t in typing.get_args(typ))
    return (typ,)


def _literal_values(typ: Any) -> list[Any]:
    return [v for t in _members(typ) if typing.get_origin(t) is typing.Literal for v in typing.get_args(t)]


def _translate(exc: msgspec.ValidationError, path: str, typ: Any, raw: Any) -> ConfigError:
    text = str(exc)
    sub = ""
    m = _AT.search(text)
    if m:
        text = text[: m.start()]
        sub = m.group("path")
    full = (path + sub).lstrip(".")
    if not sub:  # about this value itself, whose type is ``typ``
        allowed = _literal_values(typ)
        if allowed:
            text = f"Invalid enum value {raw!r}: not one of {', '.join(str(v) for v in allowed)}"
        elif float in _members(typ) and _SECONDS.search(_last_key(full)):
            text = f"{text} {raw!r} (a number of seconds)" if isinstance(raw, str) else f"{text} (seconds)"
    return ConfigError(full, text)


def _explain(raw: Any, typ: Any, path: str) -> list[ConfigError]:
    """Every error of ``raw`` read as a ``typ``, each at its own key path ([] if none).

    msgspec reports the first error only; this descends into tables, arrays and
    named tables to report each, and falls back to msgspec's error where it cannot
    go finer.
    """
    try:
        msgspec.convert(raw, typ, strict=True)
        return []
    except msgspec.ValidationError as exc:
        first = exc
    out: list[ConfigError] = []
    for member in _members(typ):
        origin = typing.get_origin(member) or member
        if isinstance(raw, dict) and isinstance(origin, type) and issubclass(origin, msgspec.Struct):
            fields = {f.encode_name: f for f in msgspec.structs.fields(origin)}
            for key, value in raw.items():
                f = fields.get(key)
                if f is None:
                    out.append(ConfigError(path, f"Object contains unknown field `{key}`"))
                else:
                    out += _explain(value, f.type, _join(path, key))
            out += [
                ConfigError(path, f"Object missing required field `{key}`")
                for key, f in fields.items()
                if f.required and key not in raw
            ]
            break
        if isinstance(raw, dict) and origin is dict:
            value_type = typing.get_args(member)[1]
            for key, value in raw.items():
                out += _explain(value, value_type, _join(path, key))
            break
        if isinstance(raw, list) and origin is list:
            for i, value in enumerate(raw):
                out += _explain(value, typing.get_args(member)[0], f"{path}[{i}]")
            break
    return out or [_translate(first, path, typ, raw)]


_BAD: Any = object()


def _repair(raw: Any, typ: Any) -> Any:
    """``raw`` with every value that is not valid dropped (so its default applies), or
    ``_BAD`` where that is not possible (a required field, an array element)."""
    try:
        msgspec.convert(raw, typ, strict=True)
        return raw
    except msgspec.ValidationError:
        pass
    for member in _members(typ):
        origin = typing.get_origin(member) or member
        fixed: Any
        if isinstance(raw, dict) and isinstance(origin, type) and issubclass(origin, msgspec.Struct):
            fields = {f.encode_name: f for f in msgspec.structs.fields(origin)}
            fixed = {}
            for key, value in raw.items():
                if key in fields and (v := _repair(value, fields[key].type)) is not _BAD:
                    fixed[key] = v
        elif isinstance(raw, dict) and origin is dict:
            value_type = typing.get_args(member)[1]
            fixed = {k: v for k, v in ((k, _repair(v, value_type)) for k, v in raw.items()) if v is not _BAD}
        elif isinstance(raw, list) and origin is list:
            fixed = [_repair(v, typing.get_args(member)[0]) for v in raw]
        else:
            continue
        try:
            msgspec.convert(fixed, typ, strict=True)
        except msgspec.ValidationError:
            return _BAD
        return fixed
    return _BAD


def _decode(raw: Any, typ: type[T], path: str, rep: _Report) -> T:
    """``raw`` as a ``typ``; where it is not, every error goes to ``rep`` and the result is
    ``raw`` without its invalid values (``_BAD`` if that is not a ``typ`` either), so the
    semantic checks still look at the rest."""
    try:
        return msgspec.convert(raw, typ, strict=True)
    except msgspec.ValidationError:
        rep.undecodable(_explain(raw, typ, path))
    fixed = _repair(raw, typ)
    return typing.cast(T, _BAD) if fixed is _BAD else msgspec.convert(fixed, typ, strict=True)


def _decode_named(raw: Any, typ: type[T], path: str, rep: _Report, bad: set[str]) -> dict[str, T]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        rep.add(path, f"expected a table, got {type(raw).__name__}")
        bad.add("")
        return {}
    out: dict[str, T] = {}
    for name, value in raw.items():
        decoded = _decode(value, typ, f"{path}.{name}", rep)
        if decoded is _BAD:
            bad.add(name)
        else:
            out[name] = decoded
    return out


def _decode_base(raw: dict[str, Any], rep: _Report) -> Config:
    """Every top-level table but servers and upstreams; one that fails keeps its defaults."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(Config)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("servers", "upstreams"):
            continue
        f = fields.get(key)
        if f is None:
            rep.add("", f"Object contains unknown field `{key}`")
            continue
        decoded = _decode(value, f.type, key, rep)
        if decoded is not _BAD:
            values[f.name] = decoded
    return Config(**values)


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None) -> Config:
    """Turn a decoded TOML document into a validated Config, or raise ConfigError
    (``ConfigErrors`` when there is more than one error).

    Relative file names in the config (gateway IDLs) are taken relative to
    ``base_dir`` (the config file's directory) when given, else to the working directory.
    """
    rep = _Report()
    base = _decode_base(raw, rep)
    servers = _decode_named(raw.get("servers"), Server, "servers", rep, rep.bad_servers)
    upstreams = _decode_named(raw.get("upstreams"), Cluster, "upstreams", rep, rep.bad_upstreams)
    if base_dir is not None:
        servers = {name: _resolve_files(s, Path(base_dir)) for name, s in servers.items()}
        upstreams = {
            name: c if c.tls is None else msgspec.structs.replace(c, tls=_resolve_tls(c.tls, Path(base_dir)))
            for name, c in upstreams.items()
        }
    if "base_dir" in raw:
        rep.add("base_dir", "is set by the loader (the config file's directory), not in the file")
    where = None if base_dir is None else str(Path(base_dir).resolve())
    cfg = msgspec.structs.replace(base, upstreams=upstreams, servers=servers, base_dir=where)
    _validate(cfg, rep)
    rep.raise_if_any()
    return cfg


def _rel(base: Path, name: str | None) -> str | None:
    return name if name is None or Path(name).is_absolute() else str(base / name)


def _resolve_tls(t: T, base: Path) -> T:
    if isinstance(t, ServerTls):
        certs = [msgspec.structs.replace(c, chain=_rel(base, c.chain), key=_rel(base, c.key)) for c in t.certificates]
        return msgspec.structs.replace(t, certificates=certs, client_ca=_rel(base, t.client_ca))
    assert isinstance(t, UpstreamTls)
    return msgspec.structs.replace(
        t, ca=_rel(base, t.ca), client_cert=_rel(base, t.client_cert), client_key=_rel(base, t.client_key)
    )


def _resolve_files(s: Server, base: Path) -> Server:
    if s.tls is not None:
        s = msgspec.structs.replace(s, tls=_resolve_tls(s.tls, base))
    if s.rpc_thrift is not None:
        rt = s.rpc_thrift
        rt = msgspec.structs.replace(
            rt, idl=str(base / rt.idl), include_dirs=[str(base / d) for d in rt.include_dirs]
        )  # absolute parts stay as they are (Path's / keeps them)
        s = msgspec.structs.replace(s, rpc_thrift=rt)
    if not any(r.gateway is not None and not Path(r.gateway.idl).is_absolute() for r in s.routes):
        return s
    routes = [
        r
        if r.gateway is None or Path(r.gateway.idl).is_absolute()
        else msgspec.structs.replace(r, gateway=msgspec.structs.replace(r.gateway, idl=str(base / r.gateway.idl)))
        for r in s.routes
    ]
    return msgspec.structs.replace(s, routes=routes)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError (also for unreadable files)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw, Path(path).parent)
