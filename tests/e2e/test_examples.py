"""Every ``examples/*.toml`` passes ``monolake check`` and actually serves.

To serve an example, its listeners are moved to 127.0.0.1:0 (or a Unix socket in a
tmp dir) and the demo origin ports 9000/9001/9002 are pointed at the origins a, b
and c started by the fixtures; everything else in the file is used as written. The
HTTP examples then get requests that exercise each of their routes; any other
example must at least start, report ready and stop cleanly.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import REPO, Origin, Proxy, ProxyFactory, RawClient

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
DEMO_PORTS = ("9000", "9001", "9002")


def monolake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


# -- check -------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_check(example: Path) -> None:
    r = monolake("check", "-c", str(example))
    assert r.returncode == 0, r.stderr
    assert f"{example}: ok (" in r.stdout


BAD_CONFIGS = {
    "unknown-cluster": (
        '[servers.web]\nlistener = "127.0.0.1:0"\n[[servers.web.routes]]\nupstream = "nope"\n',
        "servers.web.routes[0].upstream",
        "unknown cluster 'nope'",
    ),
    "misspelt-key": (
        '[upstreams.api]\nendpoints = [{ endpoint = "127.0.0.1:1" }]\nread_timout = 5\n'
        '[servers.web]\nlistener = "127.0.0.1:0"\n[[servers.web.routes]]\nupstream = "api"\n',
        "upstreams.api",
        "read_timout",
    ),
    "bad-regex": (
        '[servers.web]\nlistener = "127.0.0.1:0"\n[[servers.web.routes]]\npath_regex = "("\n'
        'upstreams = [{ endpoint = "127.0.0.1:1" }]\n',
        "servers.web.routes[0].path_regex",
        "invalid regular expression",
    ),
    "missing-filter": (
        '[servers.web]\nlistener = "127.0.0.1:0"\nfilters = ["no_such_module:Filter"]\n'
        '[[servers.web.routes]]\nupstreams = [{ endpoint = "127.0.0.1:1" }]\n',
        "servers.web.filters[0]",
        "no_such_module",
    ),
    "bad-access-log-variable": (
        '[log]\naccess_log_format = "$nonsense"\n'
        '[servers.web]\nlistener = "127.0.0.1:0"\n[[servers.web.routes]]\nupstreams = [{ endpoint = "127.0.0.1:1" }]\n',
        "log.access_log_format",
        "$nonsense",
    ),
    "bad-balancer": (
        '[servers.web]\nlistener = "127.0.0.1:0"\n[[servers.web.routes]]\nload_balancer = "fastest"\n'
        'upstreams = [{ endpoint = "127.0.0.1:1" }]\n',
        "servers.web.routes[0].load_balancer",
        "fastest",
    ),
    "not-toml": ("[servers.web\n", "", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_check_names_the_key_path(tmp_path: Path, case: str) -> None:
    text, key, reason = BAD_CONFIGS[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    r = monolake("check", "-c", str(path))
    assert r.returncode == 2
    assert r.stderr.startswith("monolake: config error: "), r.stderr
    assert key in r.stderr
    assert reason in r.stderr


def test_run_with_bad_config_exits_2_without_serving(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIGS["unknown-cluster"][0])
    r = monolake("run", "-c", str(path), cwd=tmp_path)
    assert r.returncode == 2
    assert "servers.web.routes[0].upstream" in r.stderr
    assert "monolake ready" not in r.stderr


# -- serve -------------------------------------------------------------------------


def rewrite(example: Path, origins: list[Origin], tmp: Path) -> str:
    """The example's text with local listeners and demo origin ports replaced."""
    text = example.read_text()
    raw = tomllib.loads(text)
    for name, server in raw.get("servers", {}).items():
        listener = server["listener"]
        value = listener if isinstance(listener, str) else listener["value"]
        new = f"unix:{tmp}/{name}.sock" if value.startswith("unix:") else "127.0.0.1:0"
        if isinstance(listener, dict) and listener.get("type") == "unix":
            new = f"{tmp}/{name}.sock"
        text = text.replace(f'"{value}"', f'"{new}"')
    # Files an example names relative to itself (gateway IDLs) must still be found from the copy.
    text = re.sub(r'(\bidl\s*=\s*")([^"/][^"]*)"', lambda m: f'{m[1]}{example.parent / m[2]}"', text)
    for port, origin in zip(DEMO_PORTS, origins, strict=True):
        text = re.sub(rf"(?<![\d.])127\.0\.0\.1:{port}\b", origin.address, text)
    # An admin endpoint listens on a port of its own too.
    text = re.sub(r'(\[admin\]\s*\nlisten\s*=\s*")[^"]*"', r'\g<1>127.0.0.1:0"', text)
    # Whatever the file listens on now is ours.
    for server in tomllib.loads(text).get("servers", {}).values():
        listener = server["listener"]
        value = listener if isinstance(listener, str) else listener["value"]
        assert value.endswith(":0") or value.startswith(("unix:", str(tmp))), value
    return text


def echo(r: httpx.Response) -> dict[str, object]:
    assert r.status_code == 200, (r.status_code, r.text)
    data = r.json()
    data["h"] = {k.lower(): v for k, v in data["headers"]}
    return data


def serve_quickstart(p: Proxy, origins: list[Origin]) -> None:
    e = echo(httpx.get(p.url + "/hello", trust_env=False))
    assert (e["name"], e["path"]) == ("a", "/hello")
    assert e["h"]["x-forwarded-for"] == "127.0.0.1"


