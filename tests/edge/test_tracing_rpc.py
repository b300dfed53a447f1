"""``RpcTracing`` on the RPC framework's thrift service: the caller's traceparent metainfo (sent by a
``ThriftClient`` as TTHeader ``RPC_TRANSIT_traceparent``) is the SERVER span's parent, and the
handler's own calls would carry the server span as theirs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto", reason="the OTLP receiver decodes with opentelemetry-proto")
pytest.importorskip("thriftpy2", reason="the RPC framework's thrift services need thriftpy2")

from monolake.apps.config import Server
from monolake.apps.edge.tracing import RpcTracing
from monolake.apps.rpc.thrift._server import build_server
from monolake.rpc import ThriftClient, ThriftService, metainfo

from ._support import LoopThread
from .test_tracing import PID, TID, Receiver

IDL = """\
service Traced {
  string onward(1: string key),
  string boom(),
}
"""


class Handler:
    async def onward(self, key: str) -> str:
        return metainfo().get(key) or ""  # what a call made from here would send on

    async def boom(self) -> str:
        raise RuntimeError("no")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, Receiver, Path, str]]:
    idl = tmp_path_factory.mktemp("rpc-trace") / "traced.thrift"
    idl.write_text(IDL)
    lt = LoopThread()
    receiver = Receiver(lt)
    layer = RpcTracing(endpoint=receiver.url, export_interval=0.05, service_name="rpc")
    app = build_server(
        "rpc", Server(listener="127.0.0.1:0", proxy_type="thrift"), ThriftService(str(idl), Handler(), layers=[layer])
    )

    async def listen() -> Any:
        return await lt.loop.create_server(app.protocol_factory, "127.0.0.1", 0)

    srv = lt.run(listen())
    yield lt, receiver, idl, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    async def stop() -> None:
        srv.close()
        app.close()
        await srv.wait_closed()

    lt.run(stop())
    receiver.close()
    lt.close()


def test_rpc_server_span_parent_and_onward_context(env: Any) -> None:
    lt, receiver, idl, address = env

    async def calls() -> tuple[str, Exception | None]:
        client = ThriftClient(str(idl), [address], timeout=30)
        try:
            metainfo().set_transient("traceparent", f"00-{TID}-{PID}-01")
            onward = await client.call("onward", "traceparent")
            try:
                await client.call("boom")
            except Exception as exc:  # the handler's error, answered as a TApplicationException
                return onward, exc
            return onward, None
        finally:
            client.close()

    onward, raised = lt.run(calls())
    assert raised is not None
    deadline = time.monotonic() + 30
    while len(receiver.spans) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    spans = {s.name: s for s in receiver.spans}
    ok, failed = spans["Traced/onward"], spans["Traced/boom"]
    assert ok.kind == ok.SPAN_KIND_SERVER and ok.trace_id.hex() == TID and ok.parent_span_id.hex() == PID
    assert onward == f"00-{TID}-{ok.span_id.hex()}-01"  # the handler's calls are the span's children
    attrs = {a.key: a.value.string_value for a in failed.attributes}
    assert attrs["rpc.method"] == "boom" and attrs["error.type"] == "RuntimeError"
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
