"""``admin.listen`` is validated with the rest of the file: ``check`` names the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

GOOD = """
[servers.web]
listener = "127.0.0.1:8080"

[[servers.web.routes]]
upstream = "app"

[upstreams.app]
endpoints = [{ endpoint = "127.0.0.1:9000" }]

[admin]
listen = "127.0.0.1:9901"
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


BAD = [
    ("nohost", "has no port"),
    ("127.0.0.1:99999", "port"),
    ("example.com:9901", "must be an IP address or localhost"),
    ("unix:/tmp/admin.sock", "a Unix socket is not supported"),
    ("127.0.0.1:8080", "already used by servers.web"),
]


@pytest.mark.parametrize(("listen", "fragment"), BAD)
def test_check_reports_bad_admin_listen(tmp_path: Path, listen: str, fragment: str) -> None:
    done = check(tmp_path, GOOD.replace('listen = "127.0.0.1:9901"', f'listen = "{listen}"'))
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith("monolake: config error: admin.listen: "), done.stderr
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr


def test_check_accepts_good_admin_listen(tmp_path: Path) -> None:
    for listen in ("127.0.0.1:9901", "localhost:0", "[::1]:9901"):
        done = check(tmp_path, GOOD.replace('listen = "127.0.0.1:9901"', f'listen = "{listen}"'))
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("listen", "fragment"), BAD)
def test_parse_config_raises_with_key_path(listen: str, fragment: str) -> None:
    raw = {
        "servers": {"web": {"listener": "127.0.0.1:8080", "routes": [{"upstream": "app"}]}},
        "upstreams": {"app": {"endpoints": [{"endpoint": "127.0.0.1:9000"}]}},
        "admin": {"listen": listen},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.path == "admin.listen"
    assert fragment in info.value.reason
