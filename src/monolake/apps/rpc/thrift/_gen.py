"""Binary and compact protocol codecs generated per method from the IDL, built once with the service.

thriftpy2 reads and writes a struct by walking its ``thrift_spec`` at every call
(plus, on our side, a bounds walk before its reader and a struct object made and
taken apart again). Here, for each method, Python source is generated once and
exec'd:

- ``decode(data, offset) -> list``: the argument (or result) struct read straight
  into a list of field values in IDL order, missing fields at their IDL default;
  nested structs are built as thriftpy2 objects of the IDL's classes;
- ``encode(values) -> bytes``: a struct written from a sequence of field values in
  IDL order (``None`` is a missing field), nested structs read by attribute.

They are fast paths only, like the gateway's JSON writer (``proxy.gateway._binary``,
whose type helpers this reuses): anything they do not expect (a field of another
type or id, an unknown field, a value of an unexpected class, bytes running past the
end, invalid UTF-8, a recursive type) raises, and the caller then runs thriftpy2 on
the same input, which stays the definition of the bytes and of the errors.
``tests/rpc/test_thrift_gen.py`` checks that both give equal bytes and values. The
compact protocol has its own generator (``_CompactGen``), matched against thriftpy2's
pure Python compact codec the same way.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from typing import Any

from ....core.proto._varint import encode_varint as _varint
from ...proxy.gateway._binary import _PACKERS, Slow, Unsupported, _header, _wire
from ...proxy.gateway._convert import (
    _T_BINARY,
    _T_BOOL,
    _T_LIST,
    _T_MAP,
    _T_SET,
    _T_STRING,
    _T_STRUCT,
    _split,
    _unpack,
)

Decoder = Callable[[bytes, int], list[Any]]
Encoder = Callable[[Sequence[Any]], bytes]

_counter = itertools.count()
_NS: dict[str, Any] = {
    "_Slow": Slow,
    "_join": b"".join,
    "_i32": struct.Struct("!i").unpack_from,
    "_h16": struct.Struct("!h").unpack_from,
    "_pi32": struct.Struct("!i").pack,
    "_unpack": struct.unpack_from,
    "_pack": struct.pack,
    "_UDE": UnicodeDecodeError,
    "_str": str,
    "_bytes": bytes,
    **{f"_u{t}": struct.Struct(fmt).unpack_from for t, fmt in _PACKERS.items()},
    **{f"_p{t}": struct.Struct(fmt).pack for t, fmt in _PACKERS.items()},
}
_WIDTH = {t: struct.calcsize(fmt) for t, fmt in _PACKERS.items()}


class _Gen:
    """Source lines and the namespace they run in; one per method codec."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = dict(_NS)
        self._vars = itertools.count()
        self._names: dict[int, str] = {}
        self._readers: dict[Any, str] = {}
        self._writers: dict[Any, str] = {}
        self._stack: list[Any] = []

    def var(self) -> str:
        return f"v{next(self._vars)}"

    def name(self, obj: Any, prefix: str) -> str:
        found = self._names.get(id(obj))
        if found is None:
            found = self._names[id(obj)] = f"_{prefix}{len(self._names)}"
            self.ns[found] = obj
        return found

    def compile(self, fn: str, filename: str) -> Any:
        source = "\n".join(self.lines) + "\n"
        exec(compile(source, filename, "exec"), self.ns)
        self.ns["__source__"] = source
        return self.ns[fn]

    # -- reading ------------------------------------------------------------------------

    def reader(self, cls: Any) -> str:
        """A function ``(data, i) -> (obj, i)`` reading a struct of class ``cls``."""
        if cls in self._stack:
            raise Unsupported(f"recursive type {cls.__name__}")
        found = self._readers.get(cls)
        if found is not None:
            return found  # thriftpy2 bounds its depth; we would not
        name = self._readers[cls] = f"_r{len(self._readers)}"
        self._stack.append(cls)
        body = self.struct_reader(name, cls, f"{self.name(cls, 'C')}({{kw}})")
        self._stack.pop()
        self.lines[:0] = body
        return name

    def struct_reader(self, fn: str, cls: Any, make: str, top: bool = False) -> list[str]:
        """Lines of ``def fn(d, i)``: the fields of a ``cls`` struct, returning ``make``
        (``{kw}``: ``name=value, ...``; ``{vals}``: ``value, ...``) and, unless ``top``,
        where it ended."""
        out = [f"def {fn}(d, i):"]
        fields = []
        # A missing field keeps thriftpy2's __init__ default (the very object it would share).
        defaults = dict(getattr(cls, "default_spec", ()) or ())
        for fid, entry in cls.thrift_spec.items():
            ttype, fname, arg, _ = _unpack(entry)
            v = self.var()
            fields.append((fid, ttype, fname, arg, v))
            default = defaults.get(fname)
            out.append(f"    {v} = None" if default is None else f"    {v} = {self.name(default, 'D')}")
        out.append("    while True:")
        out.append("        t = d[i]")
        out.append("        if t == 0:")
        out.append("            break")
        out.append("        f = _h16(d, i + 1)[0]")
        out.append("        i += 3")
        first = True
        for fid, ttype, _, arg, v in fields:
            out.append(f"        {'if' if first else 'elif'} f == {fid}:")
            first = False
            out.append(f"            if t != {_wire(ttype)}:")
            out.append("                raise _Slow")
            out.extend(self.read_value(ttype, arg, v, 3))
        if first:
            out.append("        raise _Slow")
        else:
            out.append("        else:")
            out.append("            raise _Slow")
        kw = ", ".join(f"{fname}={v}" for _, _, fname, _, v in fields)
        vals = ", ".join(v for *_, v in fields)
        made = make.format(kw=kw, vals=vals)
        out.append(f"    return {made}" if top else f"    return {made}, i + 1")
        return out

    def read_value(self, ttype: int, arg: Any, v: str, depth: int) -> list[str]:
        """Lines (at ``depth`` indents) reading a value of ``ttype`` at ``d[i]`` into ``v``."""
        p = "    " * depth
        if ttype == _T_BOOL:
            return [f"{p}{v} = d[i] != 0", f"{p}i += 1"]
        if ttype in _PACKERS:
            return [f"{p}{v} = _u{ttype}(d, i)[0]", f"{p}i += {_WIDTH[ttype]}"]
        if ttype in (_T_STRING, _T_BINARY):
            n, e = self.var(), self.var()
            out = [
                f"{p}{n} = _i32(d, i)[0]",
                f"{p}i += 4",
                f"{p}{e} = i + {n}",
                f"{p}if {n} < 0 or {e} > len(d):",
                f"{p}    raise _Slow",
                f"{p}{v} = d[i:{e}]",
                f"{p}i = {e}",
            ]
            if ttype == _T_STRING:  # thriftpy2 keeps bytes that are not UTF-8 as bytes
                out += [f"{p}try:", f"{p}    {v} = {v}.decode()", f"{p}except _UDE:", f"{p}    pass"]
            return out
        if ttype == _T_STRUCT:
            return [f"{p}{v}, i = {self.reader(arg)}(d, i)"]
        if ttype in (_T_LIST, _T_SET):  # thriftpy2 reads sets as lists too
            etype, earg = _split(arg)
            n, x = self.var(), self.var()
            out = [
                f"{p}if d[i] != {_wire(etype)}:",
                f"{p}    raise _Slow",
                f"{p}{n} = _i32(d, i + 1)[0]",
                f"{p}i += 5",
                f"{p}if {n} < 0 or {n} > len(d) - i:",
                f"{p}    raise _Slow",
            ]
            if etype in _PACKERS:
                fmt = _PACKERS[etype]
                out += [
                    f"{p}{v} = list(_unpack('{fmt[0]}%d{fmt[1]}' % {n}, d, i))",
                    f"{p}i += {_WIDTH[etype]} * {n}",
                ]
                return out
            if etype == _T_BOOL:
                return [*out, f"{p}{v} = [b != 0 for b in d[i : i + {n}]]", f"{p}i += {n}"]
            out += [f"{p}{v} = []", f"{p}for _ in range({n}):"]
            out += self.read_value(etype, earg, x, depth + 1)
            out.append(f"{p}    {v}.append({x})")
            return out
        if ttype == _T_MAP:
            (ktype, karg), (vtype, varg) = _split(arg[0]), _split(arg[1])
            n, k, x = self.var(), self.var(), self.var()
            out = [
                f"{p}if d[i] != {_wire(ktype)} or d[i + 1] != {_wire(vtype)}:",
                f"{p}    raise _Slow",
                f"{p}{n} = _i32(d, i + 2)[0]",
                f"{p}i += 6",
                f"{p}if {n} < 0 or {n} > len(d) - i:",
                f"{p}    raise _Slow",
                f"{p}{v} = {{}}",
                f"{p}for _ in range({n}):",
            ]
            out += self.read_value(ktype, karg, k, depth + 1)
            out += self.read_value(vtype, varg, x, depth + 1)
            out.append(f"{p}    {v}[{k}] = {x}")
            return out
        raise Unsupported(f"thrift type {ttype}")

    # -- writing ------------------------------------------------------------------------

    def writer(self, cls: Any) -> str:
        """A function ``(obj, a)`` appending the fields and stop byte of a ``cls`` object."""
        if cls in self._stack:
            raise Unsupported(f"recursive type {cls.__name__}")
        found = self._writers.get(cls)
        if found is not None:
            return found
        name = self._writers[cls] = f"_w{len(self._writers)}"
        self._stack.append(cls)
        c = self.name(cls, "C")
        # thriftpy2 writes an object by its own class's spec: another class takes its path.
        out = [f"def {name}(o, a):", f"    if o.__class__ is not {c}:", "        raise _Slow"]
        for fid, entry in cls.thrift_spec.items():
            ttype, fname, arg, _ = _unpack(entry)
            x = self.var()
            out.append(f"    {x} = o.{fname}")
            out.extend(self.write_field(fid, ttype, arg, x, 1))
        out.append("    a(b'\\x00')")
        self._stack.pop()
        self.lines[:0] = out
        return name

    def write_field(self, fid: int, ttype: int, arg: Any, x: str, depth: int) -> list[str]:
        p = "    " * depth
        out = [f"{p}if {x} is not None:", f"{p}    a({_header(ttype, fid)!r})"]
        return out + self.write_value(ttype, arg, x, depth + 1)

    def write_value(self, ttype: int, arg: Any, x: str, depth: int) -> list[str]:
        """Lines appending the (non-None) value in ``x`` as thriftpy2 writes it."""
        p = "    " * depth
        if ttype == _T_BOOL:
            return [f"{p}a(b'\\x01' if {x} else b'\\x00')"]
        if ttype in _PACKERS:
            return [f"{p}a(_p{ttype}({x}))"]  # out of range or not an integer: struct.error
        if ttype in (_T_STRING, _T_BINARY):
            # thriftpy2 writes str as UTF-8 and bytes as they are; anything else takes its path.
            return [
                f"{p}if {x}.__class__ is _str:",
                f"{p}    {x} = {x}.encode()",
                f"{p}elif {x}.__class__ is not _bytes:",
                f"{p}    raise _Slow",
                f"{p}a(_pi32(len({x})))",
                f"{p}a({x})",
            ]
        if ttype == _T_STRUCT:
            return [f"{p}{self.writer(arg)}({x}, a)"]
        if ttype in (_T_LIST, _T_SET):
            etype, earg = _split(arg)
            out = [f"{p}a({bytes([_wire(etype)])!r})", f"{p}a(_pi32(len({x})))"]
            if etype in _PACKERS:
                fmt = _PACKERS[etype]
                return [*out, f"{p}a(_pack('{fmt[0]}%d{fmt[1]}' % len({x}), *{x}))"]
            e = self.var()
            out.append(f"{p}for {e} in {x}:")
            if etype not in (_T_BOOL,):
                out.append(f"{p}    if {e} is None:")  # thriftpy2 fails on a None element
                out.append(f"{p}        raise _Slow")
            return out + self.write_value(etype, earg, e, depth + 1)
        if ttype == _T_MAP:
            (ktype, karg), (vtype, varg) = _split(arg[0]), _split(arg[1])
            k, y = self.var(), self.var()
            out = [
                f"{p}a({bytes([_wire(ktype), _wire(vtype)])!r})",
                f"{p}a(_pi32(len({x})))",
                f"{p}for {k}, {y} in {x}.items():",
                f"{p}    if {k} is None or {y} is None:",
                f"{p}        raise _Slow",
            ]
            return out + self.write_value(ktype, karg, k, depth + 1) + self.write_value(vtype, varg, y, depth + 1)
        raise Unsupported(f"thrift type {ttype}")


