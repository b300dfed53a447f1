"""The native extensions are optional at install, but CI must not lose them silently.

``.ci/run`` installs their C libraries and sets ``MONOLAKE_REQUIRE_NATIVE=1``: there the
HTTP/2 codec over libnghttp2 and the io_uring ring must both import, or the tests that
run on each codec and loop would quietly cover one side only. Likewise the hot-path
modules compiled with mypyc must run compiled (unless ``MONOLAKE_PURE=1`` asks for the
pure-Python run).
"""

from __future__ import annotations

import importlib
import os

import pytest

REQUIRED = os.environ.get("MONOLAKE_REQUIRE_NATIVE") == "1"


@pytest.mark.parametrize(
    "module",
    [
        "monolake.core.proto.http2._nghttp2",
        "monolake.core.runtime._uring",
        "monolake.core.proto.http1._h1req",
        "monolake.core.proto.http1._h1resp",
    ],
)
def test_native_extension_imports(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if REQUIRED:
            raise AssertionError(f"{module} is not built: {exc}") from exc
        pytest.skip(f"{module} is not built here ({exc}); .ci/run builds it")


def test_hot_path_runs_compiled() -> None:
    """The mypyc-compiled modules (setup.py): built, and what this process imports."""
    from monolake.core import _compiled

    if not _compiled.COMPILED:
        if REQUIRED and os.environ.get(_compiled.PURE_ENV) != "1":
            raise AssertionError(f"the hot path is not compiled: {_compiled.WHY_PURE}")
        pytest.skip(f"the hot path runs as pure Python here ({_compiled.WHY_PURE}); .ci/run compiles it")
    for name in _compiled.MODULES:
        importlib.import_module(name)
    assert _compiled.active() == list(_compiled.MODULES)
