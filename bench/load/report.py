"""Medians, ratios to nginx, the Markdown table and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

FIXED_KEYS = ("user_us", "sys_us", "total_us", "p50_us", "p90_us", "p99_us", "p999_us", "achieved_rps")
MAX_KEYS = ("max_rps", "user_us", "sys_us")
RATIO_KEYS = ("user_us", "sys_us", "total_us", "p50_us", "p99_us")
BASELINE = "nginx"


def _median(vals: list[float]) -> float:
    return float(statistics.median(vals)) if vals else float("nan")


def _cores(runs: list[dict[str, Any]], key: str = "cores_busy_pct") -> dict[str, float]:
    cores = sorted({c for r in runs for c in r[key]})
    return {c: _median([r[key][c] for r in runs if c in r[key]]) for c in cores}


def summarize(runs: list[dict[str, Any]], sizes: list[str], proxies: list[str]) -> dict[str, Any]:
    """Per size and proxy: medians over rounds, and the ratio of each median to nginx's in this run."""
    medians: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    for size in sizes:
        medians[size] = {}
        for proxy in proxies:
            sel = [r for r in runs if r["size"] == size and r["proxy"] == proxy and "fixed" in r]
            if not sel:
                continue
            fixed = [r["fixed"] for r in sel]
            m: dict[str, Any] = {k: _median([f[k] for f in fixed]) for k in FIXED_KEYS}
            m["offered_rps"] = fixed[0]["offered_rps"]
            m["rounds"] = len(fixed)
            m["rounds_failed"] = sum(1 for r in runs if r["size"] == size and r["proxy"] == proxy and "error" in r)
            m["rounds_kept_up"] = sum(1 for f in fixed if f["kept_up"])
            m["errors"] = sum(f["failed"] + f["errored"] + f["non_2xx"] for f in fixed)
            m["fixed_cores_busy_pct"] = _cores(fixed)
            m["fixed_others_busy_pct"] = _cores(fixed, "others_busy_pct")
            maxes = [r["max"] for r in sel if r.get("max")]
            if maxes:
                m["max_rps"] = _median([x["max_rps"] for x in maxes])
                m["max_user_us"] = _median([x["user_us"] for x in maxes])
                m["max_sys_us"] = _median([x["sys_us"] for x in maxes])
                m["max_errors"] = sum(x["socket_errors"] + x["non_2xx"] for x in maxes)
                m["max_cores_busy_pct"] = _cores(maxes)
                m["max_others_busy_pct_total"] = _median([x.get("others_busy_pct_total", float("nan")) for x in maxes])
            medians[size][proxy] = m
        base = medians[size].get(BASELINE)
        if base:
            ratios[size] = {}
            for proxy, m in medians[size].items():
                keys = [*RATIO_KEYS, "max_rps"] if "max_rps" in m and "max_rps" in base else list(RATIO_KEYS)
                ratios[size][proxy] = {k: round(m[k] / base[k], 3) if base[k] else None for k in keys}
    return {"medians": medians, "ratios_to_nginx": ratios}


