"""ConfigWatcher: inotify on the config file's directory (events are queued by the time
the writing call returns, so no waiting is needed)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.core.runtime._watch import ConfigWatcher, file_digest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux only")


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, ConfigWatcher]]:
    cfg = tmp_path / "monolake.toml"
    cfg.write_text("a = 1\n")
    w = ConfigWatcher(str(cfg))
    yield cfg, w
    w.close()


def test_nothing_happened(watched: tuple[Path, ConfigWatcher]) -> None:
    assert watched[1].read() is False


def test_in_place_write(watched: tuple[Path, ConfigWatcher]) -> None:
    cfg, w = watched
    cfg.write_text("a = 2\n")
    assert w.read() is True
    assert w.read() is False  # consumed


def test_rename_over_the_file(watched: tuple[Path, ConfigWatcher]) -> None:
    cfg, w = watched
    tmp = cfg.with_name("new.tmp")
    tmp.write_text("a = 3\n")
    assert w.read() is False  # another file in the directory
    os.replace(tmp, cfg)
    assert w.read() is True


def test_other_files_are_ignored(watched: tuple[Path, ConfigWatcher]) -> None:
    cfg, w = watched
    (cfg.parent / "other.toml").write_text("x")
    (cfg.parent / ".monolake.toml.swp").write_text("x")
    assert w.read() is False


def test_symlinked_config_sees_the_link_swapped(tmp_path: Path) -> None:
    # Kubernetes ConfigMap volumes: the file is a link through "..data", which is replaced.
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "monolake.toml").write_text("a = 1\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "monolake.toml").symlink_to("..data/monolake.toml")
    w = ConfigWatcher(str(tmp_path / "monolake.toml"))
    try:
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "monolake.toml").write_text("a = 2\n")
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert w.read() is True
        assert (tmp_path / "monolake.toml").read_text() == "a = 2\n"
    finally:
        w.close()


def test_digest(tmp_path: Path) -> None:
    f = tmp_path / "f"
    assert file_digest(str(f)) is None
    f.write_text("x")
    d = file_digest(str(f))
    f.write_text("x")
    assert file_digest(str(f)) == d
    f.write_text("y")
    assert file_digest(str(f)) != d
