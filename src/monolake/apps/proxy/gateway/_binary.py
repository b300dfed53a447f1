"""JSON bytes → Thrift binary protocol bytes, generated per method when the IDL loads.

The object path (``_convert`` builds thriftpy2 objects, thriftpy2 serialises
them) spends most of its time creating objects and walking them again. Here the
request body is decoded by msgspec straight into typed ``msgspec.Struct`` classes
made from the IDL (so type, range, bool-is-not-int and nullability checks run in
C while decoding), and a function generated as Python source for each method
appends the Thrift binary encoding of every field to a list of byte strings:
field headers and defaults are constants merged at generation time, nested
structs are inlined, lists of numbers are packed in one ``struct.pack`` call.

This is a fast path only. It never reports errors itself: anything it does not
accept — a type or range error, a missing required field, a name that is not in
an enum, a text-sourced struct, a string too long for a table — raises, and the
caller then runs the object path on the same input, which either raises
``Invalid`` naming the field exactly as before or produces the bytes. So the
object path stays the definition of what is valid and what the bytes are; the
fast path must (and ``tests/proxy/test_gateway_binary.py`` checks that it does)
produce byte-identical output whenever it succeeds, and fail whenever the
object path would reject the input.

Typing rules (mirroring ``_convert.Compiler.from_json``):
- integers: ``int`` (msgspec rejects bools and floats), the range checked by
  ``struct.pack`` raising; ``api.js_conv`` i64s are ``int | str``, the string parsed
  with ``int()``;
- enums: ``int | str``, looked up in a table of valid numbers and names;
- ``double``: ``float`` (msgspec accepts JSON integers, as ``float(v)`` did);
- ``binary``: ``str``, base64-decoded with ``validate=True``;
- structs: every field ``Optional[...] = None`` (null means missing), keyed by
  ``api.body`` or the field name; ``api.none`` fields are not declared, so they
  are ignored as unknown keys are; missing optional fields get the IDL default,
  encoded once here by thriftpy2 itself;
- lists and sets: ``list[...]`` (duplicates kept, as before); maps:
  ``dict[str, ...]`` with non-string keys parsed by ``Compiler.from_text``.
"""

from __future__ import annotations

import base64
import itertools
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

import msgspec
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.utils import serialize

from ._convert import (
    _RANGES,
    _T_BINARY,
    _T_BOOL,
    _T_BYTE,
    _T_DOUBLE,
    _T_I16,
    _T_I32,
    _T_I64,
    _T_LIST,
    _T_MAP,
    _T_SET,
    _T_STRING,
    _T_STRUCT,
    BODY,
    COOKIE,
    HEADER,
    PATH,
    QUERY,
    RAW_BODY,
    Compiler,
    _split,
    _truthy,
    _unpack,
    field_annotations,
    is_enum,
    is_none,
)

BINARY = TBinaryProtocolFactory()  # type: ignore[no-untyped-call]

_pack_i32 = struct.Struct(">i").pack
_TABLE = 128
"""Integers in [0, _TABLE) — lengths, sizes, small values — are appended from tables of
precomputed ``prefix + encoding`` bytes: a lookup costs a third of a ``struct.pack``."""
_PREFIXED: dict[tuple[bytes, int, bytes], tuple[bytes, ...]] = {}
"""Tables by (prefix, type, suffix), shared by every method; prefixes and suffixes are field
and container headers, defaults and stop bytes."""
_MAX_PREFIXED = 256
"""At most ~1.6 MB of tables; past it, the appends concatenate ``prefix + pack(n) + suffix``."""
_PACKERS = {
    _T_BYTE: ">b",
    _T_I16: ">h",
    _T_I32: ">i",
    _T_I64: ">q",
    _T_DOUBLE: ">d",
}
_WIRE = {_T_BINARY: _T_STRING}
"""thriftpy2's type code for binary is 18; on the wire it is a string (11)."""
_INLINE_DEPTH = 4
_TRUE, _FALSE = b"\x01", b"\x00"
_counter = itertools.count()


