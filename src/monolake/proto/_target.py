"""Request targets: path normalisation (RFC 3986 §6.2.2) and absolute-form (RFC 9112 §3.2.2).

Theory of operation. A route or a filter that matches ``/big`` must see ``/big``
whatever spelling the client chose (``//big``, ``/x/../big``, ``/./big``,
``/%62ig``, ``/%2e/big``), and the origin must be sent that same path, or the
proxy and the origin disagree on what was asked. ``normalize_path`` rewrites a
path, in this order:

1. percent-escapes: an escaped unreserved character (ALPHA DIGIT - . _ ~) is
   decoded, any other escape gets uppercase hex (``%2f`` -> ``%2F``); a ``%`` not
   followed by two hex digits is an error. Reserved characters stay encoded, ``%2F``
   above all: decoding it would turn one segment into two and change what the
   origin serves (nginx decodes it, Envoy keeps it by default; we keep it, so a
   route on ``/a/b`` is not matched by ``/a%2Fb``, which the origin also treats as
   one segment);
2. runs of slashes become one (``merge_slashes``);
3. dot segments are removed (§5.2.4) with one difference: a ``..`` that would climb
   above the root is an error (400) rather than silently dropped, as nginx does.

The query is not the path and is never touched; neither are backslashes (they are
data in a URI path, and an origin that treats them as separators should reject
them itself). Callers run this only when the path holds ``%``, ``/.`` or ``//``
(the common path holds none), so the fast path is a few C-level ``in`` checks.
Every function here is pure: bytes in, bytes out or ``RemoteProtocolError``.
"""

from __future__ import annotations

import re

from ..errors import RemoteProtocolError, Source

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = b"0123456789abcdefABCDEF"


def _escape_table() -> dict[bytes, bytes]:
    """Every two-hex-digit escape body (either case) -> what it becomes."""
    out = {}
    for hi in _HEX:
        for lo in _HEX:
            key = bytes((hi, lo))
            code = int(key, 16)
            out[key] = bytes((code,)) if code in _UNRESERVED else b"%" + key.upper()
    return out


_ESCAPES = _escape_table()
_SLASHES = re.compile(rb"//+")
# RFC 3986 §3.2: reg-name / IPv4 / IP-literal, then an optional port. No userinfo
# (RFC 9110 §4.2.4: a sender must not send it; it has misled users about the host).
_AUTHORITY = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]*)?")


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status_hint=400, source=Source.DOWNSTREAM)


def normalize_path(path: bytes, *, decode: bool = True, dots: bool = True, merge_slashes: bool = True) -> bytes:
    """``path`` (starting with "/", no query) normalised as the module says.

    ``decode``: percent-escape rules; ``dots``: dot-segment removal; ``merge_slashes``:
    runs of "/" become one. Raises RemoteProtocolError (400) for a malformed escape or
    a path that climbs above the root. Idempotent: a result normalises to itself.
    """
    if decode and 37 in path:  # b"%"; an int needle is a memchr
        first, *rest = path.split(b"%")
        parts = [first]
        escapes = _ESCAPES
        for piece in rest:
            rep = escapes.get(piece[:2])
            if rep is None:
                raise _bad("malformed percent-escape in path")
            parts.append(rep)
            parts.append(piece[2:])
        path = b"".join(parts)
    if merge_slashes and path.find(b"//") >= 0:
        path = _SLASHES.sub(b"/", path)
    if dots and path.find(b"/.") >= 0:
        path = _remove_dots(path)
    return path


def _remove_dots(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 on an absolute path, segment by segment; climbing above the root raises."""
    segments = path.split(b"/")
    out: list[bytes] = []
    for seg in segments[1:]:
        if seg == b".":
            continue
        if seg == b"..":
            if not out:
                raise _bad("path climbs above the root")
            out.pop()
        else:
            out.append(seg)
    if segments[-1] in (b".", b".."):
        out.append(b"")  # "/a/b/.." is the directory "/a/", trailing slash kept
    return b"/" + b"/".join(out)


def split_absolute(target: bytes) -> tuple[bytes, bytes]:
    """An absolute-form target (``http://host:port/path?q``) as (authority, origin-form target).

    RFC 9112 §3.2.2: the authority replaces Host; the path (or "/" when it is empty)
    and the query go on in origin-form. Raises RemoteProtocolError (400) for a scheme
    other than http/https, a missing or malformed authority, or userinfo.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise _bad("request target is neither origin-form nor an http(s) absolute-form")
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop, 0, end)
        if i >= 0:
            end = i
    authority, tail = rest[:end], rest[end:]
    if _AUTHORITY.fullmatch(authority) is None:
        raise _bad("malformed or missing authority in absolute-form target")
    if not tail.startswith(b"/"):
        tail = b"/" + tail
    return authority, tail
