"""``monolake rpc new`` (a project whose own test passes) and ``monolake rpc call`` (JSON in and out)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thrift_support import Handler, LoopThread, start_server, stop_server, write_idl

from monolake.apps.config import Server
from monolake.apps.rpc.thrift._cli import call
from monolake.product.cli import main
from monolake.rpc import ThriftService, build_server


def test_rpc_new_writes_a_project_whose_test_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idl = write_idl(tmp_path)
    assert main(["rpc", "new", "svc", "--idl", str(idl), "--dest", str(tmp_path / "out")]) == 0
    project = tmp_path / "out" / "svc"
    assert "monolake run -c monolake.toml" in capsys.readouterr().out
    assert sorted(p.name for p in project.iterdir()) == [
        "echo.thrift",
        "monolake.toml",
        "svc_handler.py",
        "test_svc.py",
    ]
    handler = (project / "svc_handler.py").read_text()
    for method in ("echo", "item", "add", "slow", "boom", "meta", "nothing"):
        assert f"async def {method}(self" in handler
    assert "    def fire(self, msg) -> None:" in handler  # oneway: a plain def
    assert 'handler = "svc_handler:Handler"' in (project / "monolake.toml").read_text()
    # The project's config is valid as it stands, and its test passes.
    assert main(["check", "-c", str(project / "monolake.toml")]) == 0
    spec = importlib.util.spec_from_file_location("test_svc_generated", project / "test_svc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        mod.test_svc()
    finally:
        sys.modules.pop("svc_handler", None)
        while str(project) in sys.path:
            sys.path.remove(str(project))


def test_rpc_new_refuses_an_existing_directory_and_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idl = write_idl(tmp_path)
    (tmp_path / "taken").mkdir()
    assert main(["rpc", "new", "taken", "--idl", str(idl), "--dest", str(tmp_path)]) == 2
    assert main(["rpc", "new", "not-a-name", "--idl", str(idl), "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "exists already" in err and "is not a Python identifier" in err


class Env:
    def __init__(self, tmp: Path) -> None:
        self.idl = write_idl(tmp)
        self.mod = thriftpy2.load(str(self.idl), module_name="echo_cli_thrift")
        self.lt = LoopThread()
        self.app = build_server(
            "cli", Server(listener="127.0.0.1:0"), ThriftService(self.mod.Echo, Handler(self.mod.Oops))
        )
        self.srv, self.port = start_server(self.lt, self.app)
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        stop_server(self.lt, self.srv, self.app)
        self.lt.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("cli"))
    yield e
    e.close()


def test_rpc_call_prints_the_json_answer(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rpc", "call", env.address, "Echo.echo", '{"msg": "hé"}', "--idl", str(env.idl)]) == 0
    assert json.loads(capsys.readouterr().out) == "hé"
    item = {"id": 3, "name": "x", "tags": ["a"], "scores": {"k": 1}}
    assert main(["rpc", "call", env.address, "Echo.item", json.dumps({"it": item}), "--idl", str(env.idl)]) == 0
    assert json.loads(capsys.readouterr().out) == {**item, "tags": ["a", "seen"], "scores": {"k": 1.0}}


@pytest.mark.parametrize(
    ("method", "args", "expected"),
    [
        ("add", "[2, 3]", 5),
        ("item", '{"it": {"id": 1, "name": "bad"}}', {"Oops": {"why": "bad item 1"}}),
        ("nothing", "", None),
    ],
)
def test_call_function(env: Env, method: str, args: str, expected: Any) -> None:
    assert json.loads(call(env.address, str(env.idl), method, args)) == expected


def test_rpc_call_errors(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    idl = str(env.idl)
    assert main(["rpc", "call", env.address, "Echo.nope", "{}", "--idl", idl]) == 2
    assert "has no method 'nope'" in capsys.readouterr().err
    assert main(["rpc", "call", env.address, "Echo.add", '{"a": "x"}', "--idl", idl]) == 1
    assert "add.a: expected an integer" in capsys.readouterr().err
    assert main(["rpc", "call", env.address, "Echo.boom", '{"why": "w"}', "--idl", idl]) == 1
    assert "TApplicationException" in capsys.readouterr().err