def serve_multi_route(p: Proxy, origins: list[Origin]) -> None:
    _, b, c = origins
    with httpx.Client(trust_env=False, timeout=20) as client:

        def get(path: str, **kw: object) -> httpx.Response:
            return client.get(p.url + path, **kw)  # type: ignore[arg-type]

        e = echo(get("/v1/users", headers={"Host": "api.example.com"}))
        assert e["name"] in ("b", "c")
        assert e["h"]["host"] in (b.address, c.address)  # host_header = "upstream"
        assert e["h"]["x-forwarded-host"] == "api.example.com"

        e = echo(get("/", headers={"Host": "acme.tenants.example.com"}))
        assert (e["name"], e["h"]["x-tenant-route"]) == ("a", "wildcard")

        e = echo(get("/api/users?page=2"))
        assert (e["path"], e["name"] in ("b", "c")) == ("/v1/users?page=2", True)

        assert echo(get("/healthz"))["path"] == "/healthz"
        assert echo(get("/healthz/deep"))["name"] == "a"  # the default route

        assert echo(get("/orders/1234"))["name"] in ("b", "c")
        assert echo(get("/orders/abc"))["name"] == "a"

        assert echo(client.post(p.url + "/upload", content=b"data" * 1000))["name"] in ("b", "c")
        assert echo(get("/upload"))["name"] == "a"

        r = get("/", headers={"X-Canary": "1"})
        assert echo(r)["name"] == "c"
        assert r.headers["x-canary"] == "served"

        r = get("/static/logo.png")
        assert (echo(r)["path"], echo(r)["name"]) == ("/logo.png", "a")
        assert r.headers["cache-control"] == "public, max-age=3600"
        assert r.headers["x-served-by"] == "monolake"

        e = echo(get("/anything/else", headers={"X-Debug": "1"}))
        assert e["name"] == "a"
        assert "x-debug" not in e["h"]
        assert e["h"]["forwarded"].startswith("for=127.0.0.1;proto=http")

        r = get("/admin/panel")
        assert (r.status_code, r.text) == (403, "forbidden\n")
    # The access log goes to stdout.
    p.stdout.wait_line(r'"GET /[^ ]*logo\.png HTTP/1\.1" 200 .* route=7 host=127\.0\.0\.1$')


def serve_load_balancing(p: Proxy, origins: list[Origin]) -> None:
    with httpx.Client(trust_env=False, timeout=20) as client:

        def names(prefix: str, n: int, **kw: object) -> list[str]:
            return [echo(client.get(f"{p.url}{prefix}name-echo", **kw))["name"] for _ in range(n)]  # type: ignore[arg-type]

        rr = names("/rr/", 6)
        assert sorted(rr[:3]) == ["a", "b", "c"]
        assert rr == rr[:3] * 2
        assert Counter(names("/weighted/", 20)) == {"a": 10, "b": 6, "c": 4}
        assert set(names("/least/", 6)) <= {"b", "c"}
        assert set(names("/random/", 6)) <= {"b", "c"}
        assert len(set(names("/", 4))) == 1  # client_ip: one client, one endpoint
    for user in ("alice", "bob", "carol", "dave"):
        seen = {
            echo(httpx.get(f"{p.url}/sticky/", headers={"X-User-Id": user}, trust_env=False))["name"] for _ in range(3)
        }
        assert len(seen) == 1, (user, seen)
    for session in ("s1", "s2", "s3"):
        seen = {
            echo(httpx.get(f"{p.url}/session/", headers={"Cookie": f"session={session}"}, trust_env=False))["name"]
            for _ in range(3)
        }
        assert len(seen) == 1, (session, seen)


def serve_tunnels(p: Proxy, origins: list[Origin]) -> None:
    a = origins[0]
    with httpx.Client(trust_env=False, timeout=20) as client:
        # The demo origin does not switch protocols: the upgrade is answered as a plain request.
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket"}
        assert echo(client.get(p.url_of("web") + "/chat", headers=upgrade))["path"] == "/chat"
        assert client.get(p.url_of("forward") + "/").status_code == 405  # CONNECT only
    with RawClient(p.servers["forward"]) as c:
        c.send(f"CONNECT {a.address} HTTP/1.1\r\nHost: {a.address}\r\n\r\n".encode())
        assert c.read_response().status == 403  # only port 443
    p.stdout.wait_line(rf'"CONNECT {a.address} HTTP/1\.1" 403 ')


SERVE: dict[str, Callable[[Proxy, list[Origin]], None]] = {
    "quickstart.toml": serve_quickstart,
    "multi_route.toml": serve_multi_route,
    "load_balancing.toml": serve_load_balancing,
    "tunnels.toml": serve_tunnels,
}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_serves(example: Path, proxy: ProxyFactory, origins: list[Origin], tmp_path: Path) -> None:
    text = rewrite(example, origins, tmp_path)
    # The examples' own worker counts are used, except "one per core" (kept small here).
    workers = 1 if tomllib.loads(text).get("runtime", {}).get("workers", 0) == 0 else None
    # The repository root is on the proxy's PYTHONPATH, so examples.filters imports.
    p = proxy(text, workers=workers)
    assert set(p.servers) == set(tomllib.loads(text)["servers"])
    check = SERVE.get(example.name)
    if check is not None:
        check(p, origins)
    assert p.stop() == 0