class Unsupported(Exception):
    """The IDL uses something the fast path does not generate code for; the method
    keeps the object path."""


class Slow(Exception):
    """Raised by generated code: this input needs the object path."""

    @classmethod
    def throw(cls) -> Any:
        raise cls


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _wire(ttype: int) -> int:
    return _WIRE.get(ttype, ttype)


def _header(ttype: int, fid: int) -> bytes:
    return struct.pack(">bh", _wire(ttype), fid)


def _prefixed(prefix: bytes, ttype: int, suffix: bytes = b"") -> tuple[bytes, ...] | None:
    key = (prefix, ttype, suffix)
    table = _PREFIXED.get(key)
    if table is None and ((not prefix and not suffix) or len(_PREFIXED) < _MAX_PREFIXED):
        pack = struct.Struct(_PACKERS[ttype]).pack
        table = _PREFIXED[key] = tuple(prefix + pack(n) + suffix for n in range(_TABLE))
    return table


class BinaryCompiler:
    """Typed body structs and generated binary writers for the types of one IDL.

    Struct types live in a module of their own (registered in ``sys.modules``
    only while msgspec resolves their annotations), so that recursive types can
    name themselves."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self.module = types.ModuleType(f"monolake_gateway_types_{next(_counter)}")
        self.ns = self.module.__dict__
        self.ns["typing"] = __import__("typing")
        self._structs: dict[Any, str] = {}
        self._defaults: dict[Any, dict[str, bytes]] = {}

    # -- msgspec types ------------------------------------------------------------------

    def type_expr(self, ttype: int, arg: Any, js_conv: bool) -> str:
        """The msgspec annotation (as text in this module) of a JSON value of a thrift type."""
        if is_enum(arg):
            return "typing.Union[int, str]"
        if ttype in _RANGES:  # the range: struct.pack raises (cheaper than msgspec.Meta)
            return "typing.Union[int, str]" if js_conv and ttype == _T_I64 else "int"
        if ttype == _T_BOOL:
            return "bool"
        if ttype == _T_DOUBLE:
            return "float"
        if ttype in (_T_STRING, _T_BINARY):
            return "str"
        if ttype == _T_STRUCT:
            return self.struct_type(arg)
        if ttype in (_T_LIST, _T_SET):
            etype, earg = _split(arg)
            return f"list[{self.type_expr(etype, earg, js_conv)}]"
        if ttype == _T_MAP:
            (ktype, _), (vtype, varg) = _split(arg[0]), _split(arg[1])
            if ktype in (_T_STRUCT, _T_LIST, _T_SET, _T_MAP):
                raise Unsupported(f"map keys of type {ktype}")
            return f"dict[str, {self.type_expr(vtype, varg, js_conv)}]"
        raise Unsupported(f"thrift type {ttype}")

    def struct_type(self, cls: Any) -> str:
        """The name of the msgspec Struct that ``cls`` decodes into (made once)."""
        name = self._structs.get(cls)
        if name is not None:
            return name
        name = f"{cls.__name__}_{len(self._structs)}"
        self._structs[cls] = name  # before the fields: a recursive type names itself
        self.define(name, self.body_fields(cls))
        return name

    def define(self, name: str, fields: list[tuple[str, str, int, Any, bool, bool]]) -> None:
        """A msgspec Struct from (attribute, JSON key, type, argument, required, js_conv):
        required fields have no default and refuse null, so msgspec checks them."""
        spec: list[tuple[str, str] | tuple[str, str, None]] = []
        for attr, _, ttype, arg, required, js_conv in fields:
            expr = self.type_expr(ttype, arg, js_conv)
            spec.append((attr, expr) if required else (attr, f"typing.Optional[{expr}]", None))
        rename = {attr: key for attr, key, *_ in fields}
        try:
            self.ns[name] = msgspec.defstruct(
                name, spec, rename=rename, module=self.module.__name__, kw_only=True, gc=False
            )
        except (TypeError, ValueError) as exc:  # two fields read the same key, ...
            raise Unsupported(f"{name}: {exc}") from None

    def body_fields(self, cls: Any) -> list[tuple[str, str, int, Any, bool, bool]]:
        """(attribute, JSON key, type, argument, required, js_conv) of a struct's JSON fields."""
        out = []
        annotations = field_annotations(cls)
        for n, spec in enumerate(cls.thrift_spec.values()):
            ttype, name, arg, required = _unpack(spec)
            ann = annotations.get(name, {})
            if is_none(ann):
                continue
            out.append((f"f{n}", ann.get("api.body") or name, ttype, arg, required, _truthy(ann.get("api.js_conv"))))
        return out

    def decoder(self, type_name: str) -> Callable[[bytes], Any]:
        sys.modules[self.module.__name__] = self.module
        try:
            return msgspec.json.Decoder(self.ns[type_name]).decode
        except Exception as exc:  # a type msgspec cannot resolve or does not support
            raise Unsupported(f"{type(exc).__name__}: {exc}") from None
        finally:
            del sys.modules[self.module.__name__]

    def defaults(self, cls: Any) -> dict[str, bytes]:
        """Each field's IDL default as thriftpy2 writes it (header + value), by field name."""
        out = self._defaults.get(cls)
        if out is not None:
            return out
        out = {}
        names = [_unpack(s)[1] for s in cls.thrift_spec.values()]
        for name, value in getattr(cls, "default_spec", ()):
            if value is None:
                continue
            obj = object.__new__(cls)
            obj.__dict__.update(dict.fromkeys(names))
            obj.__dict__[name] = value
            try:
                data = serialize(obj, BINARY)
            except Exception as exc:
                raise Unsupported(f"default of {cls.__name__}.{name}: {exc}") from None
            out[name] = data[:-1]  # without the struct's stop byte
        self._defaults[cls] = out
        return out

    # -- code generation ----------------------------------------------------------------

    def struct_encoder(self, cls: Any) -> Callable[[bytes], bytes]:
        """JSON bytes → the binary encoding of ``cls`` (fields and stop byte). Fast path only:
        raises on anything it does not accept (see the module docstring)."""
        type_name = self.struct_type(cls)
        g = Gen(self)
        g.emit("def encode(raw):")
        g.indent += 1
        g.emit("parts = []")
        g.emit("a = parts.append")
        g.emit(f"x = {g.name(self.decoder(type_name), 'dec')}(raw)")
        g.struct(cls, "x", ())
        g.flush()
        g.emit("return _join(parts)")
        return g.compile(f"<gateway binary encoder {cls.__name__}>")["encode"]  # type: ignore[no-any-return]

    def struct_converter(self, cls: Any, path: str = "body") -> Callable[[bytes], bytes]:
        """JSON bytes → the binary encoding of ``cls``: the fast path, else the object path
        (``Compiler.struct_from_json`` + thriftpy2), which raises Invalid naming the field
        under ``path`` or msgspec.DecodeError."""
        fast = self.struct_encoder(cls)
        conv = self.compiler.struct_from_json(cls)
        decode = msgspec.json.Decoder().decode

        def convert(raw: bytes) -> bytes:
            try:
                return fast(raw)
            except Exception:
                pass
            return serialize(conv(decode(raw), path), BINARY)

        return convert

    def method_encoder(
        self, m: Any, query: Callable[[Any], Any], cookies: Callable[[Any], Any]
    ) -> Callable[..., bytes]:
        """``(params, req, raw) -> bytes``: the binary encoding of the ``<method>_args``
        struct of a ``GatewayMethod``, reading each field from where ``m.fields`` says
        (``query(req)`` and ``cookies(headers)`` parse those sources as ``build`` does).
        Fast path only; raises Unsupported when the method cannot have one."""
        fields = {f.attr: f for f in m.fields}
        specs = list(m.req_cls.thrift_spec.items())
        body = []
        for n, (_, spec) in enumerate(specs):
            ttype, name, arg, required = _unpack(spec)
            f = fields.get(name)
            if f is not None and f.source == BODY:
                body.append((f"f{n}", f.key, ttype, arg, required, f.js_conv))
        g = Gen(self)
        g.emit("def encode(params, req, raw):")
        g.indent += 1
        g.emit("parts = []")
        g.emit("a = parts.append")
        if body:
            type_name = f"{m.name}_body_{len(self._structs)}"
            self.define(type_name, body)
            dec = g.name(self.decoder(type_name), "dec")
            if any(required for *_, required, _ in body):
                g.emit(f"x = {dec}(raw) if raw else _Slow.throw()")
            else:
                g.emit(f"x = {dec}(raw) if raw else {g.name(self.ns[type_name](), 'empty')}")
        if m.needs_query:
            g.emit(f"q = {g.name(query, 'query')}(req)")
        if m.needs_cookies:
            g.emit(f"ck = {g.name(cookies, 'cookies')}(req.headers)")
        if any(f.source == HEADER for f in m.fields):
            g.emit("hn = req.headers.names()")
            g.emit("hp = req.headers.pairs()")
        if m.req_attr is not None:
            [(fid, _)] = m.args_cls.thrift_spec.items()
            g.const(_header(_T_STRUCT, fid))
        defaults = self.defaults(m.req_cls)
        for n, (fid, spec) in enumerate(specs):
            ttype, name, arg, required = _unpack(spec)
            f = fields.get(name)
            if f is None:  # api.none
                g.const(defaults.get(name, b""))
                continue
            y = g.var()
            typed = f.source == BODY
            if typed:
                g.emit(f"{y} = x.f{n}")
            else:
                key = f.key
                if f.source == PATH:
                    g.emit(f"{y} = params.get({key!r})")
                elif f.source == QUERY:
                    g.emit(f"{y} = q.get({key!r})")
                    if not f.multi:
                        g.emit(f"{y} = {y}[-1] if {y} else None")
                elif f.source == HEADER:  # as Headers.get: the first of that name
                    lname = key.lower().encode("latin-1")
                    g.emit(f"{y} = hp[hn.index({lname!r})][1].decode('latin-1') if {lname!r} in hn else None")
                elif f.source == COOKIE:
                    g.emit(f"{y} = ck.get({key!r})")
                else:
                    assert f.source == RAW_BODY
                    g.emit(f"{y} = raw if raw else None")
                if not _text_ok(ttype, arg, f.multi):
                    # JSON text in a path, header, query or cookie value: rare; when it
                    # is there, the object path does the request.
                    if required:
                        raise Unsupported(f"{m.name}: required {name!r} is JSON text")
                    g.emit(f"if {y} is not None:")
                    g.emit("    raise _Slow")
                    g.const(defaults.get(name, b""))
                    continue
                if f.source == RAW_BODY or ttype != _T_STRING:
                    g.emit(f"if {y} is not None:")
                    if ttype in _RANGES and not is_enum(arg) and not f.multi:
                        g.emit(f"    {y} = _int({y})")  # as from_text; the range: struct.error
                    else:
                        g.emit(f"    {y} = {g.name(f.conv, 'c')}({y}, None)")
            g.field(fid, ttype, arg, required, f.js_conv, y, defaults.get(name), (), typed)
        g.const(b"\x00")
        if m.req_attr is not None:
            g.const(b"\x00")
        g.flush()
        g.emit("return _join(parts)")
        return g.compile(f"<gateway binary encoder {m.name}>")["encode"]  # type: ignore[no-any-return]


