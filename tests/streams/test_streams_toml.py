"""The echo example served by ``monolake run -c examples/streams/echo.toml`` (one process, shared
by the tests here), driven by the example's client script; the access log, metrics and reload;
and config errors naming their key path."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import READY, TIMEOUT, LineLog, Proxy, _stop_process, free_port
from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "streams"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path, int]]:
    d = tmp_path_factory.mktemp("echo")
    for name in ("echo_server.py", "echo_pb2.py"):
        shutil.copy(EXAMPLES / name, d / name)
    admin = free_port()
    text = (EXAMPLES / "echo.toml").read_text().replace("127.0.0.1:9000", "127.0.0.1:0")
    text += f'\n[log]\naccess_log = "{d / "access.log"}"\n\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
    p = Proxy(text, d, loop="uvloop")
    try:
        yield p, d, admin
    finally:
        p.close()


def client(address: str, calls: int = 200) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_client.py"), "--connect", address, "--calls", str(calls)],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    return out.stdout.decode()


def test_echo_from_toml_with_the_example_client(served: tuple[Proxy, Path, int]) -> None:
    p, d, admin = served
    out = client(p.address)
    assert "200 unary calls" in out
    assert "stream: stream (6 messages)" in out
    # One access log line per call (written within a second of it), and the calls in the metrics.
    log = d / "access.log"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count("outcome=ok") < 201):
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert sum("streams server=echo" in line and "outcome=ok" in line for line in lines) >= 201
    assert any(re.search(r"outcome=ok replies=6 ms=[\d.]+$", line) for line in lines)  # the stream
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=TIMEOUT).text
        m = re.search(r'monolake_stream_calls_total\{outcome="ok",server="echo"\} (\d+)', text)
        if m and int(float(m[1])) >= 201:
            break
        time.sleep(0.2)
    assert re.search(r'monolake_stream_messages_total\{direction="in",server="echo"\} \d+', text), text[-2000:]
    assert re.search(r'monolake_stream_bytes_total\{direction="out",server="echo"\} \d+', text)


def test_reload_serves_a_changed_handler(served: tuple[Proxy, Path, int]) -> None:
    p, d, _ = served
    module = d / "echo_server.py"
    module.write_text(module.read_text().replace("message=req.body.message,", "message=req.body.message.upper(),"))
    mark = p.log.mark()
    p.proc.send_signal(signal.SIGHUP)
    p.log.wait_line(r"reload \d+ \(SIGHUP\) done: .*changed=echo", after=mark)
    with pytest.raises(subprocess.CalledProcessError) as info:  # the client checks the echo: now it differs
        client(p.address, calls=1)
    assert b"HELLO 0" in info.value.stderr


BASE = {"listener": "127.0.0.1:0", "proxy_type": "tcp"}


@pytest.mark.parametrize(
    ("server", "path", "reason"),
    [
        ({"streams": {"handler": "m:F"}}, "servers.s.streams.message", "protobuf codec needs the message class"),
        ({"streams": {"handler": "m:F", "message": "m:R", "rpc": True}}, "servers.s.streams.response", "rpc needs"),
        ({"streams": {"handler": "nocolon", "codec": "bytes"}}, "servers.s.streams.handler", "is not"),
        (
            {"streams": {"handler": "m:F", "codec": "bytes", "max_in_flight": 0}},
            "servers.s.streams.max_in_flight",
            ">= 1",
        ),
        ({"streams": {"handler": "m:F", "codec": "bytes"}, "upstream": "x"}, "servers.s.upstream", "no upstream"),
        ({"streams": {"handler": "m:F", "codec": "bytes"}, "proxy_type": "http"}, "servers.s.proxy_type", '"tcp"'),
        ({"streams": {"handler": "m:F", "codec": "bytes"}, "handler": "m:G"}, "servers.s.handler", "streams.handler"),
    ],
)
def test_config_errors_name_the_key(server: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": {"s": {**BASE, **server}}})
    assert path in str(info.value) and reason in str(info.value), str(info.value)


def test_a_handler_that_cannot_be_imported_names_the_key(tmp_path: Path) -> None:
    from monolake.apps.streams._app import build_streams_app

    cfg = parse_config({"servers": {"s": {**BASE, "streams": {"handler": "no_such_module:F", "codec": "bytes"}}}})
    with pytest.raises(ConfigError, match=r"servers\.s\.streams\.handler.*no_such_module"):
        build_streams_app("s", cfg.servers["s"], str(tmp_path))


def test_the_guides_service_from_python() -> None:
    """examples/streams/hello_rpc.py: ``monolake.serve(StreamsApp(...))`` on the real runtime."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "hello_rpc.py"), "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    log = LineLog(proc.stderr, "hello_rpc.py stderr")
    try:
        address = log.wait_line(READY)["servers"].split("=", 1)[1]
        out = client(address, calls=100)
        assert "100 unary calls" in out and "stream: stream (6 messages)" in out
    finally:
        _stop_process(proc)
        log.join()
        proc.stderr.close()


def test_monolake_check_accepts_the_example() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(EXAMPLES / "echo.toml")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_echo_from_toml_over_tls(tmp_path: Path) -> None:
    """``[servers.echo.tls]`` on a streams server: the runtime's listener serves TLS, the client verifies it."""
    import asyncio

    import trustme

    sys.path.insert(0, str(EXAMPLES))
    import echo_pb2

    from monolake.apps.config import UpstreamTls
    from monolake.streams import Fields, ProtobufCodec, connect_rpc

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    chain, key, cafile = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(cafile))
    for name in ("echo_server.py", "echo_pb2.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    text = (EXAMPLES / "echo.toml").read_text().replace("127.0.0.1:9000", "127.0.0.1:0")
    text += f'\n[[servers.echo.tls.certificates]]\nchain = "{chain}"\nkey = "{key}"\n'
    p = Proxy(text, tmp_path, loop="uvloop")
    try:

        async def call() -> str:
            rpc = (Fields(echo_pb2.Request), Fields(echo_pb2.Response))
            conn = await connect_rpc(p.address, ProtobufCodec(echo_pb2.Response), *rpc, tls=UpstreamTls(ca=str(cafile)))
            req = echo_pb2.Request(body=echo_pb2.EchoRequest(message="over tls"))
            reply = await conn.call(req)
            conn.close()
            await conn.wait_closed()  # the TLS close finishes before the loop does
            return reply.echo.message

        assert asyncio.run(call()) == "over tls"
    finally:
        p.close()
