"""The HTTP router: first matching route in config order wins.

Theory of operation. Everything that can be decided from the config alone is done
in ``__init__``; ``match`` is a dict lookup, one C-level regex match and a tuple
index in the common case.

Host first. A route's host matcher depends only on the request's host, so routes
are split per host at build time into ordered candidate lists:

- every exact host named in the config gets the routes it can match (its own exact
  routes, every ``*.suffix`` it falls under, every host-less route), in order;
- every ``*.suffix`` gets the routes that a host *not* named exactly can match
  when that suffix is the longest one it ends with (all shorter suffixes of it
  also match, longer ones would have been found first);
- any other host gets the host-less routes.

Then the path. The path matchers of one candidate list are compiled into a single
bytes regex, one capturing group per route in order: ``re.escape(prefix)``,
``re.escape(exact)\\Z``, ``(?:regex)\\Z``. Python's ``re`` tries alternatives left
to right and stops at the first that matches, which is first-match-in-order, and
``Match.lastindex`` is the outermost group that matched (inner groups of a route's
own regex close before it), so it names the route. One ``match`` call in C
replaces a Python loop over the routes: a 20-route miss costs about as much as a
hit on the first route.

A table of a few routes (the common case) skips the combined regex: a loop of C byte
comparisons over it is cheaper, and allocates nothing (a ``Match`` would). A ``path_regex``
route may sit in that loop when its pattern starts with a literal (``^/v[0-9]+/`` starts with
``/v``, found by parsing it once here): a path without that prefix cannot match it and skips it
with one comparison; only a path with it runs the route's own regex.

Methods and headers are rarer; a route with them has a ``check`` closure. If the
path matched but the check fails, matching continues with a plain loop over the
routes after it, which is slower but still in order. A regex that cannot sit in
an alternation (backreferences, named groups, global flags we cannot scope) is an
empty group that always matches, and its real test runs in that same fallback
path, so order is kept exactly.

Config text is encoded as UTF-8; hosts and header names are lowercased once here.
"""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, TypeVar

from ...core.proto.http._message import Request
from ..config._schema import Route

T = TypeVar("T")

_Check = Callable[[Request], bool]
_Match = Callable[[bytes], "re.Match[bytes] | None"]

# Path matcher kinds for the fallback loop. Final (as the other module constants here):
# mypyc inlines them or keeps them in C statics instead of a module dict lookup per use.
_PREFIX: Final = 0
_EXACT: Final = 1
_REGEX: Final = 2

# Leading global flags like "(?i)" are rewritten to a scoped group "(?i:...)", which
# may sit inside an alternation. Verbose mode ("x") is left alone: its comments run
# to the end of the line and could swallow what we append.
_GLOBAL_FLAGS: Final = re.compile(r"\(\?([aiLmsu]+)\)")
# Conservative: anything that may refer to a group by number or name stays out.
_GROUP_REFS: Final = re.compile(r"\\[1-9]|\\g|\(\?P|\(\?\(|\(\?<[^=!]")


def _methods_check(methods: frozenset[bytes]) -> _Check:
    def check(req: Request) -> bool:
        m = req.method
        # upper() is only paid by clients that do not send the usual case.
        return m in methods or m.upper() in methods

    return check


def _headers_check(required: tuple[tuple[bytes, bytes], ...]) -> _Check:
    def check(req: Request) -> bool:
        headers = req.headers
        names = headers.names()
        for lname, value in required:
            if lname not in names:
                return False
            if value not in headers.get_all(lname):
                return False
        return True

    return check


def _all_check(checks: Sequence[_Check]) -> _Check:
    def check(req: Request) -> bool:
        return all(c(req) for c in checks)

    return check


def _alternative(pattern: str) -> tuple[bytes, int] | None:
    """``pattern`` as an alternation branch with fullmatch semantics, and its group count.

    None when it cannot be combined with other routes' patterns.
    """
    if _GROUP_REFS.search(pattern):
        return None
    flags = _GLOBAL_FLAGS.match(pattern)
    if flags:
        pattern = f"(?{flags.group(1)}:{pattern[flags.end() :]})"
    branch = b"(?:" + pattern.encode() + b")\\Z"
    try:
        groups = re.compile(branch).groups
    except re.error:
        return None
    return branch, groups


try:  # CPython's regex parser (Python 3.11+), for a pattern's literal prefix; without it, none is found
    _PARSER: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - another Python
    _PARSER = None


