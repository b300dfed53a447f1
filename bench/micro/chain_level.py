"""What one coroutine level of a service chain costs, compiled or not: ``await CatchPanic(inner)(req)``
against ``await inner(req)``, without a suspension (a level that waits costs one more send on
the way back up).

    python bench/micro/chain_level.py [-n 500000]

Prints the best of three per case and the difference (ns per call). ``CatchPanic`` is compiled
when the tree is built in place (``MONOLAKE_PURE=1`` for the source).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from monolake.core.service.layers import CatchPanic

RESP = object()


async def inner(req: int) -> object:
    return RESP


def on_panic(req: int, exc: BaseException) -> object:
    return None


async def run(n: int) -> dict[str, float]:
    cases = {"inner": inner, "CatchPanic(inner)": CatchPanic(inner, on_panic)}
    best: dict[str, float] = {}
    for _ in range(3):
        for name, svc in cases.items():
            t0 = time.process_time()
            for _ in range(n):
                await svc(1)
            best[name] = min(best.get(name, 1e18), (time.process_time() - t0) * 1e9 / n)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500000)
    args = ap.parse_args()
    best = asyncio.run(run(args.n))
    print(", ".join(f"{k}: {v:.0f} ns" for k, v in best.items()), end="")
    print(f"; one level: {best['CatchPanic(inner)'] - best['inner']:.0f} ns per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
