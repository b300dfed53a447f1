"""User filters: Pingora-style request phases as plain methods.

A filter is a class with any of these methods (none is async: they do no I/O and
cost one call each):

- ``request_filter(req, ctx) -> Response | None``: before routing; return a
  Response to answer directly (auth, redirects, rate limits).
- ``upstream_request_filter(req, ctx) -> None``: after routing and rewrites, before
  the request goes upstream; ``ctx.route`` is set.
- ``response_filter(resp, ctx) -> None``: on the upstream's response head.
- ``logging(req, resp, ctx) -> None``: once the response was written.

Only the methods a filter overrides are called: the phase lists are built once, at
build time. Filters are named in config as ``"module:Class"`` (or a table with
``use`` and ``args``, passed to the constructor as keyword arguments).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from ..config import FilterSpec
from ..errors import ConfigError
from ..proto.http1 import Request, Response
from ..service import Context


class HttpFilter:
    """Base class for filters; override the phases you need."""

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        return None

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        return None

    def response_filter(self, resp: Response, ctx: Context) -> None:
        return None

    def logging(self, req: Request, resp: Response, ctx: Context) -> None:
        return None


PHASES = ("request_filter", "upstream_request_filter", "response_filter", "logging")


class Phases:
    """The bound methods to call in each phase, in config order."""

    __slots__ = PHASES

    def __init__(self, filters: Sequence[object]) -> None:
        for phase in PHASES:
            calls: list[Callable[..., Any]] = []
            for f in filters:
                method = getattr(type(f), phase, None)
                if method is None or method is getattr(HttpFilter, phase):
                    continue
                calls.append(getattr(f, phase))
            setattr(self, phase, tuple(calls))

    request_filter: tuple[Callable[[Request, Context], Response | None], ...]
    upstream_request_filter: tuple[Callable[[Request, Context], None], ...]
    response_filter: tuple[Callable[[Response, Context], None], ...]
    logging: tuple[Callable[[Request, Response, Context], None], ...]


def load_filters(
    specs: Sequence[str | FilterSpec], path: str, *, modules: Mapping[str, ModuleType] | None = None
) -> list[object]:
    """Import and instantiate filters. Raises ConfigError naming ``path[i]``.

    The working directory is importable, as with uvicorn: ``monolake run`` started
    from a project finds that project's filter modules. ``modules`` overrides the
    import for the modules it names (a reload's freshly loaded versions, see
    ``proxy/_reload.py``).
    """
    cwd = os.getcwd()
    if specs and cwd not in sys.path:
        sys.path.insert(0, cwd)
    out: list[object] = []
    for i, spec in enumerate(specs):
        use, args = (spec, {}) if isinstance(spec, str) else (spec.use, dict(spec.args))
        where = f"{path}[{i}]"
        module_name, _, attr = use.partition(":")
        try:
            if modules and module_name in modules:
                module = modules[module_name]
            else:
                module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(where, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise ConfigError(where, f"module {module_name!r} has no attribute {attr!r}")
        try:
            obj = cls(**args)
        except Exception as exc:
            raise ConfigError(where, f"{use}({args}) failed: {type(exc).__name__}: {exc}") from None
        if not any(callable(getattr(obj, phase, None)) for phase in PHASES):
            raise ConfigError(where, f"{use} defines none of the filter phases {', '.join(PHASES)}")
        out.append(obj)
    return out
