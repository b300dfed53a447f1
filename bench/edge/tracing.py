"""The tracing filter's CPU per request, this tree against an earlier revision, in one process.

    python bench/edge/tracing.py [--before REV] [--rounds 20] [-n 3000] [--md FILE]

``--before`` (default ``ddb26e5``, the tree before issue 16's tracing work of 2026-12-07) names a
git revision whose ``src/monolake/apps/edge/tracing.py`` is loaded beside this tree's (``git show``;
it runs on this tree's core). Rows, each the best of ``--rounds`` interleaved rounds:

- "hooks": the four phases a proxied request calls (request_filter, upstream_request_filter,
  response_filter, logging) on a parsed request with nine headers, at 100% and at 0% sampling,
  the export queue replaced by a list (the setup's cost, a Request and a Context, subtracted);
- "export encoding": the export thread's encoding of a batch of 512 such requests (a server and a
  client span each) into an OTLP ExportTraceServiceRequest, per request.

Together they are the CPU tracing adds to a request outside the proxy's own filter machinery
(``bench/edge/per_request.py --only tracing`` measures the whole path, export thread included).
Rough on a busy machine: the rows are interleaved so a load change hits them alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

import monolake.apps.edge.tracing as current
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context

REPO = Path(__file__).resolve().parents[2]
HEADERS = [
    (b"Host", b"example.com"),
    (b"User-Agent", b"bench/1.0"),
    (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
    (b"Cookie", b"a=b"),
    (b"Origin", b"https://app.example.com"),
    (b"X-Forwarded-For", b"127.0.0.1"),
    (b"X-Forwarded-Proto", b"http"),
    (b"X-Forwarded-Host", b"example.com"),
]


def load(rev: str) -> ModuleType:
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:src/monolake/apps/edge/tracing.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader("monolake.apps.edge._tracing_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "monolake.apps.edge"
    sys.modules[spec.name] = module
    exec(compile(src, f"{rev}:tracing.py", "exec"), module.__dict__)
    return module


class Queue:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def add(self, record: Any) -> None:
        self.records.append(record)


class Route:
    name = 2


def request() -> tuple[Request, Context]:
    req = Request(
        b"GET", b"/api/v1/items?id=7", Headers(list(HEADERS), lower=[n.lower() for n, _ in HEADERS]), host=b"x"
    )
    ctx = Context("127.0.0.1", "web", 0.0)
    req.ctx = ctx
    ctx.route = Route()
    return req, ctx


def hooks(module: ModuleType, ratio: float) -> tuple[Any, Queue]:
    t = module.Tracing(module.TracingArgs(endpoint="http://127.0.0.1:1/v1/traces", sample_ratio=ratio))
    queue = t._exporter = Queue()
    resp = Response(200, Headers([(b"Content-Length", b"128")]))
    rf, uf, sf, lf = t.request_filter, t.upstream_request_filter, t.response_filter, t.logging

    def one() -> None:
        req, ctx = request()
        rf(req, ctx)
        uf(req, ctx)
        ctx.endpoint = "127.0.0.1:9001"
        sf(resp, ctx)
        lf(req, resp, ctx)

    return one, queue


def encoder(module: ModuleType, records: list[Any]) -> Any:
    e = module._Exporter.__new__(module._Exporter)
    e.args = module.TracingArgs()
    return lambda: e._encode(records)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="ddb26e5")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--md")
    args = ap.parse_args()
    before = load(args.before)
    cases: dict[str, tuple[Any, int]] = {"setup": (request, 1)}  # (call, requests per call)
    for label, module in ((args.before, before), ("this tree", current)):
        for ratio in (1.0, 0.0):
            one, queue = hooks(module, ratio)
            cases[f"{label}: hooks, {ratio:.0%} sampled"] = (one, 1)
        one, queue = hooks(module, 1.0)
        for _ in range(512):
            one()
        cases[f"{label}: export encoding"] = (encoder(module, queue.records[:512]), 512)
    load0 = os.getloadavg()[0]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (f, per) in cases.items():
            n = max(1, args.n // per)
            us = timeit.timeit(f, number=n) / (n * per) * 1e6
            best[name] = min(best.get(name, us), us)
    setup = best.pop("setup")
    lines = [
        f"tracing, µs per request (best of {args.rounds} interleaved rounds); load average {load0:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| case | µs |",
        "|---|---:|",
    ]
    for name, us in best.items():
        lines.append(f"| {name} | {us - setup if 'hooks' in name else us:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")


if __name__ == "__main__":
    main()
