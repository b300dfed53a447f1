"""The gRPC half of ``monolake rpc new`` / ``monolake rpc call`` (apps/rpc/grpc/_cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_helpers import ECHO, LoopThread, Served, echo_protos

from monolake.apps.rpc.grpc import GrpcServer, RpcError, StatusCode
from monolake.apps.rpc.grpc._cli import call, new_project

P = echo_protos()
M = P.module("grpc_echo.proto")
REPO = Path(__file__).resolve().parents[2]


class Echo:
    async def Unary(self, req: Any, ctx: Any) -> Any:
        if req.text == "invalid":
            raise RpcError(StatusCode.INVALID_ARGUMENT, "bad")
        return M.EchoReply(text=req.text.upper(), index=req.count)

    async def ServerStream(self, req: Any, ctx: Any) -> Any:
        for i in range(req.count):
            yield M.EchoReply(index=i)

    async def ClientStream(self, reqs: Any, ctx: Any) -> Any:
        return M.EchoReply(index=len([r async for r in reqs]))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    lt = LoopThread()
    s = Served(lt, GrpcServer(P, Echo()))
    yield s
    s.close()
    lt.close()


def test_call_with_json(served: Served) -> None:
    out = call(served.address, ECHO, "Echo.Unary", '{"text": "hi", "count": 3}')
    assert json.loads(out) == {"text": "HI", "index": 3}
    out = call(served.address, ECHO, "monolake.test.Echo.ServerStream", '{"count": 2}')
    assert json.loads(out) == [{}, {"index": 1}]  # proto3 JSON leaves out zero values
    out = call(served.address, ECHO, "Echo.ClientStream", "[{}, {}, {}]")
    assert json.loads(out) == {"index": 3}
    with pytest.raises(RpcError) as ei:
        call(served.address, ECHO, "Echo.Unary", '{"text": "invalid"}')
    assert ei.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError, match=r"has no method 'Echo\.Nope'"):
        call(served.address, ECHO, "Echo.Nope", "{}")
    with pytest.raises(Exception, match="nosuchfield"):
        call(served.address, ECHO, "Echo.Unary", '{"nosuchfield": 1}')


def test_the_cli_dispatches_proto_to_grpc(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    from monolake.product.cli import main

    assert main(["rpc", "call", served.address, "Echo.Unary", '{"text": "cli"}', "--idl", str(ECHO)]) == 0
    assert json.loads(capsys.readouterr().out) == {"text": "CLI"}


def test_new_project_is_runnable(tmp_path: Path) -> None:
    root = new_project("echo-svc", ECHO, tmp_path)
    module = (root / "echo_svc_service.py").read_text()
    for method in ("Unary", "ServerStream", "ClientStream", "Bidi", "Nothing"):
        assert f"async def {method}(" in module
    assert 'handler = "echo_svc_service:SERVICERS"' in (root / "monolake.toml").read_text()
    # the generated test passes as generated (it calls the first unary method); run without
    # pytest's own start-up, which is most of the time here
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-c", "import test_echo_svc as t; t.test_unary(); print('called')"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "called" in r.stdout
    with pytest.raises(FileExistsError):
        new_project("echo-svc", ECHO, tmp_path)
