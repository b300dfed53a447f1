"""Objects allocated per proxied request, counted by the C allocator (perf uprobes).

    python bench/micro/allocs.py [TREE...] [--script proxy_path.py] [-n 2000] -- [script args]

Counts the calls of libpython's ``_PyObject_GC_Link`` (every new GC-tracked object: the
ones that cost a ``Py_DECREF`` chain and GC work) and ``PyObject_Malloc`` (small
allocations, tracked or not; free-listed objects such as floats are not in it) while
``bench/micro/SCRIPT`` runs with ``-n N`` and with ``-n 2N`` requests (``--repeat 1``),
per tree (``PYTHONPATH=TREE/src``; default: this checkout), and prints the difference
divided by N: the start-up and warm-up cancel out. Exact, not sampled, so it is not
disturbed by a busy machine; the probes make each call slow (~1 ms a request), keep N small.

Needs ``perf`` with uprobes (root, or perf_event_paranoid <= 1 and tracefs access) and a
Python linked against ``libpython*.so``. The probes are added once (``perf probe -x``) and
left in place (``perf probe -d 'probe_libpython*:*'`` removes them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
FUNCS = ("_PyObject_GC_Link", "PyObject_Malloc")


def libpython() -> str:
    lib = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or "")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not os.path.isfile(lib):
        sys.exit("no libpython*.so: this Python is linked statically; uprobes cannot name its functions")
    return lib


def ensure_probes(lib: str) -> list[str]:
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    events = []
    for fn in FUNCS:
        if f":{fn} " not in listed:
            subprocess.run(["perf", "probe", "-q", "-x", lib, "--add", fn], check=True)
        events.append(f"probe_{Path(lib).name.split('.')[0]}:{fn}")
    return events


def count(tree: Path, script: str, n: int, events: list[str], extra: list[str]) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = ["perf", "stat", "-x,", "-e", ",".join(events), sys.executable, str(HERE / script)]
    cmd += ["-n", str(n), "--repeat", "1", *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    got = {}
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in events:
            got[parts[2]] = int(parts[0])
    return got


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="*", type=Path, default=[HERE.parent.parent])
    ap.add_argument("--script", default="proxy_path.py")
    ap.add_argument("-n", type=int, default=2000)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    extra = argv[cut + 1 :]
    events = ensure_probes(libpython())
    for tree in args.trees:
        one = count(tree, args.script, args.n, events, extra)
        two = count(tree, args.script, 2 * args.n, events, extra)
        per = {e.split(":")[1]: (two[e] - one[e]) / args.n for e in events}
        pure = " (MONOLAKE_PURE=1)" if os.environ.get("MONOLAKE_PURE") else ""
        print(
            f"{tree}{pure}: {per['_PyObject_GC_Link']:.1f} GC-tracked objects, "
            f"{per['PyObject_Malloc']:.1f} PyObject_Malloc calls per request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
