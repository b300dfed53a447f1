"""examples/rpc/thrift (the guide's example): served from Python (``monolake.serve``) and from
TOML (``monolake run``), called by its own client, by Apache Thrift and by ``monolake rpc call``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thrift_support import apache_module
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TBufferedTransportFactory

from conftest import READY, REPO, LineLog, Proxy, _stop_process
from monolake.product.cli import main

EXAMPLE = REPO / "examples" / "rpc" / "thrift"


def _client_module() -> Any:
    spec = importlib.util.spec_from_file_location("kv_example_client", EXAMPLE / "client.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, LineLog]]:
    cmd = [sys.executable, str(EXAMPLE / "serve.py"), "--listen", "127.0.0.1:0", "--access-log", "stderr"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    log = LineLog(proc.stderr, "serve.py stderr")
    try:
        address = log.wait_line(READY)["servers"].split("=", 1)[1]
        yield address, log
    finally:
        _stop_process(proc)
        log.join()
        proc.stderr.close()


def test_served_from_python_called_by_the_example_client(served: tuple[str, LineLog]) -> None:
    address, log = served
    lines = asyncio.run(_client_module().run(address))
    assert lines == ["k0=v0 k1=v1 k2=v2", "k0 version 2, sent back as 2", "not found: nope", "size 3"]
    log.wait_line(r"thrift kv KV\.get seq=\d+ exception ")


def test_served_from_python_called_by_apache_and_the_cli(
    served: tuple[str, LineLog], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport

    address, _ = served
    host, port = address.rsplit(":", 1)
    gen = apache_module_kv(tmp_path)
    sock = TSocket.TSocket(host, int(port))
    sock.setTimeout(30000)
    transport = TTransport.TFramedTransport(sock)
    transport.open()
    try:
        client = gen.Client(TBinaryProtocol.TBinaryProtocolAccelerated(transport))
        entry = client.put("apache", "yes")
        assert (entry.key, entry.value) == ("apache", "yes")
    finally:
        transport.close()
    assert main(["rpc", "call", address, "KV.get", '{"key": "apache"}', "--idl", str(EXAMPLE / "kv.thrift")]) == 0
    assert json.loads(capsys.readouterr().out) == {"key": "apache", "value": "yes", "version": 1}


def apache_module_kv(tmp: Path) -> Any:
    shutil.copy(EXAMPLE / "kv.thrift", tmp / "echo.thrift")  # apache_module imports package "echo"
    text = (tmp / "echo.thrift").read_text().replace("namespace py kv", "namespace py echo")
    (tmp / "echo.thrift").write_text(text.replace("service KV", "service Echo"))
    return apache_module(tmp, tmp / "echo.thrift")


def test_served_from_toml(tmp_path: Path) -> None:
    for name in ("kv.thrift", "kv_handler.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    text = (EXAMPLE / "kv.toml").read_text().replace('listener = "127.0.0.1:9090"', 'listener = "127.0.0.1:0"')
    p = Proxy(text, tmp_path, loop="uvloop")
    try:
        mod = thriftpy2.load(str(tmp_path / "kv.thrift"), module_name="kv_example_thrift")
        host, port = p.servers["kv"].rsplit(":", 1)
        # unframed compact: detected on this connection as the framed ones are on theirs
        c = make_client(
            mod.KV, host, int(port), proto_factory=TCompactProtocolFactory(),
            trans_factory=TBufferedTransportFactory(), timeout=30000,
        )  # fmt: skip
        try:
            assert c.put("t", "1").version == 1
            with pytest.raises(mod.NotFound):
                c.get("missing")
            assert c.size() == 1
        finally:
            c.close()
        p.stdout.wait_line(r"thrift kv KV\.put seq=\d+ ok ")
    finally:
        p.close()