def summarize_scaling(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per setup, keyed ``"<workers>"`` for monolake (as before nginx was added) and
    ``"nginx-<workers>"``; with ratios to monolake's 1 worker and to nginx's 2 workers."""
    out: dict[str, Any] = {}
    setups = sorted({(r.get("proxy", "monolake"), r["workers"]) for r in runs}, key=lambda s: (s[0] != "monolake", s))
    for proxy, workers in setups:
        sel = [r["max"] for r in runs if (r.get("proxy", "monolake"), r["workers"]) == (proxy, workers) and "max" in r]
        if not sel:
            continue
        out[str(workers) if proxy == "monolake" else f"{proxy}-{workers}"] = {
            "proxy": proxy,
            "workers": workers,
            "max_rps": _median([x["max_rps"] for x in sel]),
            "user_us": _median([x["user_us"] for x in sel]),
            "sys_us": _median([x["sys_us"] for x in sel]),
            "errors": sum(x["socket_errors"] + x["non_2xx"] for x in sel),
            "cores_busy_pct": _cores(sel),
            "others_busy_pct_total": _median([x.get("others_busy_pct_total", float("nan")) for x in sel]),
            "rounds": len(sel),
        }
    one = out.get("1", {}).get("max_rps")
    nginx2 = out.get("nginx-2", {}).get("max_rps")
    for m in out.values():
        m["x_1_worker"] = round(m["max_rps"] / one, 3) if one and m["proxy"] == "monolake" else None
        m["x_nginx_2_workers"] = round(m["max_rps"] / nginx2, 3) if nginx2 else None
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _num(v: float | None) -> str:
    return "?" if v is None or v != v else f"{v:.0f}"  # v != v: NaN, from runs recorded before the field


def _cores_str(c: dict[str, float]) -> str:
    return "/".join(f"{v:.0f}" for _, v in sorted(c.items()))


def markdown(doc: dict[str, Any]) -> str:
    a, mi = doc["args"], doc["machine"]
    rate = a["conns"] * max(1, a["rate"] // a["conns"])
    wrk = "" if a["no_wrk"] else f"max req/s from `wrk -t1 -c{a['conns']} -d{a['wrk_seconds']}s` pinned to core 0. "
    dirty = " (src modified)" if mi["monolake_src_dirty"] else ""
    if mi.get("monolake_source", "working tree") != "working tree":
        dirty += f" ({mi['monolake_source']})"
    if doc.get("monolake_src_changed_during_run"):
        dirty += " (src changed during the run: later proxies may run newer code)"
    lines = [
        f"# Load benchmark, {doc['started_utc']}",
        "",
        f"`{doc['command']}` — {doc['duration_s'] / 60:.1f} min; {mi['cpu_model']}, {mi['cores']} cores, "
        f"Linux {mi['kernel']}; Python {mi['python']}, uvloop {mi['uvloop']}, httptools {mi['httptools']}; "
        f"monolake {mi['monolake']} @ {mi['monolake_commit']}{dirty}; "
        f"{mi['nginx']}; {mi['haproxy'].split(' - ')[0]}; {mi['h2load']}; {mi['wrk'].split(' Copyright')[0]}.",
        f"Load average (1/5/15 min) at start {doc['loadavg_start']}, at end {doc['loadavg_end']} "
        "(other work shares this machine; the numbers are noisy).",
        "",
        f"Origin nginx (1 worker) and load generator on core 0, proxy (1 worker) on core 1. Fixed offered load "
        f"`h2load --h1 -c {a['conns']} --rps={max(1, a['rate'] // a['conns'])}` = {rate} req/s for "
        f"{a['seconds']} s after 1 s warm-up; CPU µs per request of the proxy's processes (user / sys, "
        f"/proc/PID/stat, over the main phase); latency p50 / p99 from h2load's log; {wrk}"
        f"Medians of {a['rounds']} interleaved round(s); vs nginx = ratio to nginx's median in the same run. "
        f"A fixed-load run during which other work took more than {a['noisy_pct']:.0f}% of a core was repeated "
        f"once and the quieter one kept ({doc.get('noise_repeats', 0)} repeats). "
        "⚠ = did not complete the offered rate (achieved rate shown) in some round; "
        "at one request in flight per connection, the offered rate needs a mean latency below "
        f"{1e6 * a['conns'] / rate:.0f} µs. Cores busy: whole-machine %, in brackets the part not spent by "
        "the proxy (core 1) or the origin and h2load (core 0), i.e. other work sharing the machine.",
        "",
        "| body | proxy | user µs | sys µs | total µs | CPU vs nginx | p50 µs | p99 µs | p99 vs nginx "
        "| achieved req/s | max req/s | max vs nginx | cores 0/1 busy % (others') |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for size, per in doc["medians"].items():
        for proxy, m in per.items():
            r = doc["ratios_to_nginx"].get(size, {}).get(proxy, {})
            flag = "" if m["rounds_kept_up"] == m["rounds"] else " ⚠"
            err = f" ({m['errors']} errors)" if m["errors"] else ""
            err += f" ({m['rounds_failed']} rounds failed)" if m["rounds_failed"] else ""
            mx = f"{m['max_rps']:.0f}" if "max_rps" in m else "-"
            lines.append(
                f"| {size} | {proxy} | {m['user_us']:.1f} | {m['sys_us']:.1f} | {m['total_us']:.1f} "
                f"| {_x(r.get('total_us'))} | {m['p50_us']:.0f} | {m['p99_us']:.0f} | {_x(r.get('p99_us'))} "
                f"| {m['achieved_rps']:.0f}{flag}{err} | {mx} | {_x(r.get('max_rps'))} "
                f"| {_cores_str(m['fixed_cores_busy_pct'])} ({_cores_str(m['fixed_others_busy_pct'])}) |"
            )
    sc = doc.get("scaling")
    if sc and sc["medians"]:
        lines += [
            "",
            f"## Scaling: monolake (uvloop, full features) 1 and 2 workers vs nginx 2 workers, {sc['size']} body",
            "",
            f"Workers unpinned (`cpu_affinity = false`, no taskset); origin and `wrk -t1 -c{a['conns']} "
            f"-d{a['wrk_seconds']}s` pinned to core 0, so the second worker competes with them. "
            f"Medians of {sc['medians'][next(iter(sc['medians']))]['rounds']} interleaved round(s); a run during "
            f"which other work took more than {a['noisy_pct']:.0f}% of a core was repeated once and the quieter "
            f"one kept ({sc.get('noise_repeats', 0)} repeats). Others' work: both cores' busy time minus the "
            "proxy, the origin and wrk.",
            "",
            "| proxy | workers | max req/s | x 1 worker | x nginx 2 workers | proxy CPU µs/req (user+sys) "
            "| cores 0/1 busy % | others' work, % of a core |",
            "|--|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for w, m in sc["medians"].items():
            lines.append(
                f"| {m.get('proxy', 'monolake')} | {m.get('workers', w)} | {m['max_rps']:.0f} "
                f"| {_x(m['x_1_worker'])} | {_x(m.get('x_nginx_2_workers'))} | {m['user_us'] + m['sys_us']:.1f} "
                f"| {_cores_str(m['cores_busy_pct'])} | {_num(m.get('others_busy_pct_total'))} |"
            )
    lines.append("")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> bool:
    """CPU µs/request (user+sys stacked) and p99 per proxy per body size; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.patches
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("bench: matplotlib missing, no plot")
        return False
    medians = doc["medians"]
    sizes = list(medians)
    proxies: list[str] = []
    for per in medians.values():
        proxies += [p for p in per if p not in proxies]
    colors = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b"]
    width = 0.8 / max(1, len(proxies))
    sc = (doc.get("scaling") or {}).get("medians") or {}
    rows = 3 if sc else 2
    fig = plt.figure(figsize=(10, 4 * rows))
    ax1 = fig.add_subplot(rows, 1, 1)
    ax2 = fig.add_subplot(rows, 1, 2, sharex=ax1)
    handles = []
    for i, proxy in enumerate(proxies):
        xs, user, sys_, p99, hatch = [], [], [], [], []
        for j, size in enumerate(sizes):
            m = medians[size].get(proxy)
            if not m:
                continue
            xs.append(j + (i - (len(proxies) - 1) / 2) * width)
            user.append(m["user_us"])
            sys_.append(m["sys_us"])
            p99.append(m["p99_us"] / 1000)
            hatch.append("//" if m["rounds_kept_up"] < m["rounds"] else "")
        c = colors[i % len(colors)]
        ax1.bar(xs, user, width, color=c, label=f"{proxy} user", edgecolor="black", linewidth=0.4)
        ax1.bar(
            xs, sys_, width, bottom=user, color=c, alpha=0.4, label=f"{proxy} sys", edgecolor="black", linewidth=0.4
        )
        for x, u, sy in zip(xs, user, sys_, strict=True):
            ax1.text(x, u + sy, f"{u + sy:.0f}", ha="center", va="bottom", fontsize=7)
        bars = ax2.bar(xs, p99, width, color=c, edgecolor="black", linewidth=0.4)
        handles.append(matplotlib.patches.Patch(facecolor=c, edgecolor="black", linewidth=0.4, label=proxy))
        for b, h in zip(bars, hatch, strict=True):
            b.set_hatch(h)
    a = doc["args"]
    ax1.set_ylabel("proxy CPU µs / request\n(solid user, light sys)")
    ax1.set_title(
        f"1 worker on its own core, {a['conns']} conns x {max(1, a['rate'] // a['conns'])} req/s "
        f"(medians of {a['rounds']}), {doc['started_utc']}"
    )
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(axis="y", alpha=0.3)
    ax2.set_ylabel("p99 latency, ms (log)\nhatched: offered rate not kept up")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xticks(range(len(sizes)))
    ax2.set_xticklabels([f"{s} body" for s in sizes])
    ax2.legend(handles=handles, fontsize=7)
    ax2.grid(axis="y", alpha=0.3)
    if sc:  # max req/s, unpinned: monolake 1 and 2 workers vs nginx 2 workers
        ax3 = fig.add_subplot(rows, 1, 3)
        labels = [f"{m.get('proxy', 'monolake')}\n{m.get('workers', w)} worker(s)" for w, m in sc.items()]
        values = [m["max_rps"] for m in sc.values()]
        bars = ax3.bar(
            range(len(values)), values, 0.6, color=["#1f77b4" if "monolake" in x else "#d62728" for x in labels]
        )
        for b, m in zip(bars, sc.values(), strict=True):
            x = m.get("x_nginx_2_workers")
            note = f"{m['max_rps']:.0f}" + (f"\n{x:.2f}x nginx 2w" if x else "")
            ax3.text(b.get_x() + b.get_width() / 2, b.get_height(), note, ha="center", va="bottom", fontsize=7)
        ax3.set_xticks(range(len(labels)))
        ax3.set_xticklabels(labels, fontsize=8)
        ax3.set_ylabel("max req/s (wrk), unpinned")
        ax3.set_title(f"Scaling on 2 cores, {doc['scaling']['size']} body (wrk and origin on core 0)", fontsize=9)
        ax3.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
