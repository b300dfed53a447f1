"""The examples shipped with the package and ``monolake init``.

Run from the checkout (editable install: the root ``examples/``) and by
scripts/wheel-check against an installed wheel (``MONOLAKE_TEST_INSTALLED=1``: the
copy inside the package, and nothing imported from the checkout).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import monolake
from monolake import _examples
from monolake.cli import main
from monolake.config import load_config

REPO = Path(__file__).resolve().parents[1]
INSTALLED = os.environ.get("MONOLAKE_TEST_INSTALLED") == "1"


def test_examples_path_has_every_example() -> None:
    path = monolake.examples_path()
    assert (path / "quickstart.toml").is_file()
    assert (path / "gateway" / "echo.thrift").is_file()  # subdirectories come along
    shipped = {p.name for p in path.glob("*.toml")}
    assert shipped == {p.name for p in (REPO / "examples").glob("*.toml")}


def test_examples_path_is_the_install_s() -> None:
    package = Path(monolake.__file__).resolve().parent
    if INSTALLED:
        assert REPO not in package.parents, f"monolake imported from the checkout: {package}"
        assert monolake.examples_path() == package / "examples"
    else:
        assert monolake.examples_path() == REPO / "examples"


def test_examples_path_without_any_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_examples, "_PACKAGE", tmp_path / "a" / "b")
    with pytest.raises(FileNotFoundError, match="broken install"):
        monolake.examples_path()


def test_init_writes_a_valid_starter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "proxy.toml"
    assert main(["init", str(target)]) == 0
    text = target.read_text()
    assert text.startswith("# A starter monolake config, written by `monolake init`.")
    assert text.endswith((monolake.examples_path() / "quickstart.toml").read_text())
    cfg = load_config(str(target))
    assert list(cfg.servers) == ["web"]
    assert f"wrote {target}" in capsys.readouterr().out


def test_init_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / "monolake.toml").is_file()


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "monolake.toml"
    target.write_text("# mine\n")
    assert main(["init", str(target)]) == 2
    assert target.read_text() == "# mine\n"
    assert "exists; use --force" in capsys.readouterr().err
    assert main(["init", "--force", str(target)]) == 0
    assert target.read_text().startswith("# A starter monolake config")


def test_init_unwritable_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "missing-dir" / "monolake.toml")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_init_through_the_entry_point(tmp_path: Path) -> None:
    """``python -m monolake.cli init`` as a user runs it, then ``check`` accepts the result."""
    target = tmp_path / "monolake.toml"
    run = [sys.executable, "-m", "monolake.cli"]
    subprocess.run([*run, "init", str(target)], check=True, capture_output=True, timeout=60)
    out = subprocess.run([*run, "check", "-c", str(target)], check=True, capture_output=True, text=True, timeout=60)
    assert f"{target}: ok" in out.stdout
