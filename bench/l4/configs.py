"""Configs of the L4 proxies under test: each listens on three loopback ports, relaying to the sink, the
source and the echo server of ``peers``; 1 worker / 1 thread, no logging per connection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
"""Debian's nginx-light builds stream as a dynamic module (package libnginx-mod-stream)."""

LEGS = ("up", "down", "echo")
"""Listener names: up -> sink, down -> source, echo -> echo."""


@dataclass(frozen=True)
class ProxyKind:
    name: str
    kind: str  # "monolake", "nginx", "haproxy"
    splice: bool = True
    note: str = ""


PROXIES = {
    "monolake": ProxyKind("monolake", "monolake", note="proxy_type tcp, uvloop, splice on (splice_after 1 MiB)"),
    "monolake-nosplice": ProxyKind("monolake-nosplice", "monolake", splice=False, note="splice = false: loop path"),
    "nginx": ProxyKind(
        "nginx", "nginx", note="stream proxy_pass, proxy_half_close on, otherwise defaults (16 KiB proxy_buffer_size)"
    ),
    "haproxy": ProxyKind("haproxy", "haproxy", splice=False, note="mode tcp, nbthread 1, defaults (no splice)"),
    "haproxy-splice": ProxyKind("haproxy-splice", "haproxy", note="mode tcp, nbthread 1, option splice-auto"),
}
DEFAULT_PROXIES = ["monolake", "monolake-nosplice", "nginx", "haproxy", "haproxy-splice"]


def monolake(tmp: Path, kind: ProxyKind, ports: dict[str, int], upstream: dict[str, int], loop: str) -> Path:
    conf = tmp / f"{kind.name}.toml"
    servers = "".join(
        f"""
[servers.{leg}]
listener = "127.0.0.1:{ports[leg]}"
proxy_type = "tcp"
upstreams = [{{ endpoint = "127.0.0.1:{upstream[leg]}" }}]
splice = {"true" if kind.splice else "false"}
"""
        for leg in LEGS
    )
    conf.write_text(f"""[runtime]
workers = 1
cpu_affinity = false
loop = "{loop}"
drain_timeout = 2.0
{servers}""")
    return conf


def nginx(tmp: Path, kind: ProxyKind, ports: dict[str, int], upstream: dict[str, int]) -> Path:
    conf = tmp / f"{kind.name}.conf"
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{ports[leg]}; proxy_pass 127.0.0.1:{upstream[leg]}; }}" for leg in LEGS
    )
    conf.write_text(f"""load_module {STREAM_MODULE};
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/{kind.name}.pid;
error_log {tmp}/{kind.name}.err warn;
events {{ worker_connections 16384; }}
stream {{
  proxy_half_close on;  # forward the client's EOF and keep relaying the other way (off by default)
{servers}
}}
""")
    return conf


def haproxy(tmp: Path, kind: ProxyKind, ports: dict[str, int], upstream: dict[str, int]) -> Path:
    conf = tmp / f"{kind.name}.cfg"
    pairs = "".join(
        f"""
frontend f_{leg}
  bind 127.0.0.1:{ports[leg]}
  default_backend b_{leg}

backend b_{leg}
  server s_{leg} 127.0.0.1:{upstream[leg]}
"""
        for leg in LEGS
    )
    conf.write_text(f"""global
  nbthread 1
  maxconn 4000
  pidfile {tmp}/{kind.name}.pid

defaults
  mode tcp
  timeout connect 3s
  timeout client 60s
  timeout server 60s
{"  option splice-auto" + chr(10) if kind.splice else ""}{pairs}""")
    return conf
