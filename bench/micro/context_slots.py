"""What a user context slot costs per request, against the alternative design.

    python bench/micro/context_slots.py [-n 1000000]

"dict": the shipped design, values in one dict made on the first ``set`` (``ctx.user``,
keyed by the slot object). "subclass": a Context subclass generated per stack with the
declared slots as ``__slots__`` (the driver would make that class instead), values read
with ``getattr``. "none" is a request that sets no slot: both designs cost nothing there.
"""

from __future__ import annotations

import argparse
import timeit

from monolake.service import Context, ContextSlot

TENANT = ContextSlot("bench_tenant", str)


def subclass_with(*names: str) -> type[Context] | None:
    try:
        cls = type("StackContext", (Context,), {"__slots__": names})
        cls("p", "s", 0.0)
        return cls
    except TypeError:  # Context compiled with mypyc: not subclassable from Python
        return None


Sub = subclass_with("bench_tenant")


def sub_get(ctx: Context, name: str = "bench_tenant") -> object:
    try:
        return getattr(ctx, name)
    except AttributeError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1_000_000)
    n = ap.parse_args().n

    def dict_none() -> None:
        c = Context("p", "s", 0.0)
        TENANT.get(c, None)

    def dict_set_get() -> None:
        c = Context("p", "s", 0.0)
        TENANT.set(c, "acme")
        TENANT.get(c)

    def sub_none() -> None:
        assert Sub is not None
        c = Sub("p", "s", 0.0)
        sub_get(c)

    def sub_set_get() -> None:
        assert Sub is not None
        c = Sub("p", "s", 0.0)
        setattr(c, "bench_tenant", "acme")  # noqa: B010 (the name comes from the slot at run time)
        sub_get(c)

    def bare() -> None:
        Context("p", "s", 0.0)

    cases = [("context only", bare), ("dict: unset get", dict_none), ("dict: set + get", dict_set_get)]
    if Sub is not None:
        cases += [("subclass: unset get", sub_none), ("subclass: set + get", sub_set_get)]
    for name, fn in cases:
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9
        print(f"{name:22s} {best:7.1f} ns")


if __name__ == "__main__":
    main()
