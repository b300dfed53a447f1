"""JSON ⇄ thriftpy2 objects, through converters compiled once per IDL type.

A naive converter walks the ``thrift_spec`` of every struct for every request,
dispatching on type codes each time. Here the walk happens once, when the IDL
loads: every field gets a closure that already knows its key, type, range and
nested converters, so converting a request is one call per value plus a
``setattr`` per field. Structs are converted lazily by name, so recursive types
work.

Rules (those of CloudWeGo's HTTP gateways where they have one):
- integers are JSON numbers (not booleans) in the type's range; with
  ``api.js_conv`` an i64 may also be a string, and is written back as one;
- ``binary`` is base64 text (as Go's encoding/json writes ``[]byte``);
- enums accept the number or the name, and are written as numbers;
- map keys are JSON strings, parsed to the key type;
- null or missing fields keep the IDL default; a missing ``required`` field is an
  error naming its path (``body.items[2].name``).

Values from a path, query, header or cookie are text and are parsed to the
field's type first (a list from repeated query keys; structs and maps from JSON
text).

These converters define what is valid and what the bytes are. For binary-protocol
upstreams the gateway normally skips the objects (``_binary`` writes the bytes
directly) and comes here for the inputs the fast path refuses, errors included;
compact-protocol upstreams always come here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import msgspec

_T_BOOL = 2
_T_BYTE = 3
_T_DOUBLE = 4
_T_I16 = 6
_T_I32 = 8
_T_I64 = 10
_T_STRING = 11
_T_STRUCT = 12
_T_MAP = 13
_T_SET = 14
_T_LIST = 15
_T_BINARY = 18

_RANGES = {
    _T_BYTE: (-(2**7), 2**7 - 1),
    _T_I16: (-(2**15), 2**15 - 1),
    _T_I32: (-(2**31), 2**31 - 1),
    _T_I64: (-(2**63), 2**63 - 1),
}
_TYPE_NAMES = {
    _T_BOOL: "bool",
    _T_BYTE: "i8",
    _T_DOUBLE: "double",
    _T_I16: "i16",
    _T_I32: "i32",
    _T_I64: "i64",
    _T_STRING: "string",
    _T_BINARY: "binary",
}

PATH, QUERY, HEADER, COOKIE, BODY, RAW_BODY = range(6)
"""Where a request field comes from (``api.path``, ``api.query``, ...)."""
SOURCE_NAMES = ("path", "query", "header", "cookie", "body", "raw_body")

Conv = Callable[[Any, Any], Any]
"""(value, path) -> converted value; the path is text or a nested (parent, key) tuple."""


def path_text(path: Any) -> str:
    """A field path as text. Converters pass paths as nested (parent, key) tuples and
    only format them when they raise: building strings per value would cost more
    than the conversion."""
    if type(path) is not tuple:
        return str(path)
    parent, leaf = path
    return f"{path_text(parent)}[{leaf}]" if type(leaf) is int else f"{path_text(parent)}.{leaf}"


class Invalid(Exception):
    """A value does not fit its field. ``field`` is its path (``body.items[0].id``)."""

    def __init__(self, field: Any, message: str) -> None:
        field = path_text(field)
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def field_annotations(cls: Any) -> dict[str, dict[str, str]]:
    return getattr(cls, "__thrift_field_annotations__", None) or {}


def is_enum(arg: Any) -> bool:
    return isinstance(arg, type) and hasattr(arg, "_VALUES_TO_NAMES")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1", "yes", "")


def is_none(ann: dict[str, str]) -> bool:
    """``api.none``: the field is not mapped to HTTP at all."""
    return "api.none" in ann and _truthy(ann["api.none"])


class Compiler:
    """Compiles and caches converters for the types of one IDL."""

    def __init__(self) -> None:
        self._in: dict[Any, Conv] = {}
        self._out: dict[Any, Callable[[Any], Any]] = {}

    # -- JSON → thrift ------------------------------------------------------------------

    def from_json(self, ttype: int, arg: Any, js_conv: bool = False) -> Conv:
        if ttype in _RANGES and not is_enum(arg):
            lo, hi = _RANGES[ttype]
            tname = _TYPE_NAMES[ttype]
            as_text = js_conv and ttype == _T_I64

            def integer(v: Any, path: str) -> int:
                if type(v) is not int:
                    if as_text and type(v) is str:
                        try:
                            v = int(v)
                        except ValueError:
                            raise Invalid(path, f"expected an {tname} as a number or string") from None
                    else:
                        raise Invalid(path, f"expected an {tname}, got {_kind(v)}")
                if not lo <= v <= hi:
                    raise Invalid(path, f"{v} is out of range for {tname}")
                return int(v)

            return integer
        if is_enum(arg):
            values: dict[int, str] = arg._VALUES_TO_NAMES
            names: dict[str, int] = arg._NAMES_TO_VALUES
            ename = arg.__name__

            def enum(v: Any, path: str) -> int:
                if type(v) is int and v in values:
                    return v
                if type(v) is str and v in names:
                    return names[v]
                raise Invalid(path, f"expected a {ename} ({', '.join(names)}), got {v!r}")

            return enum
        if ttype == _T_BOOL:

            def boolean(v: Any, path: str) -> bool:
                if type(v) is not bool:
                    raise Invalid(path, f"expected a bool, got {_kind(v)}")
                return v

            return boolean
        if ttype == _T_DOUBLE:

            def double(v: Any, path: str) -> float:
                if type(v) is float or type(v) is int:
                    return float(v)
                raise Invalid(path, f"expected a number, got {_kind(v)}")

            return double
        if ttype == _T_STRING:

            def string(v: Any, path: str) -> str:
                if type(v) is not str:
                    raise Invalid(path, f"expected a string, got {_kind(v)}")
                return v

            return string
        if ttype == _T_BINARY:

            def binary(v: Any, path: str) -> bytes:
                if type(v) is not str:
                    raise Invalid(path, f"expected base64 text, got {_kind(v)}")
                try:
                    return base64.b64decode(v, validate=True)
                except ValueError:  # binascii.Error, or a character outside ASCII
                    raise Invalid(path, "expected base64 text") from None

            return binary
        if ttype == _T_STRUCT:
            return self.struct_from_json(arg)
        if ttype in (_T_LIST, _T_SET):
            etype, earg = _split(arg)
            item = self.from_json(etype, earg, js_conv)

            def sequence(v: Any, path: Any) -> list[Any]:
                if type(v) is not list:
                    raise Invalid(path, f"expected an array, got {_kind(v)}")
                return [item(x, (path, i)) for i, x in enumerate(v)]

            maybe = _scalar_check(etype, earg)
            if maybe is None:
                return sequence
            ok: Callable[[Any], bool] = maybe

            def scalars(v: Any, path: Any) -> list[Any]:
                if type(v) is list:
                    for x in v:
                        if not ok(x):
                            break
                    else:
                        return list(v)
                return sequence(v, path)

            return scalars
        if ttype == _T_MAP:
            (ktype, karg), (vtype, varg) = _split(arg[0]), _split(arg[1])
            key = self.from_text(ktype, karg, js_conv)
            val = self.from_json(vtype, varg, js_conv)

            def mapping(v: Any, path: Any) -> dict[Any, Any]:
                if type(v) is not dict:
                    raise Invalid(path, f"expected an object, got {_kind(v)}")
                return {key(k, (path, k)): val(x, (path, k)) for k, x in v.items()}

            maybe_ok = _scalar_check(vtype, varg)
            if ktype != _T_STRING or maybe_ok is None:
                return mapping
            value_ok: Callable[[Any], bool] = maybe_ok

            def str_map(v: Any, path: Any) -> dict[Any, Any]:
                # The common map<string, scalar>: check every value in one loop, copy once;
                # anything unusual (a js_conv string, an error) takes the general path.
                if type(v) is dict:
                    for x in v.values():
                        if not value_ok(x):
                            break
                    else:
                        return dict(v)
                return mapping(v, path)

            return str_map
        raise TypeError(f"unsupported thrift type {ttype}")

    def struct_from_json(self, cls: Any) -> Conv:
        """A converter generated as Python source for ``cls``: scalar checks are inlined,
        the object is made without ``__init__`` (its defaults copied into ``__dict__``)."""
        conv = self._in.get(cls)
        if conv is not None:
            return conv
        ns: dict[str, Any] = {
            "Invalid": Invalid,
            "_kind": _kind,
            "_new": object.__new__,
            "_cls": cls,
            "_defaults": dict(getattr(cls, "default_spec", ())),
            "_int_from": _int_from,
        }
        holder: list[Conv] = []

        def late(v: Any, path: Any) -> Any:  # lets a recursive type find itself
            return holder[0](v, path)

        self._in[cls] = late
        lines = [
            "def conv(v, path):",
            "    if type(v) is not dict:",
            "        raise Invalid(path, 'expected an object, got ' + _kind(v))",
            "    obj = _new(_cls)",
            "    d = obj.__dict__",
            "    d.update(_defaults)",
            "    get = v.get",
        ]
        annotations = field_annotations(cls)
        for n, spec in enumerate(cls.thrift_spec.values()):
            ttype, name, arg, required = _unpack(spec)
            ann = annotations.get(name, {})
            if is_none(ann):
                continue
            key = ann.get("api.body") or name
            js_conv = _truthy(ann.get("api.js_conv"))
            here = f"(path, {key!r})"
            lines.append(f"    x = get({key!r})")
            lines.append("    if x is None:")
            lines.append(f"        raise Invalid({here}, 'required field is missing')" if required else "        pass")
            lines.append("    else:")
            if ttype in _RANGES and not is_enum(arg):
                lo, hi = _RANGES[ttype]
                lines.append(f"        if type(x) is not int or not {lo} <= x <= {hi}:")
                lines.append(f"            x = _int_from(x, {here}, {ttype}, {js_conv})")
            elif ttype == _T_STRING:
                lines.append("        if type(x) is not str:")
                lines.append(f"            raise Invalid({here}, 'expected a string, got ' + _kind(x))")
            elif ttype == _T_BOOL:
                lines.append("        if type(x) is not bool:")
                lines.append(f"            raise Invalid({here}, 'expected a bool, got ' + _kind(x))")
            elif ttype == _T_DOUBLE:
                lines.append("        if type(x) is int:")
                lines.append("            x = float(x)")
                lines.append("        elif type(x) is not float:")
                lines.append(f"            raise Invalid({here}, 'expected a number, got ' + _kind(x))")
            else:
                ns[f"_c{n}"] = self.from_json(ttype, arg, js_conv)
                lines.append(f"        x = _c{n}(x, {here})")
            lines.append(f"        d[{name!r}] = x")
        lines.append("    return obj")
        exec(compile("\n".join(lines), f"<gateway converter {cls.__name__}>", "exec"), ns)
        holder.append(ns["conv"])
        self._in[cls] = ns["conv"]
        return ns["conv"]  # type: ignore[no-any-return]

    def from_text(self, ttype: int, arg: Any, js_conv: bool = False) -> Conv:
        """For values that arrive as text: parse, then convert as JSON would."""
        if ttype in _RANGES and not is_enum(arg):
            inner = self.from_json(ttype, arg, False)

            def integer(v: Any, path: str) -> Any:
                try:
                    return inner(int(v), path)
                except ValueError:
                    raise Invalid(path, f"expected an integer, got {v!r}") from None

            return integer
        if is_enum(arg):
            inner = self.from_json(ttype, arg)

            def enum(v: Any, path: str) -> Any:
                return inner(int(v) if v.lstrip("-").isdigit() else v, path)

            return enum
        if ttype == _T_BOOL:

            def boolean(v: Any, path: str) -> bool:
                low = v.lower()
                if low in ("true", "1"):
                    return True
                if low in ("false", "0"):
                    return False
                raise Invalid(path, f"expected true or false, got {v!r}")

            return boolean
        if ttype == _T_DOUBLE:

            def double(v: Any, path: str) -> float:
                try:
                    return float(v)
                except ValueError:
                    raise Invalid(path, f"expected a number, got {v!r}") from None

            return double
        if ttype == _T_STRING:
            return lambda v, path: v
        if ttype == _T_BINARY:
            return lambda v, path: v.encode()
        inner = self.from_json(ttype, arg, js_conv)

        def structured(v: Any, path: str) -> Any:
            try:
                decoded = msgspec.json.decode(v)
            except msgspec.DecodeError:
                raise Invalid(path, "expected JSON text") from None
            return inner(decoded, path)

        return structured

    # -- thrift → JSON ------------------------------------------------------------------

    def to_json(self, ttype: int, arg: Any, js_conv: bool = False) -> Callable[[Any], Any]:
        if ttype == _T_I64 and js_conv:
            return str
        if ttype == _T_BINARY:
            return lambda v: base64.b64encode(v).decode()
        if ttype == _T_STRUCT:
            return self.struct_to_json(arg)
        if ttype in (_T_LIST, _T_SET):
            etype, earg = _split(arg)
            item = self.to_json(etype, earg, js_conv)
            if item is _same:
                return list
            return lambda v: [item(x) for x in v]
        if ttype == _T_MAP:
            (_, _), (vtype, varg) = _split(arg[0]), _split(arg[1])
            val = self.to_json(vtype, varg, js_conv)
            return lambda v: {str(k) if type(k) is not str else k: val(x) for k, x in v.items()}
        return _same

    def struct_to_json(self, cls: Any, skip: frozenset[str] = frozenset()) -> Callable[[Any], Any]:
        key_ = (cls, skip)
        conv = self._out.get(key_)
        if conv is not None:
            return conv
        fields: list[tuple[str, str, Callable[[Any], Any]]] = []

        def struct(obj: Any) -> dict[str, Any]:
            out = {}
            for key, attr, fconv in fields:
                v = getattr(obj, attr)
                if v is not None:
                    out[key] = fconv(v)
            return out

        self._out[key_] = struct
        annotations = field_annotations(cls)
        for spec in cls.thrift_spec.values():
            ttype, name, arg, _ = _unpack(spec)
            ann = annotations.get(name, {})
            if name in skip or is_none(ann):
                continue
            key = ann.get("api.body") or name
            fields.append((key, name, self.to_json(ttype, arg, _truthy(ann.get("api.js_conv")))))
        return struct


def _scalar_check(ttype: int, arg: Any) -> Callable[[Any], bool] | None:
    """A check that a JSON value is already the right Python value for ``ttype``, if it can be one."""
    if ttype in _RANGES and not is_enum(arg):
        lo, hi = _RANGES[ttype]
        return lambda x: type(x) is int and lo <= x <= hi
    if ttype == _T_STRING:
        return lambda x: type(x) is str
    if ttype == _T_BOOL:
        return lambda x: type(x) is bool
    if ttype == _T_DOUBLE:
        return lambda x: type(x) is float
    return None


def _int_from(v: Any, path: Any, ttype: int, js_conv: bool) -> int:
    """The slow path of a generated integer check: a string under js_conv, or the error."""
    lo, hi = _RANGES[ttype]
    tname = _TYPE_NAMES[ttype]
    if type(v) is str and js_conv:
        try:
            v = int(v)
        except ValueError:
            raise Invalid(path, f"expected an {tname} as a number or string") from None
    elif type(v) is not int:
        raise Invalid(path, f"expected an {tname}, got {_kind(v)}")
    if not lo <= v <= hi:
        raise Invalid(path, f"{v} is out of range for {tname}")
    return int(v)


def _same(v: Any) -> Any:
    return v


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return _KINDS.get(type(v), type(v).__name__)


_KINDS = {bool: "a bool", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}


def _unpack(spec: tuple[Any, ...]) -> tuple[int, str, Any, bool]:
    """(type, name, type argument or None, required) of a thriftpy2 ``thrift_spec`` entry."""
    if len(spec) == 3:
        return spec[0], spec[1], None, bool(spec[2])
    return spec[0], spec[1], spec[2], bool(spec[3])


def _split(arg: Any) -> tuple[int, Any]:
    """A container's element type: thriftpy2 writes a bare type code or (code, argument)."""
    if isinstance(arg, tuple):
        return arg[0], arg[1]
    return arg, None
