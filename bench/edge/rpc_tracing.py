"""The RPC tracing layers' CPU per call (``monolake.apps.rpc.tracing``), in one process.

    python -m bench.edge.rpc_tracing [--rounds 20] [-n 20000] [--md FILE]

Each row drives one layer around a service that answers at once (no I/O, no protocol), at 100%
and at 0% sampling, the export queue replaced by a list, and subtracts the same call without the
layer: what a traced call adds on its loop's thread (the export thread's encoding of the spans is
``bench/edge/tracing.py``'s "export encoding"). Rows: a gRPC server call (its ``on_call`` hook
included), a gRPC client attempt, a Thrift client attempt; the Thrift server layer is ``RpcTracing``.
Rough on a busy machine: the rows are interleaved so a load change hits them alike.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from monolake.apps.rpc.tracing import GrpcClientTracing, GrpcServerTracing, ThriftClientTracing
from monolake.core.address import Endpoint
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context


class Queue:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def add(self, record: Any) -> None:
        self.records.append(record)
        if len(self.records) > 4096:
            self.records.clear()


class FakeGrpcService:
    """Stands in for a GrpcService: answers at once and calls ``on_call`` as the real one does."""

    def __init__(self) -> None:
        self.on_call: Any = None
        self.resp = Response(200, Headers([(b"content-type", b"application/grpc")]), b"")

    async def __call__(self, req: Request) -> Response:
        cb = self.on_call
        if cb is not None:
            cb("/pkg.Svc/Method", 0, 0.0)
        return self.resp


class Method:
    service = "pkg.Svc"
    name = "Method"


class Call:
    """What the client layers read and set (GrpcCall's and ClientCall's fields they touch)."""

    def __init__(self) -> None:
        self.method = Method()
        self.metadata: Any = ()
        self.transient: Any = None
        self.endpoint = Endpoint(host="127.0.0.1", port=50051)
        self.attempt = 0


async def answer(call: Any) -> int:
    return 0


def args(ratio: float) -> dict[str, Any]:
    return {"endpoint": "http://127.0.0.1:1/v1/traces", "sample_ratio": ratio}


def cases() -> dict[str, Any]:
    out: dict[str, Any] = {}
    req = Request(b"POST", b"/pkg.Svc/Method", Headers([(b"content-type", b"application/grpc")]))
    req.ctx = Context("127.0.0.1", "grpc", 0.0)
    plain = FakeGrpcService()
    out["grpc server: no layer"] = lambda: plain(req)
    out["client: no layer"] = lambda: answer(Call())
    for ratio in (1.0, 0.0):
        server = GrpcServerTracing(**args(ratio))
        server.tracing._exporter = Queue()  # type: ignore[assignment]
        svc = server.layer(FakeGrpcService())
        out[f"grpc server, {ratio:.0%} sampled"] = lambda svc=svc: svc(req)
        for name, cls in (("grpc client", GrpcClientTracing), ("thrift client", ThriftClientTracing)):
            layer = cls(**args(ratio))
            layer.tracing._exporter = Queue()  # type: ignore[assignment]
            wrapped = layer.layer(answer)
            out[f"{name}, {ratio:.0%} sampled"] = lambda w=wrapped: w(Call())
    return out


def run_coro(make: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        coro = make()
        try:
            coro.send(None)
        except StopIteration:  # the usual end: the call answered without waiting
            continue
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--md")
    a = ap.parse_args()
    all_cases = cases()
    load0 = os.getloadavg()[0]
    best: dict[str, float] = {}
    for _ in range(a.rounds):
        for name, make in all_cases.items():
            us = run_coro(make, a.n)
            best[name] = min(best.get(name, us), us)
    lines = [
        f"RPC tracing layers, µs added per call (best of {a.rounds} interleaved rounds); load average {load0:.2f} "
        f"at the start, {os.getloadavg()[0]:.2f} at the end; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| case | µs |",
        "|---|---:|",
    ]
    for name, us in best.items():
        if "no layer" in name:
            continue
        base = best["grpc server: no layer"] if name.startswith("grpc server") else best["client: no layer"]
        lines.append(f"| {name} | {us - base:.2f} |")
    text = "\n".join(lines)
    print(text)
    if a.md:
        Path(a.md).write_text(text + "\n")


if __name__ == "__main__":
    main()