# -- compact protocol ---------------------------------------------------------------------

# Compact type ids (thriftpy2's CTYPES): a bool field's type is its value (1 true, 2 false).
_CT = {_T_BOOL: 1, 3: 3, 6: 4, 8: 5, 10: 6, 4: 7, _T_STRING: 8, _T_BINARY: 8, _T_LIST: 9, _T_SET: 10, _T_MAP: 11,
       _T_STRUCT: 12}  # fmt: skip
_BITS = {6: 16, 8: 32, 10: 64}


def _uvarint(d: bytes, i: int) -> tuple[int, int]:
    b = d[i]
    if b < 0x80:
        return b, i + 1
    v = b & 0x7F
    shift = 7
    i += 1
    while True:
        b = d[i]
        i += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, i
        shift += 7
        if shift > 63:
            raise Slow


def _long_header(ct: int, fid: int) -> bytes:
    """A compact field header in long form: the type, then the id as a zigzag varint (an i16)."""
    return bytes([ct]) + _varint((fid << 1) ^ (fid >> 15))


_CNS: dict[str, Any] = {
    "_uv": _uvarint,
    "_v": _varint,
    "_ud": struct.Struct("<d").unpack_from,
    "_pd": struct.Struct("<d").pack,
    "_pb": struct.Struct("!b").pack,
    "_BYTE": tuple(bytes([n]) for n in range(256)),
    # short-form field headers by delta (1..15), per compact type
    "_FH": {ct: tuple(bytes([delta << 4 | ct]) if delta else b"" for delta in range(16)) for ct in range(1, 13)},
}