def _literal_prefix(pattern: bytes) -> bytes:
    """The bytes every fullmatch of ``pattern`` starts with (b"" when none is known).

    The parser factors a common prefix out of alternatives (``/a|/b`` is ``/`` then a set), so
    its leading LITERAL items are required in order; a leading ``^``/``\\A`` is true at the
    start. Case-insensitive patterns have none (their literals match more than one byte)."""
    if _PARSER is None:
        return b""
    try:
        parsed = _PARSER.parse(pattern)
    except Exception:
        return b""
    if parsed.state.flags & re.IGNORECASE:
        return b""
    out = bytearray()
    begin = (_PARSER.AT_BEGINNING, _PARSER.AT_BEGINNING_STRING)
    for op, arg in parsed:
        if op is _PARSER.LITERAL:
            out.append(arg)
        elif op is _PARSER.AT and arg in begin and not out:
            continue
        else:
            break
    return bytes(out)


class _Route:
    """One compiled route: its fallback tuple and its regex branch."""

    __slots__ = ("branch", "entry", "groups", "hit_check", "prefix")

    def __init__(self, route: Route, value: Any) -> None:
        given = [m for m in (route.path, route.path_exact, route.path_regex) if m is not None]
        if len(given) > 1:
            # The loader rejects this; refuse it here too rather than pick one silently.
            raise ValueError("a route takes only one of path, path_exact, path_regex")

        checks: list[_Check] = []
        if route.methods is not None:
            checks.append(_methods_check(frozenset(m.upper().encode() for m in route.methods)))
        if route.headers:
            checks.append(_headers_check(tuple((n.lower().encode(), v.encode()) for n, v in route.headers.items())))
        check = None if not checks else checks[0] if len(checks) == 1 else _all_check(checks)

        self.groups = 0
        self.hit_check = check
        self.prefix = b""
        """Bytes every path this route matches starts with (its path; a regex's literal prefix)."""
        kind: int
        arg: Any
        if route.path_exact is not None:
            kind, arg = _EXACT, route.path_exact.encode()
            self.branch = re.escape(arg) + b"\\Z"
        elif route.path_regex is not None:
            try:
                arg = re.compile(route.path_regex.encode()).fullmatch
            except re.error as exc:
                raise ValueError(f"path_regex {route.path_regex!r} is not a valid bytes pattern: {exc}") from None
            kind = _REGEX
            self.prefix = _literal_prefix(route.path_regex.encode())
            alt = _alternative(route.path_regex)
            if alt is None:
                # Always "matches" in the big regex; the real test runs in Python.
                self.branch = b""
                self.hit_check = _all_check([_path_check(arg), *checks])
            else:
                self.branch, self.groups = alt
        else:
            kind, arg = _PREFIX, (route.path if route.path is not None else "/").encode()
            self.branch = re.escape(arg)
        if kind != _REGEX:
            self.prefix = arg
        self.entry: tuple[int, Any, _Check | None, Any] = (kind, arg, check, value)


def _path_check(fullmatch: _Match) -> _Check:
    def check(req: Request) -> bool:
        return fullmatch(req.path) is not None

    return check


_NEVER: Final[_Match] = re.compile(b"(?!)").match

# A table of at most this many prefix/exact routes is matched by a loop of C byte
# comparisons: cheaper than the regex, whose Match object is an allocation per request.
# Past it, the regex's one call wins. Run from source (MONOLAKE_PURE=1, no compiler) the
# loop is interpreted and wins only up to about 3 routes; compiled, functions here are
# not Python functions.
_LITERAL_MAX: Final = 3 if isinstance(_methods_check, types.FunctionType) else 8


class _Literal:
    """A route of a literal table: a prefix or exact path, or a regex behind its literal prefix."""

    __slots__ = ("check", "exact", "path", "rx", "value")

    def __init__(self, path: bytes, exact: bool, check: _Check | None, value: Any, rx: _Match | None = None) -> None:
        self.path = path
        self.exact = exact
        self.check = check
        self.value = value
        self.rx = rx
        """A path_regex route's fullmatch, run only on a path that starts with ``path``."""


