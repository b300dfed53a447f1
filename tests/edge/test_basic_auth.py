"""BasicAuth against htpasswd files made by Apache's ``htpasswd`` (bcrypt and {SHA}); the
example config served by ``monolake run`` (uvloop: the loop does not matter here)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from conftest import REPO, TIMEOUT, Origin, Proxy, ProxyFactory
from monolake.apps.config import FilterSpec
from monolake.apps.edge.basic_auth import BasicAuth, BasicAuthThreaded
from monolake.apps.proxy._filters import load_filters
from monolake.core.errors import ConfigError
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context

EXAMPLE = REPO / "examples" / "edge" / "basic_auth.toml"
HTPASSWD = shutil.which("htpasswd")


def entry(user: str, password: str, kind: str) -> str:
    """One htpasswd line: from Apache's tool when installed, else made the same way here."""
    if HTPASSWD is not None:
        flag = ["-B", "-C", "4"] if kind == "bcrypt" else ["-s"]
        out = subprocess.run([HTPASSWD, "-nb", *flag, user, password], capture_output=True, check=True, text=True)
        return out.stdout.strip()
    if kind == "bcrypt":
        return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}"
    return f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}"


def creds(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write(path: Path, *lines: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# users\n\n" + "\n".join(lines) + "\n")
    os.replace(tmp, path)  # a new inode: the change is seen whatever the mtime granularity


def call(f: BasicAuth, value: str | None, t: float = 0.0) -> tuple[Response | None, Request]:
    auth = [(b"Authorization", value.encode())] if value else []
    req = Request(b"GET", b"/", Headers([(b"X-User", b"mallory"), *auth]))
    out: Any = f.request_filter(req, Context("10.0.0.1", "web", t))
    if inspect.isawaitable(out):  # threads = true: the async variant
        out = asyncio.run(out)
    return out, req


@pytest.mark.parametrize("threads", [True, False], ids=["threads", "inline"])
def test_bcrypt_and_sha_entries(tmp_path: Path, threads: bool) -> None:
    path = tmp_path / "users"
    write(path, entry("alice", "secret", "bcrypt"), entry("bob", "hunter2", "sha"))
    f = BasicAuth(file=str(path), realm="r", user_header="X-User", threads=threads)
    assert isinstance(f, BasicAuthThreaded) is threads
    for user, password in (("alice", "secret"), ("bob", "hunter2")):
        out, req = call(f, creds(user, password))
        assert out is None and req.headers.get("x-user") == user.encode() and "authorization" not in req.headers
        assert call(f, creds(user, password))[0] is None  # cached
    for value in (creds("alice", "wrong"), creds("bob", "secret"), creds("carol", "x"), "Basic !!", "Bearer x", None):
        out, _ = call(f, value)
        assert out is not None and out.status == 401
        assert out.headers.get("www-authenticate") == b'Basic realm="r", charset="UTF-8"'


def test_the_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write(path, entry("alice", "secret", "bcrypt"))
    f = BasicAuth(file=str(path), check_interval=1)
    assert call(f, creds("alice", "secret"), t=0.0)[0] is None
    write(path, entry("bob", "hunter2", "sha"))
    assert call(f, creds("bob", "hunter2"), t=0.5)[0] is not None  # not looked at yet
    assert call(f, creds("bob", "hunter2"), t=1.0)[0] is None
    assert call(f, creds("alice", "secret"), t=1.0)[0] is not None  # the cache went with the old file
    path.write_text("bob:$apr1$xyz$abc\n")
    assert call(f, creds("bob", "hunter2"), t=2.0)[0] is None  # broken file: the users stay


def test_a_bcrypt_check_does_not_hold_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write(path, entry("alice", "secret", "bcrypt"))
    f = BasicAuth(file=str(path))
    req = Request(b"GET", b"/", Headers([(b"Authorization", creds("alice", "secret").encode())]))
    ticks: list[int] = []

    async def other() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    async def go() -> tuple[Any, int]:
        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        before = len(ticks)
        out = await f.request_filter(req, Context("10.0.0.1", "web", 0.0))  # type: ignore[misc]
        during = len(ticks) - before
        task.cancel()
        return out, during

    out, during = asyncio.run(go())
    assert out is None and during > 0  # other tasks ran while bcrypt did


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("alice:$apr1$x$y\n", "users:1: user 'alice': hash type 'apr1' not supported"),
        ("\nalice\n", "users:2: not a user:hash line"),
        ("bob:{SHA}abc\n", "{SHA} hash is not base64 of 20 bytes"),
        (None, "cannot read"),
    ],
)
def test_bad_files_are_config_errors(tmp_path: Path, text: str | None, reason: str) -> None:
    path = tmp_path / "users"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_filters([FilterSpec(use="basic_auth", args={"file": str(path)})], "servers.a.filters")
    assert str(info.value).startswith("servers.a.filters[0].args.file: ") and reason in str(info.value)


@pytest.fixture(scope="module")
def proxy_and_file(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[tuple[Proxy, Path]]:
    d = tmp_path_factory.mktemp("basic")
    path = d / "users.htpasswd"
    write(path, entry("alice", "secret", "bcrypt"), entry("bob", "hunter2", "sha"))
    text = (
        EXAMPLE.read_text()
        .replace('listener = "127.0.0.1:8080"', 'listener = "127.0.0.1:0"')
        .replace("127.0.0.1:9000", origin.address)
        .replace("/etc/monolake/users.htpasswd", str(path))
    )
    factory = ProxyFactory(d, "uvloop")
    try:
        yield factory(text), path
    finally:
        factory.close()


def test_example_config(proxy_and_file: tuple[Proxy, Path]) -> None:
    p, path = proxy_and_file
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        r = c.get(p.url + "/echo", headers={"Authorization": creds("alice", "secret"), "X-User": "mallory"})
        assert r.status_code == 200
        headers = [(k.lower(), v) for k, v in r.json()["headers"]]
        assert [v for k, v in headers if k == "x-user"] == ["alice"] and "authorization" not in dict(headers)
        assert c.get(p.url + "/echo", auth=("bob", "hunter2")).status_code == 200
        r = c.get(p.url + "/echo", auth=("bob", "nope"))
        assert (r.status_code, r.headers["www-authenticate"]) == (401, 'Basic realm="admin", charset="UTF-8"')
        # A new user, without a reload: seen within check_interval (1 s) - wait for it.
        write(path, entry("carol", "pw", "sha"))
        deadline = time.monotonic() + TIMEOUT
        while c.get(p.url + "/echo", auth=("carol", "pw")).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get(p.url + "/echo", auth=("alice", "secret")).status_code == 401
