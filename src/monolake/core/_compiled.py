"""The hot-path modules compiled with mypyc, and whether this process runs them compiled.

``MODULES`` is the one list: setup.py reads it (as text, without importing monolake)
and compiles these modules from their ``.py`` source, which stays the one truth and
ships beside the compiled files. The compiled modules share one C library and reach
each other's classes directly, so they run all compiled or all from source, never
mixed: when any of them cannot be used compiled, an import hook (installed by
``monolake/__init__``, before any of them is imported) loads every one from its
``.py`` instead. That happens when

- ``MONOLAKE_PURE=1`` is set (an A/B of the two builds on one install, the pure
  test run in CI);
- only some of them are built;
- in a source checkout, a compiled file is older than its ``.py`` (an in-place
  build, then an edit or a branch switch): the edit must run, not the old build.

``mypyc_attr`` is mypyc's class decorator, a no-op when not compiled (so that
mypy_extensions is not a run-time dependency; mypyc reads it from the source).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:
        return lambda cls: cls


class WeakReferable:
    """A plain Python base for a compiled class that is held by weak reference (the metrics
    sample apps and clusters weakly): mypyc's native classes get a ``__weakref__`` slot only
    when they derive from a Python class. Their native attributes stay native. (mypyc 2.4.1 leaves
    that slot's weak references dangling when the instance dies: setup.py's ``fix_weakref_slots``
    patches the generated C.)"""


PURE_ENV = "MONOLAKE_PURE"

MODULES = (
    "monolake.core._body",
    "monolake.core.proto.http._message",
    "monolake.core.proto.http1._parse",
    "monolake.core.proto.http1._serialize",
    "monolake.core.server._http_app",
    "monolake.core.server._http",
    "monolake.core.server._h2",
    "monolake.core.client._http",
    "monolake.core.client._h2",
    "monolake.core.client._pool",
    "monolake.core.runtime.uring._transport",
    "monolake.apps.proxy._proxy",
    "monolake.apps.proxy._upstream",
    "monolake.apps.proxy._router",
    "monolake.apps.proxy._balancer",
    "monolake.core.service._context",
    "monolake.core.service._lane",
    "monolake.core.service.layers._catch_panic",
    "monolake.core.service.layers._timeout",
    "monolake.core.service.layers._concurrency",
    "monolake.core.proto._varint",
    "monolake.apps.streams._messages",
    "monolake.apps.streams._codec",
    "monolake.apps.streams._conn",
    "monolake.apps.streams._server",
    "monolake.apps.streams._client",
    "monolake.core.tls_transport",
    "monolake.core._buffered",
)
"""Compiled with mypyc at install (setup.py), in this order of dependency-free-ness."""

GROUP = "monolake._hotpath"
"""The shared C library of the compiled modules (``monolake/_hotpath__mypyc*.so``)."""

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../monolake


def _files(name: str, root: str = _ROOT) -> tuple[str, list[str]]:
    """``name``'s ``.py`` source and its compiled files present beside it (``root``: the
    ``monolake`` package directory)."""
    base = os.path.join(root, *name.split(".")[1:])
    built = [base + s for s in importlib.machinery.EXTENSION_SUFFIXES if os.path.isfile(base + s)]
    return base + ".py", built


def _in_checkout(root: str) -> bool:
    """A source checkout (``<repo>/src/monolake`` beside a pyproject.toml): only there can a
    compiled file go stale. An installed wheel's file times say nothing (install order)."""
    src = os.path.dirname(root)
    return os.path.basename(src) == "src" and os.path.isfile(os.path.join(os.path.dirname(src), "pyproject.toml"))


def decide(root: str = _ROOT, env: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """(compiled, why not): computed once, at ``import monolake``, from file names and times."""
    files = {name: _files(name, root) for name in MODULES}
    built = [name for name, (_, so) in files.items() if so]
    if not built:
        return False, "not built (installed without a C compiler or mypyc, or with MONOLAKE_PURE=1 at install)"
    if env.get(PURE_ENV) == "1":
        return False, f"{PURE_ENV}=1"
    if len(built) < len(MODULES) or not _files(GROUP + "__mypyc", root)[1]:
        missing = ", ".join([name for name in MODULES if name not in built] or [f"{GROUP}__mypyc"])
        return False, f"only partly built (missing: {missing})"
    if _in_checkout(root):
        stale = [
            name
            for name, (py, so) in files.items()
            if os.path.isfile(py) and os.stat(py).st_mtime > min(os.stat(f).st_mtime for f in so)
        ]
        if stale:
            return False, (
                f"compiled files older than their source: {', '.join(stale)} (an in-place build, then an "
                "edit); rebuild them (MONOLAKE_COMPILE_INPLACE=1 python setup.py build_ext --inplace) or "
                "delete them (python setup.py clean_compiled)"
            )
    return True, ""


COMPILED, WHY_PURE = decide()


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their ``.py`` even where a compiled file sits beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for d in path or ():
            if os.path.isfile(os.path.join(d, leaf)):
                return importlib.util.spec_from_file_location(fullname, os.path.join(d, leaf))
        return None


def install() -> None:
    """Called by ``monolake/__init__``: when the compiled modules are not to be used but some
    are present, every listed module is imported from source."""
    present = not COMPILED and any(_files(name)[1] for name in MODULES)
    if present and not any(isinstance(f, _FromSource) for f in sys.meta_path):
        sys.meta_path.insert(0, _FromSource())


def active() -> list[str]:
    """The listed modules imported so far that run compiled (their ``__file__`` is not a ``.py``)."""
    out = []
    for name in MODULES:
        mod = sys.modules.get(name)
        if mod is not None and not (getattr(mod, "__file__", None) or "").endswith(".py"):
            out.append(name)
    return out


def restore_doc(cls: type) -> None:
    """Give a compiled class its docstring back, read from its ``.py`` (which ships beside it):
    mypyc keeps none. Done for the public API's classes (``monolake.Body``...), for help()."""
    if cls.__doc__ or cls.__module__ not in MODULES:
        return
    import ast

    try:
        with open(_files(cls.__module__)[0], encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError):
        return
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            doc = ast.get_docstring(node, clean=False)
            if doc:
                cls.__doc__ = doc
            return


def notice() -> tuple[str, str]:
    """(severity, message): the one start-up line about the compiled hot path."""
    if COMPILED:
        return "info", f"hot path: {len(MODULES)} modules compiled with mypyc"
    return "warning", (
        f"hot path: running as pure Python, {WHY_PURE}; the compiled build takes roughly a third less CPU "
        "per request (install the wheel, or build with a C compiler: pip install .)"
    )
