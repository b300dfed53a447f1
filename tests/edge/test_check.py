"""``monolake check`` refuses a bad edge filter argument, naming its key path and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[servers.edge]
listener = "127.0.0.1:0"
filters = [{{ use = "monolake.apps.edge.{use}", args = {{ {args} }} }}]
[[servers.edge.routes]]
path = "/"
upstreams = [{{ endpoint = "127.0.0.1:9000" }}]
"""


@pytest.mark.parametrize(
    ("use", "args", "reason"),
    [
        ("ratelimit:RateLimit", 'requests = 10, redis = "redis://127.0.0.1:1", fail = "maybe"', 'fail must be "open"'),
        ("jwt:Jwt", 'jwks_url = "http://127.0.0.1:1/", audiences = [""]', "audiences must be a list of non-empty"),
        ("basic_auth:BasicAuth", 'file = "/nonexistent/htpasswd"', "cannot read /nonexistent/htpasswd"),
        ("ext_authz:ExtAuthz", 'url = "http://127.0.0.1:1/authz?x=1"', "url must be http(s)://host:port[/path_prefix]"),
    ],
    ids=["ratelimit", "jwt", "basic_auth", "ext_authz"],
)
def test_check_names_the_filter_and_the_reason(tmp_path: Path, use: str, args: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.format(use=use, args=args))
    r = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "servers.edge.filters[0]" in r.stderr and reason in r.stderr, r.stderr
