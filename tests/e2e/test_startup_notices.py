"""What a start says about the parts it fell back from: the ready line names the loop the
workers run (not the one asked for), and the HTTP/2 codec is named once per start when it is
not the native one (a silent pure-Python codec costs CPU unnoticed)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import READY, REPO, TIMEOUT, Origin, ProxyFactory
from monolake.proto.http2 import CODEC_ENV, codec_notice, native_available
from monolake.runtime import uring

CONFIG = """
[runtime]
drain_timeout = 2

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
upstream = "origin"
"""

TCP_ONLY = """
[runtime]
drain_timeout = 2

[servers.relay]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstreams = [{ endpoint = "{origin}" }]
"""

NOT_BUILT = "native HTTP/2 codec unavailable, using h2 (pure Python) instead"
FORCED = f"HTTP/2 codec: h2 (pure Python), chosen by {CODEC_ENV}=h2"


@pytest.fixture
def uvloop_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path, "uvloop")
    yield factory
    factory.close()


def without_native(tmp_path: Path) -> dict[str, str]:
    """An environment whose processes cannot import the native codec, as where it was not built."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["monolake.proto.http2._native"] = None\n')
    path = [str(site), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p), CODEC_ENV: ""}


def test_ready_line_names_uvloop_after_an_io_uring_fallback(tmp_path: Path, origin: Origin) -> None:
    factory = ProxyFactory(tmp_path, "io_uring")
    try:
        p = factory(CONFIG, origin=origin.url, workers=2, env={uring.FAIL_ENV: "1"})
        assert p.log.wait_line(READY)["loop"] == "uvloop"
        # Said once per start: by the supervisor, not again by each worker it forks.
        assert p.log.count(r"io_uring unavailable, using uvloop instead") == 1, p.log.text
    finally:
        factory.close()


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_ready_line_names_the_loop_that_runs(tmp_path: Path, origin: Origin, loop: str) -> None:
    reason = uring.unavailable()
    expected = ("uvloop" if reason else "io_uring") if loop == "auto" else loop
    factory = ProxyFactory(tmp_path, loop)
    try:
        p = factory(CONFIG, origin=origin.url, env={uring.FAIL_ENV: ""})
        assert p.log.wait_line(READY)["loop"] == expected
    finally:
        factory.close()


def test_forced_h2_codec_is_said_once_at_info(uvloop_proxy: ProxyFactory, origin: Origin) -> None:
    p = uvloop_proxy(CONFIG, origin=origin.url, workers=2, env={CODEC_ENV: "h2"})
    assert p.log.count(r" INFO monolake\[\d+\]: " + re.escape(FORCED)) == 1, p.log.text
    assert p.log.count("HTTP/2 codec") == 1, p.log.text


def test_missing_native_codec_is_said_once_and_h2_still_serves(
    tmp_path: Path, uvloop_proxy: ProxyFactory, origin: Origin
) -> None:
    p = uvloop_proxy(CONFIG, origin=origin.url, workers=2, env=without_native(tmp_path))
    assert p.log.count(" WARNING .*" + re.escape(NOT_BUILT)) == 1, p.log.text
    with httpx.Client(http1=False, http2=True, trust_env=False, timeout=TIMEOUT) as c:
        r = c.get(p.url + "/")
    assert r.status_code == 200 and r.http_version == "HTTP/2"


def test_no_codec_line_when_nothing_speaks_http2(tmp_path: Path, uvloop_proxy: ProxyFactory, origin: Origin) -> None:
    p = uvloop_proxy(TCP_ONLY, origin=origin.address, env=without_native(tmp_path))
    assert not p.log.count("HTTP/2 codec"), p.log.text


@pytest.mark.skipif(not native_available(), reason="the native HTTP/2 codec is not built here")
def test_codec_notice_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CODEC_ENV, raising=False)
    severity, message = codec_notice()
    assert severity == "debug" and message.startswith("HTTP/2 codec: native (libnghttp2 ")
    monkeypatch.setenv(CODEC_ENV, "h2")
    assert codec_notice() == ("info", FORCED)
    monkeypatch.setenv(CODEC_ENV, "nghttp2")
    severity, message = codec_notice()
    assert severity == "warning" and "'nghttp2' is not 'h2' or 'native'" in message
    monkeypatch.setitem(sys.modules, "monolake.proto.http2._native", None)
    monkeypatch.setenv(CODEC_ENV, "native")
    severity, message = codec_notice()
    assert severity == "error" and "unavailable" in message
    monkeypatch.delenv(CODEC_ENV)
    severity, message = codec_notice()
    assert severity == "warning" and message.startswith(NOT_BUILT)
