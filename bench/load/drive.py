"""The load generators: h2load at a fixed offered rate (with per-request latencies) and wrk at max rate."""

from __future__ import annotations

import re
import resource
import subprocess
import tempfile
import time

from .procs import core_busy, core_times, cpu_of

KEEP_UP = 0.97
"""A proxy keeps up when it completes at least this share of the offered rate."""


def _pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def _pct(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return 0.0
    return float(sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * q))])


def h2load_fixed(
    url: str,
    seconds: int,
    rate: int,
    conns: int,
    pids: list[int],
    origin_pids: list[int],
    cpu: int | None = 0,
    h1: bool = True,
    extra: tuple[str, ...] = (),
) -> dict[str, object]:
    """``h2load --h1`` (or HTTP/2 with ``h1=False``; ``extra`` arguments such as ``-m`` streams per
    connection, ``-d`` a request body, ``-H`` headers) at ``rate`` req/s over ``conns`` connections,
    after 1 s of warm-up.

    Latencies come from its --log-file (main phase only). The proxy's CPU per request (``pids``' user and
    sys time) is taken over a window inside the main phase and divided by the requests that completed in
    that window (log timestamps are wall-clock µs), so warm-up and connection set-up are not counted.
    Over the same window: each core's busy %, and the part of it not spent by the proxy (core 1) or by
    the origin and h2load (core 0), i.e. other work on the machine.
    """
    per_client = max(1, rate // conns)
    with tempfile.NamedTemporaryFile("r", prefix="h2load-", suffix=".log") as log:
        argv = [
            *_pin(cpu),
            "h2load",
            *(["--h1"] if h1 else []),
            *extra,
            "-t",
            "1",
            "-c",
            str(conns),
            f"--rps={per_client}",
            "-D",
            str(seconds),
            "--warm-up-time=1",
            f"--log-file={log.name}",
            url,
        ]
        launched = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(max(0.0, launched + 1.5 - time.monotonic()))
            t0, c0, (u0, s0), g0 = time.time(), core_times(), cpu_of(pids), sum(cpu_of([*origin_pids, proc.pid]))
            time.sleep(max(0.1, launched + 1.0 + seconds - 0.3 - time.monotonic()))
            t1, c1, (u1, s1), g1 = time.time(), core_times(), cpu_of(pids), sum(cpu_of([*origin_pids, proc.pid]))
            out, err = proc.communicate(timeout=seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lats: list[int] = []
        in_window = 0
        lo, hi = int(t0 * 1e6), int(t1 * 1e6)
        for line in log:
            parts = line.split()
            if len(parts) >= 3:
                lat = int(parts[2])
                lats.append(lat)
                if lo <= int(parts[0]) + lat < hi:
                    in_window += 1
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {err.strip()[-500:]} {out[-500:]}")
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (fin and req and codes):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    lats.sort()
    offered = per_client * conns
    achieved = float(fin.group(3))
    n = max(1, in_window)
    busy = core_busy(c0, c1)
    window = max(1e-6, t1 - t0)
    proxy_pct = 100.0 * ((u1 - u0) + (s1 - s0)) / window
    gen_pct = 100.0 * (g1 - g0) / window
    return {
        "offered_rps": offered,
        "achieved_rps": achieved,
        "kept_up": achieved >= KEEP_UP * offered,
        "done": int(req.group(3)),
        "succeeded": int(req.group(4)),
        "failed": int(req.group(5)),
        "errored": int(req.group(6)),
        "non_2xx": int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4)),
        "p50_us": _pct(lats, 0.50),
        "p90_us": _pct(lats, 0.90),
        "p99_us": _pct(lats, 0.99),
        "p999_us": _pct(lats, 0.999),
        "max_us": float(lats[-1]) if lats else 0.0,
        "mean_us": sum(lats) / len(lats) if lats else 0.0,
        "cpu_window_s": round(t1 - t0, 3),
        "cpu_window_requests": in_window,
        "user_us": (u1 - u0) * 1e6 / n,
        "sys_us": (s1 - s0) * 1e6 / n,
        "total_us": ((u1 - u0) + (s1 - s0)) * 1e6 / n,
        "proxy_cpu_pct": round(proxy_pct, 1),
        "origin_and_h2load_cpu_pct": round(gen_pct, 1),
        "cores_busy_pct": busy,
        "others_busy_pct": {
            "cpu0": round(max(0.0, busy.get("cpu0", 0.0) - gen_pct), 1),
            "cpu1": round(max(0.0, busy.get("cpu1", 0.0) - proxy_pct), 1),
        },
    }


def wrk_max(
    url: str, seconds: int, conns: int, pids: list[int], origin_pids: list[int], cpu: int | None = 0
) -> dict[str, object]:
    """``wrk -t1 -c<conns> -d<seconds>``: max req/s (secondary, noisy), with the proxy's CPU per request
    over the whole run, each core's busy %, and the part of both cores together (in % of one core) not
    spent by the proxy, the origin or wrk, i.e. other work on the machine."""
    argv = [*_pin(cpu), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url]
    t0, c0, (u0, s0), o0 = time.monotonic(), core_times(), cpu_of(pids), sum(cpu_of(origin_pids))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t1, c1, (u1, s1), o1 = time.monotonic(), core_times(), cpu_of(pids), sum(cpu_of(origin_pids))
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]} {out[-500:]}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and total):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    busy = core_busy(c0, c1)
    wall = max(1e-6, t1 - t0)
    ours = (u1 - u0) + (s1 - s0) + (o1 - o0) + (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "max_rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "user_us": (u1 - u0) * 1e6 / max(1, int(total.group(1))),
        "sys_us": (s1 - s0) * 1e6 / max(1, int(total.group(1))),
        "cores_busy_pct": busy,
        "others_busy_pct_total": round(max(0.0, sum(busy.values()) - 100.0 * ours / wall), 1),
    }