class _CompactGen(_Gen):
    """The same codecs for the compact protocol, as thriftpy2's (pure Python) compact protocol
    reads and writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.ns.update(_CNS)

    def struct_reader(self, fn: str, cls: Any, make: str, top: bool = False) -> list[str]:
        out = [f"def {fn}(d, i):"]
        fields = []
        defaults = dict(getattr(cls, "default_spec", ()) or ())
        for fid, entry in cls.thrift_spec.items():
            ttype, fname, arg, _ = _unpack(entry)
            v = self.var()
            fields.append((fid, ttype, fname, arg, v))
            default = defaults.get(fname)
            out.append(f"    {v} = None" if default is None else f"    {v} = {self.name(default, 'D')}")
        out += [
            "    last = 0",
            "    while True:",
            "        b = d[i]",
            "        i += 1",
            "        if b == 0:",
            "            break",
            "        t = b & 15",
            "        if b >> 4:",
            "            f = last + (b >> 4)",
            "        else:",
            "            f, i = _uv(d, i)",
            "            f = (f >> 1) ^ -(f & 1)",
            "        last = f",
        ]
        first = True
        for fid, ttype, _, arg, v in fields:
            out.append(f"        {'if' if first else 'elif'} f == {fid}:")
            first = False
            if ttype == _T_BOOL:  # the value is the field's type
                out += [
                    "            if t == 1:",
                    f"                {v} = True",
                    "            elif t == 2:",
                    f"                {v} = False",
                    "            else:",
                    "                raise _Slow",
                ]
                continue
            out.append(f"            if t != {_CT[ttype]}:")
            out.append("                raise _Slow")
            out.extend(self.read_value(ttype, arg, v, 3))
        out += ["        raise _Slow"] if first else ["        else:", "            raise _Slow"]
        kw = ", ".join(f"{fname}={v}" for _, _, fname, _, v in fields)
        vals = ", ".join(v for *_, v in fields)
        made = make.format(kw=kw, vals=vals)
        out.append(f"    return {made}" if top else f"    return {made}, i")
        return out

    def read_value(self, ttype: int, arg: Any, v: str, depth: int) -> list[str]:
        """A value at ``d[i]``; a bool here is a container's element (one byte, 1 is true)."""
        p = "    " * depth
        if ttype == _T_BOOL:
            return [f"{p}{v} = d[i] == 1", f"{p}i += 1"]
        if ttype == 3:
            return [f"{p}{v} = d[i]", f"{p}if {v} > 127:", f"{p}    {v} -= 256", f"{p}i += 1"]
        if ttype in _BITS:
            return [f"{p}{v}, i = _uv(d, i)", f"{p}{v} = ({v} >> 1) ^ -({v} & 1)"]
        if ttype == 4:
            return [f"{p}{v} = _ud(d, i)[0]", f"{p}i += 8"]
        if ttype in (_T_STRING, _T_BINARY):
            n, e = self.var(), self.var()
            out = [
                f"{p}{n}, i = _uv(d, i)",
                f"{p}{e} = i + {n}",
                f"{p}if {e} > len(d):",
                f"{p}    raise _Slow",
                f"{p}{v} = d[i:{e}]",
                f"{p}i = {e}",
            ]
            if ttype == _T_STRING:
                out += [f"{p}try:", f"{p}    {v} = {v}.decode()", f"{p}except _UDE:", f"{p}    pass"]
            return out
        if ttype == _T_STRUCT:
            return [f"{p}{v}, i = {self.reader(arg)}(d, i)"]
        if ttype in (_T_LIST, _T_SET):
            etype, earg = _split(arg)
            n, x = self.var(), self.var()
            out = [
                f"{p}{n} = d[i]",
                f"{p}i += 1",
                f"{p}if {n} & 15 != {_CT[etype]}:",
                f"{p}    raise _Slow",
                f"{p}{n} >>= 4",
                f"{p}if {n} == 15:",
                f"{p}    {n}, i = _uv(d, i)",
                f"{p}if {n} > len(d) - i:",
                f"{p}    raise _Slow",
                f"{p}{v} = []",
                f"{p}for _ in range({n}):",
            ]
            out += self.read_value(etype, earg, x, depth + 1)
            out.append(f"{p}    {v}.append({x})")
            return out
        if ttype == _T_MAP:
            (ktype, karg), (vtype, varg) = _split(arg[0]), _split(arg[1])
            n, k, x = self.var(), self.var(), self.var()
            out = [
                f"{p}{n}, i = _uv(d, i)",
                f"{p}{v} = {{}}",
                f"{p}if {n}:",
                f"{p}    if d[i] != {_CT[ktype] << 4 | _CT[vtype]} or {n} > len(d) - i:",
                f"{p}        raise _Slow",
                f"{p}    i += 1",
                f"{p}    for _ in range({n}):",
            ]
            out += self.read_value(ktype, karg, k, depth + 2)
            out += self.read_value(vtype, varg, x, depth + 2)
            out.append(f"{p}        {v}[{k}] = {x}")
            return out
        raise Unsupported(f"thrift type {ttype}")

    def writer(self, cls: Any) -> str:
        if cls in self._stack:
            raise Unsupported(f"recursive type {cls.__name__}")
        found = self._writers.get(cls)
        if found is not None:
            return found
        name = self._writers[cls] = f"_w{len(self._writers)}"
        self._stack.append(cls)
        c = self.name(cls, "C")
        out = [f"def {name}(o, a):", f"    if o.__class__ is not {c}:", "        raise _Slow", "    last = 0"]
        for fid, entry in cls.thrift_spec.items():
            ttype, fname, arg, _ = _unpack(entry)
            x = self.var()
            out.append(f"    {x} = o.{fname}")
            out.extend(self.write_field(fid, ttype, arg, x, 1))
        out.append("    a(b'\\x00')")
        self._stack.pop()
        self.lines[:0] = out
        return name

    def write_field(self, fid: int, ttype: int, arg: Any, x: str, depth: int) -> list[str]:
        """The field's header (short form from ``last``, the previous field's id, when it can)
        and value; sets ``last``."""
        p = "    " * depth
        out = [f"{p}if {x} is not None:", f"{p}    h = {fid} - last"]
        if ttype == _T_BOOL:
            t, f = _long_header(1, fid), _long_header(2, fid)
            out.append(f"{p}    a((_FH[1] if {x} else _FH[2])[h] if 0 < h <= 15 else ({t!r} if {x} else {f!r}))")
            out.append(f"{p}    last = {fid}")
            return out
        ct = _CT[ttype]
        out.append(f"{p}    a(_FH[{ct}][h] if 0 < h <= 15 else {_long_header(ct, fid)!r})")
        out.append(f"{p}    last = {fid}")
        return out + self.write_value(ttype, arg, x, depth + 1)

    def write_value(self, ttype: int, arg: Any, x: str, depth: int) -> list[str]:
        p = "    " * depth
        if ttype == _T_BOOL:  # a container's element
            return [f"{p}a(b'\\x01' if {x} else b'\\x02')"]
        if ttype == 3:
            return [f"{p}a(_pb({x}))"]
        if ttype in _BITS:
            bits = _BITS[ttype]
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            return [
                f"{p}if not {lo} <= {x} <= {hi}:",  # thriftpy2 says why
                f"{p}    raise _Slow",
                f"{p}a(_v(({x} << 1) ^ ({x} >> {bits - 1})))",
            ]
        if ttype == 4:
            return [f"{p}a(_pd({x}))"]
        if ttype in (_T_STRING, _T_BINARY):
            out = [f"{p}if {x}.__class__ is _str:"]
            # thriftpy2 writes a str binary's length in characters: its own path
            out += [f"{p}    {x} = {x}.encode()"] if ttype == _T_STRING else [f"{p}    raise _Slow"]
            out += [f"{p}elif {x}.__class__ is not _bytes:", f"{p}    raise _Slow", f"{p}a(_v(len({x})))", f"{p}a({x})"]
            return out
        if ttype == _T_STRUCT:
            return [f"{p}{self.writer(arg)}({x}, a)"]
        if ttype in (_T_LIST, _T_SET):
            etype, earg = _split(arg)
            ct = _CT[etype]
            n, e = self.var(), self.var()
            out = [
                f"{p}{n} = len({x})",
                f"{p}a(_BYTE[{n} << 4 | {ct}] if {n} <= 14 else {bytes([0xF0 | ct])!r} + _v({n}))",
                f"{p}for {e} in {x}:",
            ]
            if etype != _T_BOOL:
                out += [f"{p}    if {e} is None:", f"{p}        raise _Slow"]
            return out + self.write_value(etype, earg, e, depth + 1)
        if ttype == _T_MAP:
            (ktype, karg), (vtype, varg) = _split(arg[0]), _split(arg[1])
            k, y = self.var(), self.var()
            kv = bytes([_CT[ktype] << 4 | _CT[vtype]])
            out = [
                f"{p}a(_v(len({x})) + {kv!r} if {x} else b'\\x00')",
                f"{p}for {k}, {y} in {x}.items():",
                f"{p}    if {k} is None or {y} is None:",
                f"{p}        raise _Slow",
            ]
            return out + self.write_value(ktype, karg, k, depth + 1) + self.write_value(vtype, varg, y, depth + 1)
        raise Unsupported(f"thrift type {ttype}")


