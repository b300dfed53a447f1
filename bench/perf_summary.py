"""Top-N self and inclusive shares from a ``perf record -g`` profile, as text.

    perf script -i perf.data -F comm,tid,ip,sym | python -m bench.perf_summary [--top 40]
        [--under SYMBOL] [--focus SYMBOL ...] [--comm python]

A compiled build shows its functions by name (mypyc: ``CPyDef_<module>___<Class>___<method>``;
the C scans ``scan``/``scan_head``; interpreted frames are ``_PyEval_EvalFrameDefault``).
``--user`` keeps only the samples taken in user space (leaf frame not in the kernel): the shares
are then of the user time, where the per-request Python work is. ``--under`` keeps only the
samples whose stack holds that symbol (e.g. the event loop's
``__pyx_f_6uvloop_4loop_4Loop__on_idle`` leaves imports and start-up out). ``--focus`` prints
each named function's callees with their inclusive shares of all kept samples. Inclusive counts
a symbol once per sample however often it recurs on the stack.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Iterable, Iterator


def stacks(lines: Iterable[str], comm: str | None, user: bool = False) -> Iterator[list[str]]:
    """Each sample's frames, leaf first (symbols only, offsets and addresses dropped). With
    ``user``, samples whose leaf is a kernel address are left out."""
    frames: list[str] = []
    keep = True
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames and keep:
                yield frames
            frames = []
            keep = True
            continue
        if not line.startswith(("\t", " ")):
            keep = comm is None or line.split(None, 1)[0] == comm
            frames = []
            continue
        parts = line.strip().split(None, 1)
        if user and not frames and parts[0].startswith("ffffffff"):
            keep = False
        sym = parts[1] if len(parts) > 1 else parts[0]
        sym = sym.replace(" (inlined)", "").split("+0x")[0]
        frames.append(sym)
    if frames and keep:
        yield frames


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--under", default=None)
    ap.add_argument("--focus", nargs="*", default=[])
    ap.add_argument("--comm", default=None)
    ap.add_argument("--user", action="store_true", help="user-space samples only")
    args = ap.parse_args()
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    callees: dict[str, collections.Counter[str]] = {f: collections.Counter() for f in args.focus}
    total = 0
    for frames in stacks(sys.stdin, args.comm, args.user):
        if args.under is not None and args.under not in frames:
            continue
        total += 1
        self_n[frames[0]] += 1
        for f in set(frames):
            incl[f] += 1
        for f in args.focus:
            if f in frames:
                i = frames.index(f)  # outermost-but-one occurrence is enough for a summary
                callees[f][frames[i - 1] if i > 0 else "(self)"] += 1
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples" + (" in user space" if args.user else "") + (f" under {args.under}" if args.under else ""))
    print(f"\n## top {args.top} by self time\n")
    for sym, n in self_n.most_common(args.top):
        print(f"{100 * n / total:6.2f}%  {sym}")
    print(f"\n## top {args.top} by inclusive time\n")
    for sym, n in incl.most_common(args.top):
        print(f"{100 * n / total:6.2f}%  {sym}")
    for f in args.focus:
        print(f"\n## {f}: {100 * incl[f] / total:.2f}% inclusive; its callees\n")
        for sym, n in callees[f].most_common(25):
            print(f"{100 * n / total:6.2f}%  {sym}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
