"""``python -m bench.load``: the whole run, from set-up to bench/results/<UTC time>.{json,md,png}."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import configs, drive, machine, report
from .procs import Proc, Procs, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
ORIGIN_CPU, PROXY_CPU, LOAD_CPU = 0, 1, 0
MONOLAKE_ENV: dict[str, str] | None = None
"""Environment for the monolake processes; set by --rev to run an extracted revision."""
MONOLAKE_CLI = "monolake.product.cli"
"""The CLI module; a --rev from before the three tiers has it at monolake.cli."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="monolake vs nginx and HAProxy: CPU µs/request at a fixed rate, latency, max req/s.",
    )
    ap.add_argument("--setup", action="store_true", help="only check/install the tools, print machine info")
    ap.add_argument("--seconds", type=int, default=8, help="h2load main duration per run (after 1 s warm-up)")
    ap.add_argument("--wrk-seconds", type=int, default=4, help="wrk duration per run (max req/s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are quoted")
    ap.add_argument("--rate", type=int, default=20000, help="offered req/s in total (split over --conns)")
    ap.add_argument("--conns", type=int, default=50, help="connections for h2load and wrk")
    ap.add_argument("--sizes", default="128,4k,16k,160k", help="body sizes, comma-separated")
    ap.add_argument(
        "--proxies",
        default=",".join(configs.DEFAULT_PROXIES),
        help=f"comma-separated subset of {', '.join(configs.PROXIES)}",
    )
    ap.add_argument(
        "--noisy-pct",
        type=float,
        default=20.0,
        help="a fixed-load run during which other work took more than this %% of core 0 or 1 is repeated once",
    )
    ap.add_argument("--noise-retries", type=int, default=8, help="at most this many such repeats per run")
    ap.add_argument("--no-wrk", action="store_true", help="skip the max req/s figure")
    ap.add_argument("--no-scaling", action="store_true", help="skip monolake 1 vs 2 workers")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s, 1 round, 128 B, wrk 2 s")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument(
        "--rev",
        help="run monolake as committed at this git revision (git archive into the temp dir, put first on "
        "PYTHONPATH) instead of the working tree, e.g. --rev HEAD while the tree is being edited",
    )
    ap.add_argument("--report", metavar="JSON", help="only re-render the .md and .png of a saved run (and latest.*)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.sizes, args.wrk_seconds = 3, 1, "128", 2
    args.size_list = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.proxy_list = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for p in args.proxy_list:
        if p not in configs.PROXIES:
            ap.error(f"unknown proxy {p!r}; choose from {', '.join(configs.PROXIES)}")
    for s in args.size_list:
        try:
            configs.size_bytes(s)
        except ValueError:
            ap.error(f"bad size {s!r}")
    if args.seconds < 2 or args.rounds < 1 or args.conns < 1 or args.rate < args.conns:
        ap.error("need --seconds >= 2, --rounds >= 1, --rate >= --conns >= 1")
    return args


def _get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def verify(kind: configs.ProxyKind, port: int, sizes: list[str]) -> None:
    """Each body arrives whole; on the full-features config the origin saw the same forwarding work."""
    for label in sizes:
        status, body = _get(port, f"/body/{label}")
        if status != 200 or len(body) != configs.size_bytes(label):
            raise RuntimeError(f"{kind.name}: /body/{label} -> {status}, {len(body)} bytes")
    if kind.minimal:
        return
    status, body = _get(port, "/echo")
    text = body.decode()
    want = ["xbench=on", "xff=127.0.0.1", "proto=http", f"xfhost=127.0.0.1:{port}", f"host=127.0.0.1:{port}"]
    if status != 200 or not all(w in text.split() for w in want):
        raise RuntimeError(f"{kind.name}: /echo -> {status} {text!r}, want {want}")
    status, body = _get(port, "/api/echo")  # another route: prefix rewritten, no bench header
    if status != 200 or "uri=/echo" not in body.decode() or "xbench=on" in body.decode():
        raise RuntimeError(f"{kind.name}: /api/echo -> {status} {body!r}")


def monolake_env(pure: bool) -> dict[str, str]:
    """The monolake processes' environment: compiled hot path (where built) or, for a -pure
    proxy kind, MONOLAKE_PURE=1 (the same install from source: an A/B in one run)."""
    env = dict(MONOLAKE_ENV if MONOLAKE_ENV is not None else os.environ)
    env.pop("MONOLAKE_PURE", None)
    if pure:
        env["MONOLAKE_PURE"] = "1"
    return env


def start_proxy(
    procs: Procs, tmp: Path, kind: configs.ProxyKind, origin_port: int, workers: int = 1, cpu: int | None = PROXY_CPU
) -> tuple[Proc, int, str]:
    port = free_port()
    name = f"{kind.name}-w{workers}" if workers != 1 else kind.name
    if kind.kind == "monolake":
        conf = configs.monolake(tmp, name, port, origin_port, kind.loop, workers, kind.minimal)
        argv = [sys.executable, "-m", MONOLAKE_CLI, "run", "-c", str(conf)]
    elif kind.kind == "nginx":
        conf = configs.nginx_proxy(tmp, port, origin_port, workers)
        argv = ["nginx", "-c", str(conf)]
    else:
        conf = configs.haproxy(tmp, port, origin_port)
        argv = ["haproxy", "-db", "-f", str(conf)]
    proc = procs.start(name, argv, cpu, env=monolake_env(kind.pure) if kind.kind == "monolake" else None)
    wait_port(port, alive=proc.popen)
    if kind.kind == "monolake":  # the supervisor logs this once every worker is serving
        deadline = time.monotonic() + 20
        while b"monolake ready" not in proc.log.read_bytes():
            _check_alive(proc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no 'monolake ready' line in {proc.log}")
            time.sleep(0.05)
    time.sleep(0.3)
    return proc, port, conf.read_text()


def _check_alive(proc: Proc) -> None:
    if not proc.alive():
        tail = proc.log.read_text(errors="replace")[-2000:] if proc.log.exists() else ""
        raise RuntimeError(f"{proc.name} (pid {proc.pid}) exited with {proc.popen.returncode}:\n{tail}")


def estimate_s(args: argparse.Namespace) -> float:
    per = args.seconds + 1.4 + (0 if args.no_wrk else args.wrk_seconds + 0.4)
    scaling = 0 if args.no_scaling else len(SCALING) * (args.rounds * (args.wrk_seconds + 0.4) + 4) + 2
    return len(args.proxy_list) * (len(args.size_list) * args.rounds * per + 3) + scaling + 5


def _noise(fixed: dict[str, Any]) -> float:
    """The largest share of core 0 or 1 taken by work other than the proxy, origin and h2load."""
    return max(fixed["others_busy_pct"].values(), default=0.0)


def _fmt(r: dict[str, Any]) -> str:
    f = r["fixed"]
    s = (
        f"cpu {f['user_us']:5.1f}+{f['sys_us']:5.1f} µs  p50 {f['p50_us']:6.0f} p99 {f['p99_us']:7.0f} µs  "
        f"{f['achieved_rps']:7.0f}/{f['offered_rps']} req/s{'' if f['kept_up'] else ' NOT KEPT UP'}"
        f"  others' cpu0/1 {f['others_busy_pct']['cpu0']:.0f}/{f['others_busy_pct']['cpu1']:.0f}%"
    )
    if r.get("max"):
        s += f"  max {r['max']['max_rps']:7.0f} req/s (others' {r['max']['others_busy_pct_total']:.0f}%)"
    return s


def _one_run(args: argparse.Namespace, run: dict[str, Any], proc: Proc, origin: Proc, url: str, retries: int) -> int:
    """Fixed load (repeated once if other work was heavy), then max req/s; returns the repeats used."""

    def fixed() -> dict[str, Any]:
        return drive.h2load_fixed(url, args.seconds, args.rate, args.conns, proc.pids(), origin.pids(), LOAD_CPU)

    attempts = [fixed()]
    used = 0
    if _noise(attempts[0]) > args.noisy_pct and retries < args.noise_retries:
        used = 1
        print(f"bench: other work took {_noise(attempts[0]):.0f}% of a core, repeating", flush=True)
        time.sleep(1)
        attempts.append(fixed())
    attempts.sort(key=_noise)
    run["fixed"] = attempts[0]
    if len(attempts) > 1:
        run["fixed_discarded_noisier"] = attempts[1:]
    if not args.no_wrk:
        try:
            run["max"] = drive.wrk_max(url, args.wrk_seconds, args.conns, proc.pids(), origin.pids(), LOAD_CPU)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            run["max_error"] = str(exc)[-2000:]
    return used


def measure(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    origin_port = free_port()
    origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, args.size_list))], ORIGIN_CPU)
    wait_port(origin_port, alive=origin.popen)
    running: dict[str, tuple[Proc, int]] = {}
    confs: dict[str, str] = {}
    for name in args.proxy_list:
        kind = configs.PROXIES[name]
        proc, port, confs[name] = start_proxy(procs, tmp, kind, origin_port)
        verify(kind, port, args.size_list)
        running[name] = (proc, port)
        drive.wrk_max(f"http://127.0.0.1:{port}/body/{args.size_list[0]}", 1, args.conns, [], [], LOAD_CPU)
    print(f"bench: origin :{origin_port}, " + ", ".join(f"{n} :{p}" for n, (_, p) in running.items()), flush=True)

    runs: list[dict[str, Any]] = []
    retries = 0
    for rnd in range(args.rounds):
        for size in args.size_list:
            k = rnd % len(args.proxy_list)
            order = args.proxy_list[k:] + args.proxy_list[:k]  # rotate so no proxy always goes first
            for name in order:
                proc, port = running[name]
                run: dict[str, Any] = {"round": rnd + 1, "size": size, "proxy": name}
                try:
                    _check_alive(proc)
                    retries += _one_run(args, run, proc, origin, f"http://127.0.0.1:{port}/body/{size}", retries)
                    _check_alive(proc)
                except (RuntimeError, subprocess.SubprocessError) as exc:  # record it, go on with the others
                    run["error"] = str(exc)[-2000:]
                    print(f"round {rnd + 1} {size:>5} {name:17} FAILED: {exc}", flush=True)
                else:
                    print(f"round {rnd + 1} {size:>5} {name:17} {_fmt(run)}", flush=True)
                runs.append(run)
    for proc, _ in running.values():
        procs.stop(proc)
    doc: dict[str, Any] = {"configs": confs, "runs": runs, "noise_repeats": retries}
    doc.update(report.summarize(runs, args.size_list, args.proxy_list))
    if not args.no_scaling and not args.no_wrk:
        try:
            doc["scaling"] = scaling(args, procs, tmp, origin, origin_port)
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            doc["scaling_error"] = str(exc)[-2000:]
            print(f"bench: scaling FAILED: {exc}", flush=True)
    return doc