def args_decoder(cls: Any, compact: bool = False) -> Decoder | None:
    """``(data, offset) -> [field values in IDL order]`` for a struct of class ``cls`` (an
    ``_args`` or ``_result`` struct) at ``offset`` of binary (or ``compact``) ``data``
    (bytes), or None when the IDL has something not generated. The decoder raises on any
    input that needs thriftpy2 (whose errors are the ones to report)."""
    g = _CompactGen() if compact else _Gen()
    g._stack.append(cls)
    try:
        g.lines += g.struct_reader("decode", cls, "[{vals}]", top=True)
    except Unsupported:
        return None
    return g.compile("decode", f"<thrift decoder {cls.__name__} {next(_counter)}>")  # type: ignore[no-any-return]


def struct_encoder(cls: Any, compact: bool = False) -> Encoder | None:
    """``values -> bytes``: the binary (or ``compact``) encoding of a ``cls`` struct (an
    ``_args`` or ``_result`` struct) whose fields hold ``values`` in IDL order, or None when
    the IDL has something not generated. The encoder raises on any value that needs thriftpy2."""
    g = _CompactGen() if compact else _Gen()
    g._stack.append(cls)
    body = ["def encode(vals):", "    parts = []", "    a = parts.append", "    last = 0"]
    try:
        for n, (fid, entry) in enumerate(cls.thrift_spec.items()):
            ttype, _, arg, _ = _unpack(entry)
            x = g.var()
            body.append(f"    {x} = vals[{n}]")
            body += g.write_field(fid, ttype, arg, x, 1)
    except Unsupported:
        return None
    body += ["    a(b'\\x00')", "    return _join(parts)"]
    g.lines += body
    return g.compile("encode", f"<thrift encoder {cls.__name__} {next(_counter)}>")  # type: ignore[no-any-return]


