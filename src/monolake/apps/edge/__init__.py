"""Built-in edge filters: turned on by name on a server or a route.

One scheme for every built-in: a ``filters`` entry whose ``use`` has no ``:`` names a
built-in, and its ``args`` table is that built-in's settings::

    [[servers.web.routes]]
    path = "/api/"
    upstream = "api"
    filters = [{ use = "cors", args = { allow_origins = ["https://app.example"] } }]

(``"module:Class"`` stays a user filter.) A built-in is an ``HttpFilter`` (or a
``TcpFilter``) class with:

- ``Args``: a frozen ``msgspec.Struct`` (``forbid_unknown_fields=True``) of its settings,
  documented field by field (units said); ``args`` is converted to it, so a wrong type
  or an unknown key is a ``ConfigError`` at ``...filters[i].args.KEY``;
- ``__init__(self, args: Args)``: compiles everything a request needs (no I/O; it also
  runs for ``monolake check``); raises ``ArgError(key, reason)`` for a bad value, reported
  at ``...filters[i].args.<key>``;
- ``kinds``: the server kinds it applies to (``("http",)`` by default).

Each built-in lives in its own module here and is listed in ``BUILTINS`` (name ->
"module:Class", imported only when a config names it).
"""

from __future__ import annotations

from ._base import BUILTINS, ArgError, build_from_args, builtin_class, is_builtin, make_builtin

__all__ = ["BUILTINS", "ArgError", "build_from_args", "builtin_class", "is_builtin", "make_builtin"]