class _Table(Generic[T]):
    """The routes one host can match, compiled for ``Router.match``."""

    __slots__ = ("entries", "hits", "literals", "rx")

    def __init__(self, routes: Sequence[_Route]) -> None:
        self.entries: tuple[tuple[int, Any, _Check | None, T], ...] = tuple(r.entry for r in routes)
        # hits[lastindex] = (position, check, value). Slots of a route's own inner
        # groups repeat its hit; lastindex never names them, but the list stays dense.
        self.hits: list[tuple[int, _Check | None, T]] = []
        branches = []
        for pos, r in enumerate(routes):
            branches.append(b"(" + r.branch + b")")
            hit = (pos, r.hit_check, r.entry[3])
            if not self.hits:
                self.hits.append(hit)  # index 0: no group is numbered 0
            self.hits.extend([hit] * (1 + r.groups))
            if not r.branch:
                break  # an always-matching branch: nothing after it is reachable
        self.rx: _Match = re.compile(b"|".join(branches)).match if branches else _NEVER
        self.literals: tuple[_Literal, ...] | None = None
        # A regex joins the loop only behind a literal prefix longer than "/": else every path
        # would run it, and the combined regex's one call is the better deal.
        if len(routes) <= _LITERAL_MAX and all(r.entry[0] != _REGEX or len(r.prefix) > 1 for r in routes):
            self.literals = tuple(
                _Literal(r.prefix, kind == _EXACT, check, v, arg if kind == _REGEX else None)
                for (kind, arg, check, v), r in zip(self.entries, routes, strict=True)
            )

    def scan(self, req: Request, start: int) -> T | None:
        """First match among ``entries[start:]``, one route at a time."""
        path = req.path
        entries = self.entries
        for i in range(start, len(entries)):
            kind, arg, check, value = entries[i]
            if kind == _PREFIX:
                if not path.startswith(arg):
                    continue
            elif kind == _EXACT:
                if path != arg:
                    continue
            elif arg(path) is None:
                continue
            if check is None or check(req):
                return value
        return None


class Router(Generic[T]):
    """Maps a request to the value of the first route (in order) that matches it.

    ``entries`` pairs each config ``Route`` with whatever the caller wants back
    (typically the route's built service). Raises ValueError when a route's
    matchers cannot be compiled (a ``path_regex`` that is valid as text but not as
    a bytes pattern, or more than one path matcher).
    """

    __slots__ = ("_any", "_by_host", "_size", "_suffixes", "_wild")

    def __init__(self, entries: Sequence[tuple[Route, T]]) -> None:
        compiled = [_Route(route, value) for route, value in entries]
        self._size = len(compiled)

        # Each route's host: (0 any | 1 exact | 2 wildcard, host or b".suffix").
        hosts: list[tuple[int, bytes]] = []
        for route, _ in entries:
            h = route.host
            if h is None:
                hosts.append((0, b""))
            elif h.startswith("*."):
                hosts.append((2, h[1:].lower().encode()))
            else:
                hosts.append((1, h.lower().encode()))

        def table(host: bytes | None, suffix: bytes) -> _Table[T]:
            """Routes for ``host`` if it is named exactly in the config, else for any
            host whose longest matching wildcard is ``suffix`` (b"" for none)."""
            out = []
            for r, (k, h) in zip(compiled, hosts, strict=True):
                if k == 0:
                    ok = True
                elif k == 1:
                    ok = h == host
                elif host is not None:
                    ok = len(host) > len(h) and host.endswith(h)
                else:
                    # Such a host also ends with every shorter suffix of ``suffix``.
                    ok = bool(suffix) and suffix.endswith(h)
                if ok:
                    out.append(r)
            return _Table(out)

        self._any = table(None, b"")
        self._by_host = {h: table(h, b"") for k, h in hosts if k == 1}
        suffixes = {h for k, h in hosts if k == 2}
        self._wild = {s: table(None, s) for s in suffixes} if suffixes else None
        self._suffixes = tuple(suffixes)

    def __len__(self) -> int:
        return self._size

    def match(self, req: Request) -> T | None:
        """The value of the first route matching ``req``, or None."""
        host = req.host
        t = self._by_host.get(host)
        if t is None:
            t = self._any
            wild = self._wild
            # One C call turns away the hosts under no wildcard at all.
            if wild is not None and host.endswith(self._suffixes):
                # Leftmost dot first finds the longest suffix; starting at index 1
                # keeps the bare suffix (".example.com" itself) from matching.
                i = host.find(b".", 1)
                while i > 0:
                    found = wild.get(host[i:])
                    if found is not None:
                        t = found
                        break
                    i = host.find(b".", i + 1)
        literals = t.literals
        if literals is not None:
            path = req.path
            for lit in literals:
                if path == lit.path if lit.exact else path.startswith(lit.path):
                    rx = lit.rx
                    if rx is not None and rx(path) is None:
                        continue
                    check = lit.check
                    if check is None or check(req):
                        return lit.value  # type: ignore[no-any-return]
            return None
        m = t.rx(req.path)
        if m is None:
            return None
        pos, check, value = t.hits[m.lastindex]  # type: ignore[index]
        if check is None or check(req):
            return value
        return t.scan(req, pos + 1)
