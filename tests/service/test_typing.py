"""Typed chains: mypy --strict accepts a correct chain and rejects wrong ones where marked.

Each file in ``typing/`` is checked in one mypy run (a subprocess, on this tree's
``src``). ``ok_*.py`` must pass; in ``bad_*.py`` every line marked ``# E: code`` must
have an error of that code, and no other line may have one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import monolake

pytest.importorskip("mypy")  # a test dependency ([test] extra)

HERE = Path(__file__).parent / "typing"
SRC = Path(monolake.__file__).resolve().parent.parent
ERROR = re.compile(r"^(?P<file>[\w.]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")
MARK = re.compile(r"# E: (?P<code>[\w-]+)")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[int, str]]]:
    files = sorted(p.name for p in HERE.glob("*.py"))
    cache = tmp_path_factory.mktemp("mypy-cache")
    options = ["--strict", "--config-file=", "--python-version=3.11", "--no-color-output", "--no-error-summary"]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *options, f"--cache-dir={cache}", *files],
        cwd=HERE,
        env={"MYPYPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 2: mypy itself failed
    out: dict[str, set[tuple[int, str]]] = {name: set() for name in files}
    for line in done.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            out[m["file"]].add((int(m["line"]), m["code"]))
    return out


def expected(name: str) -> set[tuple[int, str]]:
    lines = (HERE / name).read_text().splitlines()
    return {(i, m["code"]) for i, text in enumerate(lines, 1) if (m := MARK.search(text))}


def test_a_correct_chain_type_checks(reported: dict[str, set[tuple[int, str]]]) -> None:
    assert reported["ok_chain.py"] == set()


@pytest.mark.parametrize("name", sorted(p.name for p in HERE.glob("bad_*.py")))
def test_a_wrong_chain_is_a_type_error(reported: dict[str, set[tuple[int, str]]], name: str) -> None:
    want = expected(name)
    assert want, f"{name} marks no expected error"
    assert reported[name] == want
