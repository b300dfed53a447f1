"""HTTP→Thrift gateway: what converting a ~1 KB JSON request to Thrift binary bytes costs,
the object path against the generated binary fast path, interleaved in one process.

    python bench/micro/gateway_convert.py [--rounds 21] [--number 400] [--write] [--profile]

Variants (each checked to produce the same bytes before timing):

- ``struct``: the ~1 KB document of ``test_bench_thrift.REQUEST`` (every EchoRequest field
  a body key) → the EchoRequest struct's binary encoding.
  old = msgspec decode to dicts + ``Compiler.struct_from_json`` (thriftpy2 objects) +
  thriftpy2's Cython TBinaryProtocol; new = ``BinaryCompiler.struct_converter`` (typed
  msgspec decode + generated writer; the object path only when it refuses).
- ``method``: what the gateway does per request for ``POST /echo/1234567890123?lang=en``
  with an ``X-Trace`` header, a ``session`` cookie and a ~1 KB JSON body → the message
  payload (message header + ``Echo_args``) that is then framed and sent.
  old = decode + ``GatewayMethod.build`` + thriftpy2 serialise + ``message_begin``;
  new = the handler's cached message header + ``GatewayMethod.encode_binary``.
  Not included in either: reading the body, routing, framing (TTHeader/framed), the pool.
- ``naive``: the reflective walk of ``test_bench_thrift.naive`` + thriftpy2 serialise, the
  ~98 µs starting point of the issue.

Every round times every variant (order rotating), ``--number`` calls per sample, best of
3 samples per round, wall clock (perf_counter) and this process's CPU time
(process_time, which preemption by other processes does not inflate); the figures are
medians over rounds. ``--write`` saves bench/results/gateway-<UTC>.md and .json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from thriftpy2.utils import serialize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bench_thrift import REQUEST, echo, naive

from monolake.apps.proxy.gateway import Compiler, load_methods
from monolake.apps.proxy.gateway._binary import BINARY, BinaryCompiler
from monolake.core.proto.http1 import Headers, Request
from monolake.core.proto.thrift import MessageType, ThriftProtocol, message_begin

REPO = Path(__file__).resolve().parents[2]
IDL = REPO / "examples" / "gateway" / "echo.thrift"

BODY = msgspec.json.encode(
    {
        "text": "lorem ipsum dolor sit amet " * 9,
        "tags": [{"name": f"tag-{i}", "weight": i} for i in range(20)],
        "counts": {f"k{i}": i for i in range(12)},
        "mood": "HAPPY",
        "status": 200,
    }
)
HTTP_REQUEST = Request(
    b"POST",
    b"/echo/1234567890123?lang=en",
    Headers(
        [
            (b"Host", b"api.example.com"),
            (b"Content-Type", b"application/json"),
            (b"X-Trace", b"0af7651916cd43dd"),
            (b"Cookie", b"session=s-9"),
        ]
    ),
)
PARAMS = {"id": "1234567890123"}


def variants() -> dict[str, Callable[[], bytes]]:
    decode = msgspec.json.Decoder().decode
    compiler = Compiler()
    conv = compiler.struct_from_json(echo.EchoRequest)
    fast_struct = BinaryCompiler(compiler).struct_converter(echo.EchoRequest)
    m = next(m for m in load_methods(str(IDL), "EchoService", "bench") if m.name == "Echo")
    assert m.fast is not None
    head = message_begin("Echo", MessageType.CALL, 0, ThriftProtocol.BINARY)

    def struct_old() -> bytes:
        return serialize(conv(decode(REQUEST), "body"), BINARY)

    def struct_new() -> bytes:
        return fast_struct(REQUEST)

    def method_old() -> bytes:
        body = decode(BODY)
        args = m.build(PARAMS, HTTP_REQUEST, body, BODY)
        return message_begin(m.name, MessageType.CALL, 0, ThriftProtocol.BINARY) + serialize(args, BINARY)

    def method_new() -> bytes:
        return head + m.encode_binary(PARAMS, HTTP_REQUEST, BODY)

    def naive_old() -> bytes:
        return serialize(naive(echo.EchoRequest, decode(REQUEST)), BINARY)

    assert struct_old() == struct_new() == naive_old()
    assert method_old() == method_new()
    assert m.fast(PARAMS, HTTP_REQUEST, BODY) == method_new()[len(head) :]  # the fast path, not its fallback
    return {
        "struct old": struct_old,
        "struct new": struct_new,
        "method old": method_old,
        "method new": method_new,
        "naive": naive_old,
    }


def components() -> dict[str, Callable[[], Any]]:
    """Parts of the new path, for the profile table."""
    m = next(m for m in load_methods(str(IDL), "EchoService", "bench") if m.name == "Echo")
    assert m.fast is not None
    typed = m.fast.__globals__["_dec0"]
    untyped = msgspec.json.Decoder().decode
    from monolake.apps.proxy.gateway._gateway import _cookies, _query_lists

    return {
        "typed msgspec decode of the body": lambda: typed(BODY),
        "untyped msgspec decode (old path)": lambda: untyped(BODY),
        "query parse": lambda: _query_lists(HTTP_REQUEST),
        "cookie parse": lambda: _cookies(HTTP_REQUEST.headers),
    }


def sample(fn: Callable[[], Any], number: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call, best of 3."""
    wall = min(timeit.repeat(fn, number=number, repeat=3, timer=time.perf_counter)) / number * 1e6
    cpu = min(timeit.repeat(fn, number=number, repeat=3, timer=time.process_time)) / number * 1e6
    return wall, cpu


