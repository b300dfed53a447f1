"""Real etcd members for the tests (Debian's etcd-server): one or three on 127.0.0.1, each on
ports from bind(0), waited for by asking them (never by sleeping), stopped by pid."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Member:
    def __init__(self, name: str, data: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.name = name
        self.data = data
        self.client = free_port()
        self.peer = free_port()
        self.tls = tls
        """(certificate chain, key) to serve clients over TLS."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client}"

    def start(self, initial_cluster: str) -> None:
        log = open(self.data.with_suffix(".log"), "wb")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            [
                ETCD,
                "--name", self.name,
                "--data-dir", str(self.data),
                "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
                "--initial-cluster", initial_cluster,
                "--initial-cluster-state", "new",
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
                "--log-level", "warn",
                *(["--cert-file", str(self.tls[0]), "--key-file", str(self.tls[1])] if self.tls else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(10)


def call(
    url: str,
    path: str,
    payload: dict[str, Any],
    timeout: float = 5.0,
    *,
    token: str | None = None,
    ctx: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    req = urllib.request.Request(url + path, json.dumps(payload).encode(), headers)
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def put(url: str, key: str, value: Any, **kw: Any) -> int:
    """Put ``value`` (JSON-encoded unless a str); ``kw`` goes to ``call``."""
    text = value if isinstance(value, str) else json.dumps(value)
    doc = call(url, "/v3/kv/put", {"key": b64(key), "value": b64(text)}, **kw)
    return int(doc["header"]["revision"])


def put_retrying(url: str, key: str, value: Any, timeout: float = 30.0) -> int:
    """``put`` through an election (a killed leader): retried until accepted. A put that timed
    out may have been applied; putting the same value again is harmless."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return put(url, key, value, timeout=1.0)
        except (OSError, urllib.error.URLError, ValueError):
            if time.monotonic() > deadline:
                raise


def delete(url: str, key: str) -> None:
    call(url, "/v3/kv/deleterange", {"key": b64(key)})


def wait_ready(urls: list[str], timeout: float = 30.0, ctx: ssl.SSLContext | None = None) -> None:
    """Until every member answers a linearizable read (a leader exists)."""
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                call(url, "/v3/kv/range", {"key": b64("ready")}, timeout=2.0, ctx=ctx)
                break
            except (OSError, urllib.error.URLError, ValueError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd at {url} not ready in {timeout}s") from None
                time.sleep(0.05)


class Cluster:
    def __init__(
        self, tmp: Path, n: int, tls: tuple[Path, Path] | None = None, ctx: ssl.SSLContext | None = None
    ) -> None:
        self.members = [Member(f"m{i}", tmp / f"m{i}", tls) for i in range(n)]
        self.ctx = ctx

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> None:
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in self.members)
        for m in self.members:
            m.start(initial)
        try:
            wait_ready(self.urls, ctx=self.ctx)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.members:
            m.stop()
