"""``monolake check``: exit 0 on a good file, 2 with the key path on stderr on a bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
[servers.web]
listener = "127.0.0.1:8080"

[[servers.web.routes]]
upstream = "app"

[upstreams.app]
endpoints = [{ endpoint = "127.0.0.1:9000" }]
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "monolake.toml"
    p.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(p)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )


def test_good_file_exits_0(tmp_path: Path) -> None:
    done = check(tmp_path, GOOD)
    assert done.returncode == 0, done.stderr
    assert "ok (1 server(s): web; 1 cluster(s))" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [
        ('upstream = "app"', 'upstream = "nope"', "servers.web.routes[0].upstream", "unknown cluster 'nope'"),
        ('listener = "127.0.0.1:8080"', 'listener = "nohost"', "servers.web.listener", "has no port"),
        ('listener = "127.0.0.1:8080"', 'listner = "127.0.0.1:8080"', "servers.web", "unknown field `listner`"),
        (
            '"127.0.0.1:9000" }',
            '"127.0.0.1:9000", weight = 0 }',
            "upstreams.app.endpoints[0]",
            "weight must be >= 1",
        ),
        (
            'listener = "127.0.0.1:8080"',
            'listener = "127.0.0.1:8080"\nfilters = ["nope_mod:X"]',
            "servers.web.filters[0]",
            "cannot import 'nope_mod'",
        ),
    ],
)
def test_bad_file_exits_2_naming_the_key_path(tmp_path: Path, old: str, new: str, path: str, fragment: str) -> None:
    assert old in GOOD
    done = check(tmp_path, GOOD.replace(old, new))
    assert done.returncode == 2
    assert done.stderr.startswith(f"monolake: config error: {path}: ")
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    done = check(tmp_path, "[servers.web\n")
    assert done.returncode == 2
    assert "is not valid TOML" in done.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(tmp_path / "absent.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "cannot read" in done.stderr and "absent.toml" in done.stderr


def test_zero_request_timeout_is_a_config_error(tmp_path: Path) -> None:
    done = check(
        tmp_path, GOOD.replace('listener = "127.0.0.1:8080"', 'listener = "127.0.0.1:8080"\nrequest_timeout = 0')
    )
    assert done.returncode == 2
    assert "servers.web.request_timeout" in done.stderr
