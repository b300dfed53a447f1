"""``monolake check`` refuses a bad edge filter argument, naming its key path and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[servers.edge]
listener = "127.0.0.1:0"
filters = [{{ use = "{use}", args = {{ {args} }} }}]
[[servers.edge.routes]]
path = "/"
upstreams = [{{ endpoint = "127.0.0.1:9000" }}]
"""


@pytest.mark.parametrize(
    ("use", "args", "where", "reason"),
    [
        ("rate_limit", 'requests = 10, redis = "redis://127.0.0.1:1", fail = "maybe"', "args.fail", "Invalid enum"),
        ("jwt", 'jwks_url = "http://127.0.0.1:1/", audiences = [""]', "args.audiences[0]", "must not be empty"),
        ("basic_auth", 'file = "/nonexistent/htpasswd"', "args.file", "cannot read /nonexistent/htpasswd"),
        ("ext_authz", 'url = "http://127.0.0.1:1/authz?x=1"', "args.url", "must be http(s)://host:port[/path_prefix]"),
    ],
    ids=["ratelimit", "jwt", "basic_auth", "ext_authz"],
)
def test_check_names_the_key_path_and_the_reason(tmp_path: Path, use: str, args: str, where: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.format(use=use, args=args))
    r = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert f"servers.edge.filters[0].{where}: " in r.stderr and reason in r.stderr, r.stderr
