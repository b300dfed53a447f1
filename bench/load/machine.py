"""Set-up (the tools, installed with apt-get when missing and root) and the machine description."""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

TOOLS = {"nginx": "nginx", "haproxy": "haproxy", "h2load": "nghttp2-client", "wrk": "wrk", "taskset": "util-linux"}
"""Binary -> Debian package."""

REPO = Path(__file__).resolve().parents[2]


def missing_tools(need: list[str] | None = None) -> list[str]:
    return [t for t in (need or list(TOOLS)) if shutil.which(t) is None]


def setup(need: list[str] | None = None, plot: bool = True) -> list[str]:
    """Install missing tools (apt-get, as root) and matplotlib (pip) when plotting; return what is still
    missing."""
    missing = missing_tools(need)
    if missing:
        pkgs = sorted({TOOLS[t] for t in missing})
        if os.geteuid() != 0:
            print(f"bench: missing {', '.join(missing)}; run as root: apt-get install -y {' '.join(pkgs)}")
        else:
            print(f"bench: installing {' '.join(pkgs)} with apt-get")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
            if subprocess.run(install, env=env, check=False, timeout=900).returncode != 0:
                subprocess.run(["apt-get", "update"], env=env, check=False, timeout=900)
                subprocess.run(install, env=env, check=False, timeout=900)
        missing = missing_tools(need)
    if plot:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            print("bench: installing matplotlib with pip")
            cmd = [sys.executable, "-m", "pip", "install", "matplotlib"]
            subprocess.run(cmd, check=False, timeout=900)
    return missing


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _git(*args: str) -> str:
    try:
        p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.strip()


def _module_version(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def src_fingerprint(src: Path | None = None) -> str:
    """A hash of the monolake sources under ``src`` (default: the checkout's src/), which the proxies load
    when they start."""
    root = src or REPO / "src"
    h = hashlib.sha1()
    for path in sorted((root / "monolake").rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        try:
            h.update(path.read_bytes())
        except OSError:
            continue
    return h.hexdigest()[:12]


def extract(rev: str, dest: Path) -> Path:
    """``git archive <rev> src/monolake`` into ``dest``; returns the directory to put on PYTHONPATH."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src/monolake"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, timeout=60, check=True)
    _copy_native(dest / "src")
    return dest / "src"


def _copy_native(src: Path) -> None:
    """Native modules are not committed: reuse the working tree's build of each one whose C
    source is the same at the revision (else the revision runs without it, e.g. io_uring falls back)."""
    tree = REPO / "src"
    for built in tree.glob("monolake/**/*.so"):
        rel = built.relative_to(tree)
        source = rel.parent / (rel.name.split(".", 1)[0] + ".c")
        theirs, ours = src / source, tree / source
        if theirs.is_file() and ours.is_file() and theirs.read_bytes() == ours.read_bytes():
            shutil.copy2(built, src / rel)


def info(rev: str | None = None, src: Path | None = None) -> dict[str, object]:
    """Taken when the run starts: the proxies run the sources as they are then (or as committed at ``rev``,
    extracted to ``src``)."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = "" if rev else _git("status", "--porcelain", "--", "src")
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "uvloop": _module_version("uvloop"),
        "httptools": _module_version("httptools"),
        "monolake": _module_version("monolake"),
        "monolake_commit": _git("rev-parse", "--short=12", rev or "HEAD"),
        "monolake_source": f"git archive {rev}" if rev else "working tree",
        "monolake_src_dirty": bool(dirty),
        "monolake_src_sha1": src_fingerprint(src),
        "nginx": _first_line(["nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]),
        "h2load": _first_line(["h2load", "--version"]),
        "wrk": _first_line(["wrk", "-v"]),
    }
