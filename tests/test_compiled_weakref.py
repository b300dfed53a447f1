"""Weak references to instances of compiled classes that have a Python base.

mypyc gives such a class a ``__weakref__`` slot but (2.4.1) treats it as an owned
reference and never clears it at dealloc; setup.py's ``fix_weakref_slots`` patches the
generated C. Without it, an instance dying by refcount while weakly referenced left a
dangling weakref and crashed the process (here: at once, or in the next GC). Run in a
child process so that a crash fails this test instead of ending an xdist worker. Passes
pure too (CPython's own classes handle weak references).
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, weakref
from monolake.core import _compiled
from monolake.apps.config import Cluster, UpstreamSpec
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core.client import Pool

fired = []
refs, watches = [], []


def cluster():
    return UpstreamCluster.from_config("c", Cluster(endpoints=[UpstreamSpec(endpoint="127.0.0.1:1")]), Pool())


for make in (Pool, cluster):
    for _ in range(20):
        obj = make()
        refs.append(weakref.ref(obj, lambda _r: fired.append(1)))
        watches.append(weakref.WeakSet([obj]))
        del obj
gc.collect()
assert all(r() is None for r in refs) and not any(watches)
print("ok", len(fired), _compiled.COMPILED)
"""


def test_weakly_referenced_compiled_instances_die_cleanly() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["ok", "40"], out.stdout
