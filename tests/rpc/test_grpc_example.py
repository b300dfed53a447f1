"""examples/rpc/grpc (the guide's example): served from Python and from TOML, called with grpcio;
``[servers.NAME.rpc_grpc]`` config errors name their key."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_helpers import wait_for

from conftest import READY, REPO, TIMEOUT, LineLog, ProxyFactory, _stop_process
from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

EXAMPLE = REPO / "examples" / "rpc" / "grpc"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pb() -> Any:
    from monolake.apps.rpc.grpc import load_protos

    return load_protos([EXAMPLE / "greeter.proto"]).module("greeter.proto")


def say_hello(pb: Any, address: str, name: str) -> Any:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(
            "/greeter.Greeter/SayHello",
            request_serializer=pb.HelloRequest.SerializeToString,
            response_deserializer=pb.HelloReply.FromString,
        )
        return call(pb.HelloRequest(name=name), timeout=TIMEOUT)


def chat(pb: Any, address: str, names: list[str]) -> list[str]:
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream(
            "/greeter.Greeter/Chat",
            request_serializer=pb.HelloRequest.SerializeToString,
            response_deserializer=pb.HelloReply.FromString,
        )
        return [r.message for r in call(iter(pb.HelloRequest(name=n) for n in names), timeout=TIMEOUT)]


def only_uvloop(loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("gRPC runs on the HTTP/2 driver, tested on every loop by tests/server; one loop is enough here")


@pytest.fixture
def from_python(loop_kind: str) -> Iterator[tuple[str, LineLog, subprocess.Popen[bytes]]]:
    only_uvloop(loop_kind)
    cmd = [sys.executable, str(EXAMPLE / "greeter.py"), "--listen", "127.0.0.1:0", "--loop", loop_kind]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    log = LineLog(proc.stderr, "greeter.py stderr")
    try:
        m = log.wait_line(READY)
        yield m["servers"].split("=", 1)[1], log, proc
    finally:
        _stop_process(proc)
        log.join()
        proc.stderr.close()


def test_greeter_from_python(from_python: tuple[str, LineLog, subprocess.Popen[bytes]], pb: Any) -> None:
    address, log, proc = from_python
    assert say_hello(pb, address, "you").message == "Hello, you!"
    # SIGHUP rebuilds the app with make(old): the servicer instance, and its count, is kept
    mark = log.mark()
    proc.send_signal(signal.SIGHUP)
    log.wait_line(r"reload \d+ \(SIGHUP\) done: rebuilt=greeter", after=mark)
    assert say_hello(pb, address, "again").count == 2
    assert chat(pb, address, ["a", "b"]) == ["Hi a", "Hi b"]
    with pytest.raises(grpc.RpcError) as ei:
        say_hello(pb, address, "")
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert ei.value.details() == "name is empty"  # type: ignore[attr-defined]
    # the guide's client example, against the same server
    client = subprocess.run(
        [sys.executable, str(EXAMPLE / "greeter_client.py"), address], capture_output=True, text=True, timeout=60
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.splitlines() == ["Hello, monolake!", "Hi a", "Hi b", "error: INVALID_ARGUMENT name is empty"]


def test_greeter_from_toml_and_reload(proxy: ProxyFactory, tmp_path: Path, loop_kind: str, pb: Any) -> None:
    only_uvloop(loop_kind)
    for name in ("greeter.py", "greeter.proto"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    text = (EXAMPLE / "greeter.toml").read_text().replace("127.0.0.1:50051", "127.0.0.1:0")
    text += '\n[admin]\nlisten = "127.0.0.1:0"\n'  # metrics on
    p = proxy(text.replace("{", "{{").replace("}", "}}"))
    assert [say_hello(pb, p.address, "x").count for _ in range(2)] == [1, 2]
    p.log.wait_line(r"grpc server=greeter method=/greeter.Greeter/SayHello code=0")
    # calls by method and status on the admin endpoint (a worker folds its counts in once a second)
    admin = p.log.wait_line(r"admin endpoint on (http://127\.0\.0\.1:\d+)/")[1]
    want = 'monolake_grpc_server_calls_total{code="OK",method="/greeter.Greeter/SayHello",server="greeter"} 2.0'
    assert wait_for(lambda: want in httpx.get(f"{admin}/metrics", timeout=TIMEOUT).text)
    # The same module: the servicer instance (its count) is kept.
    mark = p.log.mark()
    p.proc.send_signal(signal.SIGHUP)
    p.log.wait_line(r"reload \d+ \(SIGHUP\) done: unchanged=greeter", after=mark)
    assert say_hello(pb, p.address, "x").count == 3
    # A changed module is reloaded (two-phase) and serves at once.
    module = tmp_path / "greeter.py"
    module.write_text(module.read_text().replace('f"Hello, {request.name}!"', 'f"Hello again, {request.name}!"'))
    mark = p.log.mark()
    p.proc.send_signal(signal.SIGHUP)
    p.log.wait_line(r"reload \d+ \(SIGHUP\) done: changed=greeter", after=mark)
    assert say_hello(pb, p.address, "y").message == "Hello again, y!"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"protos": ["greeter.proto"], "handler": "nocolon"}, "servers.g.rpc_grpc.handler"),
        ({"protos": [], "handler": "greeter:Greeter"}, "servers.g.rpc_grpc.protos"),
        (
            {"protos": ["greeter.proto"], "handler": "greeter:Greeter", "max_receive_message_bytes": 0},
            "servers.g.rpc_grpc.max_receive_message_bytes",
        ),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"servers": {"g": {"listener": "127.0.0.1:0", "rpc_grpc": table}}})
    assert key in str(ei.value)


def test_routes_beside_rpc_grpc_is_an_error() -> None:
    g = {"protos": ["greeter.proto"], "handler": "greeter:Greeter"}
    route = {"path": "/", "upstream": "u"}
    with pytest.raises(ConfigError) as ei:
        parse_config({"servers": {"g": {"listener": "127.0.0.1:0", "rpc_grpc": g, "routes": [route]}}})
    assert "servers.g.routes" in str(ei.value)