SCALING = (("monolake", 1), ("monolake", 2), ("nginx", 2))
"""What the scaling section drives: monolake (uvloop, full features) with 1 and 2 workers, and
nginx with 2 worker processes, all unpinned: 2 workers on the 2 cores against nginx's 2."""


def scaling(args: argparse.Namespace, procs: Procs, tmp: Path, origin: Proc, origin_port: int) -> dict[str, Any]:
    """Max req/s of ``SCALING`` (unpinned); wrk and the origin stay on core 0. Bounded: one wrk
    run of --wrk-seconds per setup and round (a noisy one repeated once, at most --noise-retries
    times in this section, and the quieter one kept)."""
    kinds = {"monolake": configs.PROXIES["monolake-uvloop"], "nginx": configs.PROXIES["nginx"]}
    size = args.size_list[0]
    started = {(name, w): start_proxy(procs, tmp, kinds[name], origin_port, workers=w, cpu=None) for name, w in SCALING}
    for (name, _), (_, port, _) in started.items():
        verify(kinds[name], port, [size])
        drive.wrk_max(f"http://127.0.0.1:{port}/body/{size}", 1, args.conns, [], [], LOAD_CPU)
    runs = []
    retries = 0
    for rnd in range(args.rounds):
        for name, w in SCALING if rnd % 2 == 0 else SCALING[::-1]:
            proc, port, _ = started[(name, w)]
            url = f"http://127.0.0.1:{port}/body/{size}"
            run: dict[str, Any] = {"round": rnd + 1, "proxy": name, "workers": w}
            try:
                _check_alive(proc)
                attempts = [drive.wrk_max(url, args.wrk_seconds, args.conns, proc.pids(), origin.pids(), LOAD_CPU)]
                if attempts[0]["others_busy_pct_total"] > args.noisy_pct and retries < args.noise_retries:
                    retries += 1
                    time.sleep(1)
                    attempts.append(
                        drive.wrk_max(url, args.wrk_seconds, args.conns, proc.pids(), origin.pids(), LOAD_CPU)
                    )
                attempts.sort(key=lambda a: a["others_busy_pct_total"])
                run["max"] = attempts[0]
                if len(attempts) > 1:
                    run["max_discarded_noisier"] = attempts[1:]
            except (RuntimeError, subprocess.SubprocessError) as exc:
                run["error"] = str(exc)[-2000:]
                print(f"scaling round {rnd + 1} {name} workers={w} FAILED: {exc}", flush=True)
            else:
                r = run["max"]
                print(
                    f"scaling round {rnd + 1} {name} workers={w} max {r['max_rps']:7.0f} req/s  "
                    f"others' {r['others_busy_pct_total']:.0f}% of a core",
                    flush=True,
                )
            runs.append(run)
    for proc, _, _ in started.values():
        procs.stop(proc)
    return {"size": size, "runs": runs, "noise_repeats": retries, "medians": report.summarize_scaling(runs)}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    global MONOLAKE_ENV, MONOLAKE_CLI
    args = parse_args(argv)
    if args.report:
        path = Path(args.report)
        full = json.loads(path.read_text())
        newest = max((p.stem for p in path.parent.glob("*.json") if not p.stem.endswith("-quick")), default="")
        latest = path.stem == newest and path.parent.resolve() == RESULTS.resolve()
        write_reports(full, path.parent, path.stem, latest)
        return 0
    missing = machine.setup()
    if args.setup:
        print(json.dumps(machine.info(), indent=1))
        return 1 if missing else 0
    if missing:
        print(f"bench: cannot run without {', '.join(missing)} (python -m bench.load --setup, as root)")
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    command = shlex.join(["python", "-m", "bench.load", *(sys.argv[1:] if argv is None else argv)])
    est = estimate_s(args)
    print(f"bench: {command}: about {est / 60:.1f} min", flush=True)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="monolake-bench-"))
    tmp.chmod(0o755)  # nginx workers run unprivileged and read the bodies from here
    src = None
    if args.rev:
        src = machine.extract(args.rev, tmp / "rev")
        if (src / "monolake" / "cli.py").exists():
            MONOLAKE_CLI = "monolake" + ".cli"  # (spelt so the tiers move script leaves it alone)
        MONOLAKE_ENV = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
        }
    info = machine.info(args.rev, src)
    where = subprocess.run(
        [sys.executable, "-c", "import monolake; print(monolake.__file__)"],
        env=MONOLAKE_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    info["monolake_imported_from"] = where
    info["monolake_compiled"] = subprocess.run(
        [sys.executable, "-c", "from monolake.core import _compiled as c; print(c.COMPILED, c.WHY_PURE)"],
        env=monolake_env(False),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    if src is not None and not where.startswith(str(src)):
        print(f"bench: --rev {args.rev}: monolake imports from {where}, not {src}")
        shutil.rmtree(tmp, ignore_errors=True)
        return 2
    procs = Procs(tmp)
    ok = False
    try:
        doc = measure(args, procs, tmp)
        doc["monolake_src_changed_during_run"] = machine.src_fingerprint(src) != info["monolake_src_sha1"]
        ok = True
    except KeyboardInterrupt:
        print("bench: interrupted; everything started is stopped, nothing written")
        return 130
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"bench: process logs and configs kept in {tmp}")
    full = {
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.monotonic() - t0, 1),
        "command": command,
        "args": {k: v for k, v in vars(args).items() if k not in ("size_list", "proxy_list")},
        "machine": info,
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": {"origin": ORIGIN_CPU, "proxy": PROXY_CPU, "load_generator": LOAD_CPU},
        **doc,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ") + ("-quick" if args.quick else "")
    (out / f"{stamp}.json").write_text(json.dumps(full, indent=1, ensure_ascii=False) + "\n")
    write_reports(full, out, stamp, latest=not args.quick and out.resolve() == RESULTS.resolve())
    return 0


def write_reports(full: dict[str, Any], out: Path, stamp: str, latest: bool) -> None:
    """<stamp>.md and <stamp>.png next to the JSON, and copies as latest.* for a full run."""
    md = report.markdown(full)
    print()
    print(md)
    has_plot = report.plot(full, out / f"{stamp}.png")
    (out / f"{stamp}.md").write_text(md + (f"\n![plot]({stamp}.png)\n" if has_plot else ""))
    if latest:
        (out / "latest.md").write_text(md + ("\n![plot](latest.png)\n" if has_plot else ""))
        if has_plot:
            shutil.copyfile(out / f"{stamp}.png", out / "latest.png")
    print(f"bench: wrote {out / stamp}.json/.md{'/.png' if has_plot else ''} ({full['duration_s'] / 60:.1f} min run)")