def field_encoder(cls: Any, fid: int, compact: bool = False) -> Callable[[Any], bytes] | None:
    """``value -> bytes``: a ``cls`` struct with only field ``fid`` set to ``value`` (not
    None): a result's ``success``, binary or ``compact``. None when the type is not generated."""
    ttype, _, arg, _ = _unpack(cls.thrift_spec[fid])
    if compact:
        c = _CompactGen()
        c._stack.append(cls)
        try:
            body = ["def encode(x):", "    parts = []", "    a = parts.append", "    last = 0"]
            body += c.write_field(fid, ttype, arg, "x", 1)
        except Unsupported:
            return None
        c.lines += [*body, "    a(b'\\x00')", "    return _join(parts)"]
        return c.compile("encode", f"<thrift encoder {cls.__name__}.{fid} {next(_counter)}>")  # type: ignore[no-any-return]
    g = _Gen()
    g._stack.append(cls)
    head = _header(ttype, fid)
    if ttype in (_T_STRING, _T_BINARY):  # the usual answer: one concatenation, no list
        g.lines += [
            "def encode(x):",
            "    if x.__class__ is _str:",
            "        x = x.encode()",
            "    elif x.__class__ is not _bytes:",
            "        raise _Slow",
            f"    return {head!r} + _pi32(len(x)) + x + b'\\x00'",
        ]
    elif ttype in _PACKERS:
        g.lines += ["def encode(x):", f"    return {head!r} + _p{ttype}(x) + b'\\x00'"]
    else:
        try:
            body = ["def encode(x):", "    parts = []", "    a = parts.append", f"    a({head!r})"]
            body += g.write_value(ttype, arg, "x", 1)
        except Unsupported:
            return None
        g.lines += [*body, "    a(b'\\x00')", "    return _join(parts)"]
    return g.compile("encode", f"<thrift encoder {cls.__name__}.{fid} {next(_counter)}>")  # type: ignore[no-any-return]