def run(rounds: int, number: int) -> dict[str, Any]:
    fns = variants()
    parts = components()
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in [*names, *parts]}
    cpu: dict[str, list[float]] = {n: [] for n in [*names, *parts]}
    load_start = os.getloadavg()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            w, c = sample(fns[name], number)
            wall[name].append(w)
            cpu[name].append(c)
        for name, fn in parts.items():
            w, c = sample(fn, number)
            wall[name].append(w)
            cpu[name].append(c)
    return {
        "rounds": rounds,
        "number": number,
        "request_bytes": {"struct": len(REQUEST), "method body": len(BODY)},
        "wall_median_us": {n: statistics.median(v) for n, v in wall.items()},
        "wall_min_us": {n: min(v) for n, v in wall.items()},
        "cpu_median_us": {n: statistics.median(v) for n, v in cpu.items()},
        "wall_us": wall,
        "cpu_us": cpu,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "src")),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def report(res: dict[str, Any]) -> str:
    w, c, lo = res["wall_median_us"], res["cpu_median_us"], res["wall_min_us"]
    rows = [
        ("struct", "JSON bytes → EchoRequest binary bytes", res["request_bytes"]["struct"]),
        ("method", "HTTP request → Echo message payload", res["request_bytes"]["method body"]),
    ]
    lines = [
        "| conversion | JSON bytes | old µs (wall / CPU) | new µs (wall / CPU) | new best round | speed-up |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for key, label, size in rows:
        old, new = f"{key} old", f"{key} new"
        lines.append(
            f"| {label} | {size} | {w[old]:.1f} / {c[old]:.1f} | **{w[new]:.1f}** / {c[new]:.1f} "
            f"| {lo[new]:.1f} | {w[old] / w[new]:.1f}x |"
        )
    lines.append(
        f"| naive reflective walk + thriftpy2 (struct) | {res['request_bytes']['struct']} "
        f"| {w['naive']:.1f} / {c['naive']:.1f} | | | |"
    )
    lines += ["", "| part | µs (wall / CPU) |", "|---|--:|"]
    for name in (
        "typed msgspec decode of the body",
        "untyped msgspec decode (old path)",
        "query parse",
        "cookie parse",
    ):
        lines.append(f"| {name} | {w[name]:.1f} / {c[name]:.1f} |")
    la = res["load_average"]
    lines += [
        "",
        f"Medians of {res['rounds']} interleaved rounds ({res['number']} calls per sample, best of 3 samples "
        f"per round); Python {res['python']}, {res['machine']}; commit {res['commit']}"
        f"{' + uncommitted src/ edits' if res['dirty'] else ''}; load average "
        f"{la['start'][0]:.2f} at start, {la['end'][0]:.2f} at end.",
    ]
    return "\n".join(lines)


def profile(number: int) -> None:
    fns = variants()
    for name in ("method old", "method new"):
        fn = fns[name]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(number):
            fn()
        prof.disable()
        print(f"== {name}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--number", type=int, default=400)
    ap.add_argument("--write", action="store_true", help="save bench/results/gateway-<UTC>.md and .json")
    ap.add_argument("--profile", action="store_true", help="cProfile the method paths instead")
    args = ap.parse_args()
    if args.profile:
        profile(args.number * 10)
        return
    res = run(args.rounds, args.number)
    text = report(res)
    print(text)
    if args.write:
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        out = REPO / "bench" / "results" / f"gateway-{stamp}"
        title = f"# Gateway JSON → Thrift binary conversion, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        cmd = f"`python bench/micro/gateway_convert.py --rounds {args.rounds} --number {args.number} --write`\n\n"
        out.with_suffix(".md").write_text(title + cmd + text + "\n")
        out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {out}.md, .json")


if __name__ == "__main__":
    main()
