"""Configs for the origin and the proxies under test; every proxy is configured to do the same work.

The origin (nginx, 1 worker) serves ``/body/<label>`` (fixed bodies) and ``/echo`` (the forwarding headers
it received, to check each proxy does the work). Each proxy, "full features on":

- four routes, the matched one last: ``/api/`` (prefix rewrite), host ``admin.example.com``, a path regex
  ``^/v[0-9]+/items/``, then ``/``;
- on the matched route a request header set (``X-Bench-Proxy: on``), and X-Forwarded-For (appended),
  X-Forwarded-Proto and X-Forwarded-Host (monolake's defaults), Host kept as received;
- a pooled keep-alive upstream connection to the origin, 1 worker / 1 thread, access log off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SIZES = {"128": 128, "4k": 4096, "16k": 16384, "160k": 160 * 1024}
"""Body label -> bytes; the origin serves them at /body/<label>."""

BENCH_HEADER = ("X-Bench-Proxy", "on")


def size_bytes(label: str) -> int:
    if label in SIZES:
        return SIZES[label]
    low = label.lower()
    if low.endswith("k"):
        return int(low[:-1]) * 1024
    return int(low)


def _nginx(tmp: Path, name: str, http: str, workers: int = 1) -> Path:
    temps = []
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / f"{name}_{d}").mkdir(exist_ok=True)
        temps.append(f"  {d}_temp_path {tmp}/{name}_{d};")
    conf = tmp / f"{name}.conf"
    nl = "\n"
    conf.write_text(f"""worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{nl.join(temps)}
  keepalive_requests 1000000;
  keepalive_timeout 300s;
{http}
}}
""")
    return conf


def origin(tmp: Path, port: int, sizes: list[str]) -> Path:
    www = tmp / "www" / "body"
    www.mkdir(parents=True, exist_ok=True)
    for label in sizes:
        (www / label).write_bytes(b"x" * size_bytes(label))
        (www / label).chmod(0o644)
    for d in (tmp / "www", www):
        d.chmod(0o755)
    echo = (
        "xbench=$http_x_bench_proxy xff=$http_x_forwarded_for proto=$http_x_forwarded_proto "
        "xfhost=$http_x_forwarded_host host=$http_host uri=$request_uri"
    )
    return _nginx(
        tmp,
        "origin",
        f"""  sendfile on;
  open_file_cache max=64;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {tmp}/www;
    location = /echo {{ default_type text/plain; return 200 "{echo}\\n"; }}
  }}""",
    )


def nginx_proxy(tmp: Path, port: int, origin_port: int, workers: int = 1) -> Path:
    def loc(extra: str = "") -> str:
        return (
            'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $http_host;\n'
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;" + extra
        )

    bench = f"\n      proxy_set_header {BENCH_HEADER[0]} {BENCH_HEADER[1]};"
    return _nginx(
        tmp,
        "nginx_proxy" if workers == 1 else f"nginx_proxy_w{workers}",
        f"""  proxy_max_temp_file_size 0;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    server_name admin.example.com;
    location / {{ proxy_pass http://origin; {loc()} }}
  }}
  server {{
    listen 127.0.0.1:{port} default_server;
    server_name _;
    location /api/ {{ proxy_pass http://origin/; {loc()} }}
    location ~ ^/v[0-9]+/items/ {{ proxy_pass http://origin; {loc()} }}
    location / {{ proxy_pass http://origin; {loc(bench)} }}
  }}""",
        workers,
    )


def haproxy(tmp: Path, port: int, origin_port: int) -> Path:
    conf = tmp / "haproxy.cfg"
    fwd = (
        "  http-request set-header X-Forwarded-Proto http\n"
        "  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
        f"  server origin 127.0.0.1:{origin_port}\n"
    )
    conf.write_text(f"""global
  nbthread 1
  maxconn 8000
  pidfile {tmp}/haproxy.pid

defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s

frontend bench
  bind 127.0.0.1:{port}
  acl api path_beg /api/
  acl admin hdr(host) -i admin.example.com
  acl items path_reg ^/v[0-9]+/items/
  use_backend api if api
  use_backend admin if admin
  use_backend items if items
  default_backend main

backend api
  http-request replace-path ^/api(/.*) \\1
{fwd}
backend admin
{fwd}
backend items
{fwd}
backend main
  http-request set-header {BENCH_HEADER[0]} {BENCH_HEADER[1]}
{fwd}""")
    return conf


def monolake(tmp: Path, name: str, port: int, origin_port: int, loop: str, workers: int, minimal: bool) -> Path:
    conf = tmp / f"{name}.toml"
    head = f"""[runtime]
workers = {workers}
cpu_affinity = false
loop = "{loop}"
drain_timeout = 2.0

[upstreams.origin]
endpoints = [{{ endpoint = "http://127.0.0.1:{origin_port}" }}]

[servers.bench]
listener = "127.0.0.1:{port}"
"""
    if minimal:
        body = """[servers.bench.forwarded]
x_forwarded_for = false
x_forwarded_proto = false
x_forwarded_host = false

[[servers.bench.routes]]
path = "/"
upstream = "origin"
"""
    else:
        body = f"""
[[servers.bench.routes]]
path = "/api/"
prefix_rewrite = "/"
upstream = "origin"

[[servers.bench.routes]]
host = "admin.example.com"
upstream = "origin"

[[servers.bench.routes]]
path_regex = "^/v[0-9]+/items/"
upstream = "origin"

[[servers.bench.routes]]
path = "/"
upstream = "origin"
request_headers = {{ set = {{ "{BENCH_HEADER[0]}" = "{BENCH_HEADER[1]}" }} }}
"""
    conf.write_text(head + body)
    return conf


@dataclass(frozen=True)
class ProxyKind:
    name: str
    kind: str  # "monolake", "nginx", "haproxy"
    loop: str = "uvloop"
    minimal: bool = False
    note: str = ""
    pure: bool = False  # MONOLAKE_PURE=1: the hot path from its .py source even where compiled


PROXIES = {
    "monolake-uvloop": ProxyKind("monolake-uvloop", "monolake", "uvloop", note="full features, uvloop"),
    "monolake-asyncio": ProxyKind("monolake-asyncio", "monolake", "asyncio", note="full features, asyncio loop"),
    "monolake-io_uring": ProxyKind("monolake-io_uring", "monolake", "io_uring", note="full features, io_uring loop"),
    "nginx": ProxyKind("nginx", "nginx", note="nginx reverse proxy, upstream keepalive 64"),
    "haproxy": ProxyKind("haproxy", "haproxy", note="HAProxy, nbthread 1, http-reuse always"),
    "monolake-uvloop-pure": ProxyKind(
        "monolake-uvloop-pure", "monolake", "uvloop", pure=True, note="full features, uvloop, MONOLAKE_PURE=1"
    ),
    "monolake-io_uring-pure": ProxyKind(
        "monolake-io_uring-pure", "monolake", "io_uring", pure=True, note="full features, io_uring, MONOLAKE_PURE=1"
    ),
    "monolake-min": ProxyKind(
        "monolake-min", "monolake", "uvloop", minimal=True, note="one route, no header work (not the same work)"
    ),
}
DEFAULT_PROXIES = ["monolake-uvloop", "monolake-asyncio", "nginx", "haproxy"]