def _text_ok(ttype: int, arg: Any, multi: bool) -> bool:
    """Whether a value parsed from text (``Compiler.from_text``) has a fast encoding here."""
    if multi:
        ttype, arg = _split(arg)
    return ttype not in (_T_STRUCT, _T_LIST, _T_SET, _T_MAP)


class _Append:
    """One ``a(...)`` line. ``render(suffix)`` is its argument; constants that come right
    after it on every path (``Gen.tails``) are added to ``suffix`` instead of being
    appended on their own."""

    __slots__ = ("indent", "render", "suffix")

    def __init__(self, indent: int, render: Callable[[bytes], str]) -> None:
        self.indent = indent
        self.render = render
        self.suffix = b""

    def line(self) -> str:
        return "    " * self.indent + f"a({self.render(self.suffix)})"


class _NoElse:
    """The path that skipped an ``if`` without ``else`` (at ``indent``): given constants
    to write, it becomes ``else: a(constants)``."""

    __slots__ = ("indent",)

    def __init__(self, indent: int) -> None:
        self.indent = indent


class Gen:
    """Python source for a writer: lines, constants by name, the pending constant bytes
    that the next append will carry, and the appends the next constants can join (so
    adjacent constants never cost an append of their own)."""

    def __init__(self, bc: BinaryCompiler) -> None:
        self.bc = bc
        self.lines: list[str | _Append] = []
        self.indent = 0
        self.pending = b""
        self.tails: list[_Append | _NoElse] = []
        """Appends (or skipped ifs) that end every path to this point; empty once any
        other statement follows them. Never non-empty together with ``pending``."""
        self.ns: dict[str, Any] = {
            "_join": b"".join,
            "_Slow": Slow,
            "_int": int,
            "_b64": _b64,
            "_pack": struct.pack,
            **{f"_p{t}": struct.Struct(fmt).pack for t, fmt in _PACKERS.items()},
        }
        self._names: dict[int, str] = {}
        self._vars = itertools.count()
        self._writers: dict[Any, str] = {}

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)
        self.tails = []

    def append(self, render: Callable[[bytes], str], extendable: bool = True) -> None:
        """Emit ``a(render(suffix))``; ``extendable``: the render takes a constant suffix."""
        obj = _Append(self.indent, render)
        self.lines.append(obj)
        self.tails = [obj] if extendable else []

    def name(self, obj: Any, prefix: str) -> str:
        key = id(obj)
        found = self._names.get(key)
        if found is None:
            found = self._names[key] = f"_{prefix}{len(self._names)}"
            self.ns[found] = obj
        return found

    def var(self) -> str:
        return f"v{next(self._vars)}"

    def const(self, data: bytes) -> None:
        if not data:
            return
        if not self.tails:
            self.pending += data
            return
        tails: list[_Append | _NoElse] = []
        for t in self.tails:
            if isinstance(t, _NoElse):  # the skipped path writes the constants itself
                self.lines.append("    " * t.indent + "else:")
                t = _Append(t.indent + 1, repr)
                self.lines.append(t)
            t.suffix += data
            tails.append(t)
        self.tails = tails

    def flush(self) -> None:
        if self.pending:
            data = self.pending
            self.pending = b""
            self.append(lambda suffix: repr(data + suffix))

    def close(self) -> None:
        """Nothing after this point may join the appends before it (a loop body ends)."""
        self.flush()
        self.tails = []

    def integer(self, n: str, ttype: int, nonnegative: bool = False) -> None:
        """Append the pending bytes and the int in local ``n`` (in range for ``ttype``)."""
        if _prefixed(self.pending, ttype) is None:
            self.flush()
        prefix = self.pending
        self.pending = b""
        test = f"{n} < {_TABLE}" if nonnegative else f"0 <= {n} < {_TABLE}"

        def render(suffix: bytes) -> str:
            table = _prefixed(prefix, ttype, suffix)
            if table is None:  # too many tables: the slow branch does it all
                return f"{prefix!r} + _p{ttype}({n}) + {suffix!r}"
            slow = f"_p{ttype}({n})"
            slow = f"{prefix!r} + {slow}" if prefix else slow
            slow = f"{slow} + {suffix!r}" if suffix else slow
            return f"{self.name(table, 'T')}[{n}] if {test} else {slow}"

        self.append(render)

    def length(self, expr: str) -> None:
        """Append the pending bytes and ``expr`` (a size) as an i32."""
        if expr.isidentifier():
            n = expr
        else:
            n = self.var()
            self.emit(f"{n} = {expr}")
        self.integer(n, _T_I32, nonnegative=True)

    def compile(self, filename: str) -> dict[str, Any]:
        source = "\n".join(x if isinstance(x, str) else x.line() for x in self.lines) + "\n"
        exec(compile(source, filename, "exec"), self.ns)
        self.ns["__source__"] = source
        return self.ns

    # -- fields -------------------------------------------------------------------------

    def struct(self, cls: Any, x: str, stack: tuple[Any, ...]) -> None:
        """The fields and stop byte of the typed struct in local ``x``."""
        by_attr = {attr: (key, js_conv) for attr, key, _, _, _, js_conv in self.bc.body_fields(cls)}
        defaults = self.bc.defaults(cls)
        stack = (*stack, cls)
        for n, (fid, spec) in enumerate(cls.thrift_spec.items()):
            ttype, name, arg, required = _unpack(spec)
            attr = f"f{n}"
            if attr not in by_attr:  # api.none: never read, its default is written
                self.const(defaults.get(name, b""))
                continue
            if required and ttype == _T_STRING:  # used once: no local needed
                y = f"{x}.{attr}"
            else:
                y = self.var()
                self.emit(f"{y} = {x}.{attr}")
            self.field(fid, ttype, arg, required, by_attr[attr][1], y, defaults.get(name), stack, typed=True)
        self.const(b"\x00")

    def field(
        self,
        fid: int,
        ttype: int,
        arg: Any,
        required: bool,
        js_conv: bool,
        y: str,
        default: bytes | None,
        stack: tuple[Any, ...],
        typed: bool,
    ) -> None:
        """A field whose value (or None) is in local ``y``: its header and value, its
        default, nothing, or (required and missing) the object path."""
        if required:
            if not typed:  # typed: the decoder refused a missing or null required field
                self.emit(f"if {y} is None:")
                self.emit("    raise _Slow")
            self.const(_header(ttype, fid))
            self.value(ttype, arg, js_conv, y, stack, typed)
            return
        pending = self.pending
        self.pending = b""
        self.emit(f"if {y} is not None:")
        self.indent += 1
        self.pending = pending
        self.const(_header(ttype, fid))
        self.value(ttype, arg, js_conv, y, stack, typed)
        self.flush()
        taken = self.tails
        self.indent -= 1
        rest = pending + (default or b"")
        if rest:
            self.emit("else:")
            self.indent += 1
            self.pending = rest
            self.flush()
            skipped = self.tails
            self.indent -= 1
            nested_if = any(isinstance(t, _NoElse) for t in taken)  # its else would land after ours
            self.tails = [*taken, *skipped] if taken and not nested_if else []
        else:
            self.tails = [*taken, _NoElse(self.indent)] if taken else []

    def value(self, ttype: int, arg: Any, js_conv: bool, x: str, stack: tuple[Any, ...], typed: bool) -> None:
        """Append the pending bytes and the encoding of the (non-None) value in local ``x``.
        ``typed``: ``x`` came from the typed decode (binary is base64 text, map keys are
        text); otherwise it is a value ``Compiler.from_text`` made (binary is bytes)."""
        if is_enum(arg):
            prefix = self.pending
            self.pending = b""

            def enum(suffix: bytes) -> str:
                table = {v: prefix + _pack_i32(v) + suffix for v in arg._VALUES_TO_NAMES}
                table.update({k: prefix + _pack_i32(v) + suffix for k, v in arg._NAMES_TO_VALUES.items()})
                return f"{self.name(table, 'E')}[{x}]"

            self.append(enum)
        elif ttype in _RANGES:
            if js_conv and ttype == _T_I64 and typed:
                self.emit(f"if {x}.__class__ is not int:")
                self.emit(f"    {x} = _int({x})")  # out of range: struct.error, the object path
            self.integer(x, ttype)
        elif ttype == _T_BOOL:
            prefix = self.pending
            self.pending = b""
            self.append(lambda suffix: f"{prefix + _TRUE + suffix!r} if {x} else {prefix + _FALSE + suffix!r}")
        elif ttype == _T_DOUBLE:
            self.flush()
            self.append(lambda _: f"_p{_T_DOUBLE}({x})", extendable=False)
        elif ttype in (_T_STRING, _T_BINARY):
            b = self.var()
            if ttype == _T_STRING:
                self.emit(f"{b} = {x}.encode()")
            elif typed:
                self.emit(f"{b} = _b64({x})")
            else:
                self.emit(f"{b} = {x}")
            self.length(f"len({b})")
            self.append(lambda _: b, extendable=False)
        elif ttype == _T_STRUCT:
            if not typed:
                raise Unsupported("a struct from text")
            if arg in stack or len(stack) >= _INLINE_DEPTH:
                self.flush()
                self.emit(f"{self.writer(arg)}({x}, a)")
            else:
                self.struct(arg, x, stack)
        elif ttype in (_T_LIST, _T_SET):
            self.sequence(arg, js_conv, x, stack, typed)
        elif ttype == _T_MAP:
            self.mapping(arg, js_conv, x, stack, typed)
        else:
            raise Unsupported(f"thrift type {ttype}")

    def sequence(self, arg: Any, js_conv: bool, x: str, stack: tuple[Any, ...], typed: bool) -> None:
        etype, earg = _split(arg)
        self.const(bytes([_wire(etype)]))
        n = self.var()
        self.emit(f"{n} = len({x})")
        self.length(n)
        if etype in _PACKERS and not is_enum(earg) and not (js_conv and etype == _T_I64 and typed):
            fmt = _PACKERS[etype]
            # one call for the whole list
            self.append(lambda _: f"_pack('{fmt[0]}%d{fmt[1]}' % {n}, *{x})", extendable=False)
            return
        if is_enum(earg):
            table = {v: _pack_i32(v) for v in earg._VALUES_TO_NAMES}
            table.update({k: _pack_i32(v) for k, v in earg._NAMES_TO_VALUES.items()})
            t = self.name(table, "E")
            self.append(lambda _: f"_join(map({t}.__getitem__, {x}))", extendable=False)
            return
        if etype == _T_BOOL:
            self.append(lambda _: f"bytes({x})", extendable=False)  # a list of bools: b'\x01\x00...'
            return
        e = self.var()
        self.emit(f"for {e} in {x}:")
        self.indent += 1
        self.value(etype, earg, js_conv, e, stack, typed)
        self.close()
        self.indent -= 1

    def mapping(self, arg: Any, js_conv: bool, x: str, stack: tuple[Any, ...], typed: bool) -> None:
        (ktype, karg), (vtype, varg) = _split(arg[0]), _split(arg[1])
        self.const(bytes([_wire(ktype), _wire(vtype)]))
        if ktype in (_T_STRUCT, _T_LIST, _T_SET, _T_MAP):
            raise Unsupported(f"map keys of type {ktype}")
        key_typed = typed
        if typed and ktype != _T_STRING:
            # Keys arrive as text: parse them as before (which may merge two keys into one).
            conv = self.bc.compiler.from_text(ktype, karg, js_conv)
            self.emit(f"{x} = {{{self.name(conv, 'k')}(k, None): v for k, v in {x}.items()}}")
            key_typed = False
        self.length(f"len({x})")
        k, v = self.var(), self.var()
        self.emit(f"for {k}, {v} in {x}.items():")
        self.indent += 1
        self.value(ktype, karg, False, k, stack, key_typed)
        self.value(vtype, varg, js_conv, v, stack, typed)
        self.close()
        self.indent -= 1

    def writer(self, cls: Any) -> str:
        """A function ``(typed struct, append)`` for ``cls``: for recursive and deep types."""
        found = self._writers.get(cls)
        if found is not None:
            return found
        name = self._writers[cls] = f"_w{len(self._writers)}"
        # Generated into a sub-generator sharing this namespace, then defined here.
        sub = Gen(self.bc)
        sub.ns = self.ns
        sub._names = self._names
        sub._vars = self._vars
        sub._writers = self._writers
        sub.emit(f"def {name}(x, a):")
        sub.indent = 1
        sub.struct(cls, "x", (cls,))
        sub.close()
        self.lines[:0] = sub.lines  # defined before the function that calls it
        return name
