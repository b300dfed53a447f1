"""The public API: every name of ``monolake.__all__`` resolves and says what it is, and
``import monolake`` alone stays cheap (the names load on first use)."""

from __future__ import annotations

import subprocess
import sys

import monolake


def test_every_public_name_resolves_with_a_docstring() -> None:
    for name in monolake.__all__:
        value = getattr(monolake, name)
        assert value.__doc__, name
    assert set(monolake.__all__) <= set(dir(monolake))


def test_import_monolake_loads_neither_runtime_nor_drivers() -> None:
    code = "import monolake, sys; print(sorted(m for m in sys.modules if m.startswith('monolake.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = eval(out.stdout)
    assert not [m for m in loaded if m.startswith(("monolake.runtime", "monolake.server", "monolake.proxy"))], loaded
