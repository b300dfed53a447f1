"""``monolake rpc new`` and ``monolake rpc call`` for Thrift IDL (``.thrift``).

``new_project`` writes a runnable project: the IDL, a handler with every method
(each returns its type's zero value, so the project's test passes before any is
filled in), a TOML config serving it, and a test that calls every method through
``ThriftClient`` against the handler served in-process.

``call`` turns JSON arguments into the method's argument types, guided by the
IDL's ``thrift_spec`` (structs from objects, enums by name or number, binary from
a string, map keys from JSON's string keys), calls it, and turns the answer back
into JSON (a declared exception comes back as ``{"ExceptionName": {...}}``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import keyword
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ....core.errors import ConfigError
from ._idl import MethodDef, ServiceDef, load_module, service_def

# thriftpy2's TType ids
_BOOL, _BYTE, _DOUBLE, _I16, _I32, _I64, _STRING, _STRUCT, _MAP, _SET, _LIST, _BINARY = (
    2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15, 18,
)  # fmt: skip
_INTS = (_BYTE, _I16, _I32, _I64)


def _split(t: Any) -> tuple[int, Any]:
    return (t[0], t[1]) if isinstance(t, tuple) else (t, None)


def _field_type(spec: tuple[Any, ...]) -> tuple[int, Any]:
    return spec[0], spec[2] if len(spec) == 4 else None


def from_json(ttype: int, extra: Any, value: Any, where: str) -> Any:
    """``value`` (from JSON) as the Thrift type (``ttype``, ``extra``). Raises ValueError naming ``where``."""
    if value is None:
        return None
    try:
        if ttype == _BOOL:
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if ttype in _INTS:
            if extra is not None and isinstance(value, str):  # an enum by name
                return extra._NAMES_TO_VALUES[value]
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("expected an integer")
            return value
        if ttype == _DOUBLE:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("expected a number")
            return float(value)
        if ttype in (_STRING, _BINARY):
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value.encode() if ttype == _BINARY else value
        if ttype == _STRUCT:
            if not isinstance(value, dict):
                raise TypeError("expected an object")
            return struct_from_json(extra, value, where)
        if ttype in (_LIST, _SET):
            if not isinstance(value, list):
                raise TypeError("expected an array")
            et, ex = _split(extra)
            items = [from_json(et, ex, v, f"{where}[{i}]") for i, v in enumerate(value)]
            return set(items) if ttype == _SET else items
        if ttype == _MAP:
            if not isinstance(value, dict):
                raise TypeError("expected an object")
            (kt, kx), (vt, vx) = _split(extra[0]), _split(extra[1])
            out = {}
            for k, v in value.items():
                key: Any = k
                if kt in _INTS and kx is None:
                    key = int(k)
                elif kt == _DOUBLE:
                    key = float(k)
                out[from_json(kt, kx, key, where)] = from_json(vt, vx, v, f"{where}.{k}")
            return out
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}: unsupported Thrift type {ttype}")


def struct_from_json(cls: Any, value: dict[str, Any], where: str) -> Any:
    spec = cls.thrift_spec
    by_name = {s[1]: s for s in spec.values()}
    unknown = set(value) - set(by_name)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (has {', '.join(by_name)})")
    kwargs = {}
    for name, v in value.items():
        t, extra = _field_type(by_name[name])
        kwargs[name] = from_json(t, extra, v, f"{where}.{name}")
    return cls(**kwargs)


def to_json(value: Any) -> Any:
    """A Thrift value as JSON-able data: structs as objects (unset fields left out)."""
    if hasattr(value, "thrift_spec"):
        return {
            s[1]: to_json(getattr(value, s[1])) for s in value.thrift_spec.values() if getattr(value, s[1]) is not None
        }
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, list | set | frozenset | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    return value


def _method(definition: ServiceDef, name: str) -> MethodDef:
    m = definition.methods.get(name)
    if m is None:
        have = ", ".join(definition.methods)
        raise ConfigError("method", f"{definition.name} has no method {name!r} (it has {have})")
    return m


def call(
    address: str, idl: str, method: str, json_args: str, *, transport: str = "framed", protocol: str = "binary",
    timeout: float = 10.0,
) -> str:  # fmt: skip
    """Call ``Service.method`` (or ``method``) at ``address`` with JSON arguments; the answer as JSON.

    ``json_args``: an object by argument name, or an array in IDL order. Raises ConfigError
    (bad IDL or method), ValueError (arguments that do not fit), thriftpy2's
    TApplicationException, or monolake's network errors.
    """
    from ._client import ThriftClient

    service, _, name = method.rpartition(".")
    definition = service_def(load_module(idl), service or None)
    m = _method(definition, name)
    try:
        raw = json.loads(json_args) if json_args.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments are not JSON: {exc}") from None
    if isinstance(raw, list):
        raw = dict(zip(m.arg_names, raw, strict=False))
    if not isinstance(raw, dict):
        raise ValueError("arguments must be a JSON object (by name) or array (in order)")
    args = struct_from_json(m.args_cls, raw, name)
    values = [getattr(args, n) for n in m.arg_names]

    async def run() -> Any:
        async with ThriftClient(
            definition, [address], transport=transport, protocol=protocol, timeout=timeout, retries=0
        ) as client:
            return await client.call(name, *values)

    try:
        result = asyncio.run(run())
    except Exception as exc:
        declared = [cls for _, cls in m.exceptions]
        if any(isinstance(exc, cls) for cls in declared):
            return json.dumps({type(exc).__name__: to_json(exc)}, ensure_ascii=False)
        raise
    return json.dumps(to_json(result), ensure_ascii=False)


# -- rpc new ---------------------------------------------------------------------------


def _zero(t: int, extra: Any, mod: str) -> str:
    """Python source for the zero value of a Thrift type (a stub's return)."""
    if t == _BOOL:
        return "False"
    if t in _INTS:
        return "0"
    if t == _DOUBLE:
        return "0.0"
    if t == _STRING:
        return '""'
    if t == _BINARY:
        return 'b""'
    if t == _STRUCT:
        return f"{mod}.{extra.__name__}()"
    if t == _LIST:
        return "[]"
    if t == _SET:
        return "set()"
    if t == _MAP:
        return "{}"
    return "None"


def _ident(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


HANDLER = '''"""{service} handler: fill in the methods. Each gets the arguments in IDL order.

``async def`` methods run concurrently (many calls in flight per connection); a plain
``def`` runs inline and suits quick CPU-only work. Raise an exception the IDL declares
to answer with it; anything else becomes a TApplicationException (and a log line).
"""

from __future__ import annotations

import os

import thriftpy2

{mod} = thriftpy2.load(os.path.join(os.path.dirname(__file__), "{idl}"), module_name="{mod}")


class Handler:
{methods}
'''

CONFIG = """# Serve {service} from {idl}: monolake run -c monolake.toml
[runtime]
workers = 1

[log]
access_log = "stdout"

[servers.{name}]
listener = "127.0.0.1:9090"
proxy_type = "thrift"

[servers.{name}.rpc_thrift]
idl = "{idl}"
service = "{service}"
handler = "{name}_handler:Handler"
"""

TEST = '''"""Calls every method of {service} through monolake's client, against the handler served in-process."""

from __future__ import annotations

import asyncio
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from {name}_handler import Handler, {mod}  # noqa: E402

from monolake.apps.config import Server  # noqa: E402
from monolake.rpc import ThriftClient, ThriftService, build_server  # noqa: E402


async def _main() -> None:
    app = build_server("{name}", Server(listener="127.0.0.1:0"), ThriftService({mod}.{service}, Handler()))
    srv = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with ThriftClient({mod}.{service}, [f"127.0.0.1:{{port}}"]) as client:
{calls}
    finally:
        srv.close()
        app.close()
        await srv.wait_closed()


def test_{name}() -> None:
    asyncio.run(_main())
'''


def new_project(name: str, idl: str, dest: str | os.PathLike[str] = ".") -> Path:
    """Write the project ``dest/name`` for the (only or first) service of ``idl``. Returns its directory.

    Raises ConfigError for a bad name, an IDL that does not load, or a directory that exists.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or keyword.iskeyword(name):
        raise ConfigError("name", f"{name!r} is not a Python identifier (it names the handler module)")
    module = load_module(idl)
    services = sorted(k for k, v in vars(module).items() if isinstance(v, type) and hasattr(v, "thrift_services"))
    if not services:
        raise ConfigError("idl", f"{idl} defines no service")
    definition = service_def(module, services[0])
    target = Path(dest) / name
    if target.exists():
        raise ConfigError("dest", f"{target} exists already")
    target.mkdir(parents=True)
    idl_name = os.path.basename(idl)
    shutil.copyfile(idl, target / idl_name)
    mod = os.path.splitext(idl_name)[0] + "_thrift"
    methods, calls = [], []
    for m in definition.methods.values():
        params = "".join(f", {_ident(a)}" for a in m.arg_names)
        if m.void:
            body, ann = "return None", "None"
        else:
            body, ann = f"return {_zero(*_field_type(m.result_cls.thrift_spec[0]), mod)}  # TODO", "object"
        kind = "def" if m.oneway else "async def"
        methods.append(f"    {kind} {_ident(m.name)}(self{params}) -> {ann}:\n        {body}\n")
        zeros = []
        for spec in m.args_cls.thrift_spec.values():
            t, extra = _field_type(spec)
            zeros.append(_zero(t, extra, mod))
        expect = "None" if m.void or m.oneway else _zero(*_field_type(m.result_cls.thrift_spec[0]), mod)
        calls.append(f"            assert await client.call({m.name!r}, {', '.join(zeros)}) == {expect}")
    (target / f"{name}_handler.py").write_text(
        HANDLER.format(service=definition.name, mod=mod, idl=idl_name, methods="\n".join(methods))
    )
    (target / "monolake.toml").write_text(CONFIG.format(service=definition.name, idl=idl_name, name=name))
    (target / f"test_{name}.py").write_text(
        TEST.format(service=definition.name, mod=mod, name=name, calls="\n".join(calls) or "            pass")
    )
    return target
