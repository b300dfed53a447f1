"""Tracing on the RPC framework: client → our server → our client → upstream server, for gRPC and
for Thrift, the spans received by the OTLP receiver and linked parent to child across the chain;
retries are client spans of their own; errors are error spans; the TOML ``tracing`` tables (the
docs' examples) serve traced calls and their bad values are key-path errors."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto", reason="the OTLP receiver decodes with opentelemetry-proto")
pytest.importorskip("grpc_tools", reason="the gRPC services compile their .proto with grpcio-tools")
pytest.importorskip("thriftpy2", reason="the RPC framework's thrift services need thriftpy2")

from monolake.apps.config import Server, parse_config
from monolake.apps.edge.tracing import RpcTracing
from monolake.apps.rpc.grpc import GrpcClient, GrpcServer, RpcError, StatusCode, load_protos
from monolake.apps.rpc.thrift._server import build_server
from monolake.apps.rpc.tracing import GrpcClientTracing, GrpcServerTracing, ThriftClientTracing
from monolake.core.errors import ConfigError
from monolake.core.server._service_app import build_http_app
from monolake.rpc import ThriftClient, ThriftService, metainfo

from ._support import InProcessProxy, LoopThread
from .test_tracing import Receiver

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "tests" / "rpc" / "protos"
EXAMPLES = REPO / "examples" / "rpc"
SERVER, CLIENT = 2, 3  # Span.SpanKind

IDL = """\
service Chain {
  string onward(1: string text),
  string boom(),
}
"""


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.int_value if v.WhichOneof("value") == "int_value" else v.string_value
    return out


def wait_spans(receiver: Receiver, pred: Any) -> list[Any]:
    """The received spans once ``pred`` holds for them (a readiness wait on the export thread)."""
    deadline = time.monotonic() + 30
    while not pred(receiver.spans):
        assert time.monotonic() < deadline, [s.name for s in receiver.spans]
        time.sleep(0.02)
    return list(receiver.spans)


def flush() -> None:
    """Wake every export thread now (the examples' layers keep the default 1 s export interval)."""
    from monolake.apps.edge import tracing

    for t in list(tracing._INSTANCES):
        if t._exporter is not None:
            t._exporter.wake.set()


def of_trace(spans: list[Any], trace: bytes) -> list[Any]:
    return [s for s in spans if s.trace_id == trace]


def refused_address() -> str:
    """A 127.0.0.1 port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, Receiver]]:
    lt = LoopThread()
    receiver = Receiver(lt)
    yield lt, receiver
    receiver.close()
    lt.close()


def settings(receiver: Receiver, name: str) -> dict[str, Any]:
    return {"endpoint": receiver.url, "export_interval": 0.05, "service_name": name}


# -- gRPC -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_chain(env: tuple[LoopThread, Receiver]) -> Iterator[dict[str, Any]]:
    lt, receiver = env
    protos = load_protos([PROTOS / "grpc_echo.proto"], [PROTOS])
    pb = protos.module("grpc_echo.proto")
    seen: list[dict[str, str]] = []

    class Upstream:
        async def Unary(self, request: Any, context: Any) -> Any:
            seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            if request.text == "fail":
                raise RpcError(StatusCode.INTERNAL, "upstream failed")
            return pb.EchoReply(text=request.text)

        async def ServerStream(self, request: Any, context: Any) -> Any:
            for i in range(2):
                yield pb.EchoReply(text=request.text, index=i)
            if request.text == "fail":
                raise RpcError(StatusCode.DATA_LOSS, "lost the rest")

    out: dict[str, Any] = {"pb": pb, "seen": seen}

    class Middle:
        async def Unary(self, request: Any, context: Any) -> Any:
            reply = await out["onward"].unary("Echo.Unary", pb.EchoRequest(text=request.text))
            return pb.EchoReply(text=reply.text)

    async def listen(factory: GrpcServer, name: str) -> tuple[Any, Any, str]:
        import asyncio

        layer = GrpcServerTracing(**settings(receiver, name))
        app = build_http_app(name, Server(listener="127.0.0.1:0"), factory, [layer])
        srv = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
        return app, srv, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    async def start() -> None:
        up = await listen(GrpcServer(protos, Upstream(), health=False, reflection=False), "upstream")
        mid = await listen(GrpcServer(protos, Middle(), health=False, reflection=False), "middle")
        out["servers"] = [up, mid]
        client_layer = GrpcClientTracing(**settings(receiver, "middle"))
        # The middle's client: a dead endpoint beside the live one, so some calls retry.
        out["onward"] = GrpcClient(protos, [refused_address(), up[2]], inner_layers=[client_layer], attempts=3)
        out["client"] = GrpcClient(protos, [mid[2]], inner_layers=[GrpcClientTracing(**settings(receiver, "caller"))])

    lt.run(start())
    yield out

    async def stop() -> None:
        for c in (out["onward"], out["client"]):
            await c.aclose()
        for app, srv, _ in out["servers"]:
            srv.close()
            app.close()

    lt.run(stop())


def test_grpc_chain_links_spans_and_retries(env: tuple[LoopThread, Receiver], grpc_chain: dict[str, Any]) -> None:
    lt, receiver = env
    pb = grpc_chain["pb"]

    async def calls() -> list[str]:
        return [(await grpc_chain["client"].unary("Echo.Unary", pb.EchoRequest(text=f"t{i}"))).text for i in range(4)]

    def roots(ss: list[Any]) -> list[Any]:  # this test's callers' spans (not other tests')
        return [s for s in ss if s.kind == CLIENT and not s.parent_span_id and s.span_id not in earlier]

    earlier = {s.span_id for s in receiver.spans}
    assert lt.run(calls()) == ["t0", "t1", "t2", "t3"]
    found = roots(wait_spans(receiver, lambda ss: len(roots(ss)) >= 4))
    assert len(found) == 4
    retried = 0
    for root in found:
        # caller CLIENT -> middle SERVER -> middle CLIENT per try -> upstream SERVER (of the last try)
        spans = wait_spans(
            receiver, lambda ss, t=root.trace_id: len([s for s in of_trace(ss, t) if s.kind == SERVER]) >= 2
        )
        trace = of_trace(spans, root.trace_id)
        a = attrs(root)
        assert root.name == "monolake.test.Echo/Unary"
        assert a["rpc.system"] == "grpc" and a["rpc.service"] == "monolake.test.Echo" and a["rpc.grpc.status_code"] == 0
        assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
        (middle,) = [s for s in trace if s.kind == SERVER and s.parent_span_id == root.span_id]
        assert attrs(middle)["rpc.grpc.status_code"] == 0 and attrs(middle)["client.address"]
        tries = sorted((s for s in trace if s.kind == CLIENT and s.parent_span_id == middle.span_id), key=attrs_try)
        assert tries and len({s.span_id for s in tries}) == len(tries)
        for failed in tries[:-1]:  # a refused connect: UNAVAILABLE, an error, retried
            fa = attrs(failed)
            assert fa["rpc.grpc.status_code"] == StatusCode.UNAVAILABLE and fa["error.type"] == "14"
            assert failed.status.code == failed.status.STATUS_CODE_ERROR
        last = tries[-1]
        assert attrs(last)["rpc.grpc.status_code"] == 0 and last.status.code != last.status.STATUS_CODE_ERROR
        assert attrs(last).get("monolake.rpc.attempt", 0) == len(tries) - 1
        retried += len(tries) > 1
        (upstream,) = [s for s in trace if s.kind == SERVER and s.parent_span_id == last.span_id]
        assert upstream.name == "monolake.test.Echo/Unary"
    assert retried >= 1  # round robin over [dead, live]: some call's first try was the dead one
    # what the upstream handler received: the last try's context
    tps = [md["traceparent"] for md in grpc_chain["seen"]]
    assert all(tp.startswith("00-") and tp.endswith("-01") for tp in tps)
    names = {kv.value.string_value for r in receiver.resources for kv in r.attributes if kv.key == "service.name"}
    assert {"caller", "middle", "upstream"} <= names


def attrs_try(span: Any) -> int:
    return int(attrs(span).get("monolake.rpc.attempt", 0))


def test_grpc_error_is_an_error_span_on_each_hop(env: tuple[LoopThread, Receiver], grpc_chain: dict[str, Any]) -> None:
    lt, receiver = env
    pb = grpc_chain["pb"]

    async def call() -> RpcError:
        try:
            await grpc_chain["client"].unary("Echo.Unary", pb.EchoRequest(text="fail"), address=None)
        except RpcError as exc:
            return exc
        raise AssertionError("the call succeeded")

    err = lt.run(call())
    assert err.code == StatusCode.INTERNAL  # the upstream's status, re-raised by the middle's handler

    def failed_servers(ss: list[Any]) -> list[Any]:
        return [s for s in ss if s.kind == SERVER and attrs(s).get("rpc.grpc.status_code") == StatusCode.INTERNAL]

    servers = failed_servers(wait_spans(receiver, lambda ss: len(failed_servers(ss)) >= 2))
    assert len({s.trace_id for s in servers}) == 1 and all(attrs(s)["error.type"] == "13" for s in servers)
    trace = of_trace(wait_spans(receiver, lambda ss: len(of_trace(ss, servers[0].trace_id)) >= 4), servers[0].trace_id)
    for s in trace:  # caller and middle CLIENT spans, middle and upstream SERVER spans
        assert s.status.code == s.status.STATUS_CODE_ERROR, (s.name, attrs(s))


def test_grpc_stream_span_ends_with_the_stream(env: tuple[LoopThread, Receiver], grpc_chain: dict[str, Any]) -> None:
    lt, receiver = env
    pb = grpc_chain["pb"]
    upstream = grpc_chain["servers"][0][2]

    async def stream(text: str) -> list[int]:
        got = []
        try:
            async for r in grpc_chain["client"].server_stream(
                "Echo.ServerStream", pb.EchoRequest(text=text), address=upstream
            ):
                got.append(r.index)
        except RpcError as exc:
            assert exc.code == StatusCode.DATA_LOSS
        return got

    assert lt.run(stream("ok")) == [0, 1]
    assert lt.run(stream("fail")) == [0, 1]

    def streams(ss: list[Any]) -> list[Any]:
        return [s for s in ss if s.kind == SERVER and s.name == "monolake.test.Echo/ServerStream"]

    ok, failed = sorted(
        streams(wait_spans(receiver, lambda ss: len(streams(ss)) >= 2)), key=lambda s: s.start_time_unix_nano
    )
    # the span lasts until the stream's status, which it records (the head went out before it)
    assert attrs(ok)["rpc.grpc.status_code"] == 0 and ok.status.code != ok.status.STATUS_CODE_ERROR
    assert attrs(failed)["rpc.grpc.status_code"] == StatusCode.DATA_LOSS and attrs(failed)["error.type"] == "15"
    assert failed.status.code == failed.status.STATUS_CODE_ERROR


# -- Thrift -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thrift_chain(
    env: tuple[LoopThread, Receiver], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    lt, receiver = env
    idl = tmp_path_factory.mktemp("rpc-chain") / "chain.thrift"
    idl.write_text(IDL)
    out: dict[str, Any] = {"seen": [], "idl": str(idl)}

    class Upstream:
        async def onward(self, text: str) -> str:
            out["seen"].append(metainfo().upstream.get("traceparent"))
            return text

        async def boom(self) -> str:
            raise RuntimeError("no")

    class Middle:
        async def onward(self, text: str) -> str:
            return str(await out["onward"].call("onward", text))

        async def boom(self) -> str:
            return str(await out["onward"].call("boom"))

    async def listen(handler: Any, name: str) -> tuple[Any, Any, str]:
        import asyncio

        service = ThriftService(str(idl), handler, layers=[RpcTracing(**settings(receiver, name))])
        app = build_server(name, Server(listener="127.0.0.1:0", proxy_type="thrift"), service)
        srv = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
        return app, srv, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    async def start() -> None:
        up = await listen(Upstream(), "t-upstream")
        mid = await listen(Middle(), "t-middle")
        out["servers"] = [up, mid]
        layer = ThriftClientTracing(**settings(receiver, "t-middle"))
        out["onward"] = ThriftClient(str(idl), [refused_address(), up[2]], inner_layers=[layer], timeout=30)
        caller = ThriftClientTracing(**settings(receiver, "t-caller"))
        out["client"] = ThriftClient(str(idl), [mid[2]], inner_layers=[caller], timeout=30)

    lt.run(start())
    yield out

    async def stop() -> None:
        for c in (out["onward"], out["client"]):
            c.close()
        for app, srv, _ in out["servers"]:
            srv.close()
            app.close()

    lt.run(stop())


def test_thrift_chain_links_spans_and_retries(env: tuple[LoopThread, Receiver], thrift_chain: dict[str, Any]) -> None:
    lt, receiver = env

    async def calls() -> list[str]:
        return [await thrift_chain["client"].call("onward", f"t{i}") for i in range(4)]

    def roots(ss: list[Any]) -> list[Any]:  # this test's callers' spans (not other tests')
        return [s for s in ss if s.kind == CLIENT and not s.parent_span_id and s.span_id not in earlier]

    earlier = {s.span_id for s in receiver.spans}
    assert lt.run(calls()) == ["t0", "t1", "t2", "t3"]
    found = roots(wait_spans(receiver, lambda ss: len(roots(ss)) >= 4))
    assert len(found) == 4
    retried = 0
    for root in found:
        a = attrs(root)
        assert a["rpc.system"] == "apache_thrift" and a["rpc.service"] == "Chain" and a["rpc.method"] == "onward"
        spans = wait_spans(
            receiver, lambda ss, t=root.trace_id: len([s for s in of_trace(ss, t) if s.kind == SERVER]) >= 2
        )
        trace = of_trace(spans, root.trace_id)
        (middle,) = [s for s in trace if s.kind == SERVER and s.parent_span_id == root.span_id]
        tries = sorted(
            (s for s in trace if s.kind == CLIENT and s.parent_span_id == middle.span_id),
            key=lambda s: s.start_time_unix_nano,
        )
        for failed in tries[:-1]:  # the refused endpoint: ConnectError, retried on the other
            assert attrs(failed)["error.type"] == "ConnectError"
            assert failed.status.code == failed.status.STATUS_CODE_ERROR
        last = tries[-1]
        assert "error.type" not in attrs(last) and attrs(last).get("monolake.rpc.attempt", 0) == len(tries) - 1
        retried += len(tries) > 1
        (upstream,) = [s for s in trace if s.kind == SERVER and s.parent_span_id == last.span_id]
        assert upstream.name == "Chain/onward"
        tp = f"00-{root.trace_id.hex()}-{last.span_id.hex()}-01"
        assert tp in thrift_chain["seen"]  # TTHeader RPC_TRANSIT_traceparent, as the upstream read it
    assert retried >= 1


def test_thrift_error_is_an_error_span(env: tuple[LoopThread, Receiver], thrift_chain: dict[str, Any]) -> None:
    lt, receiver = env

    async def call() -> Exception:
        try:
            await thrift_chain["client"].call("boom")
        except Exception as exc:
            return exc
        raise AssertionError("the call succeeded")

    lt.run(call())

    def upstream_failed(ss: list[Any]) -> list[Any]:
        return [
            s
            for s in ss
            if s.name == "Chain/boom" and s.kind == SERVER and attrs(s).get("error.type") == "RuntimeError"
        ]

    def ready(ss: list[Any]) -> bool:  # the upstream's span and the caller's (the last to end)
        ups = upstream_failed(ss)
        return bool(ups) and any(s.kind == CLIENT and not s.parent_span_id for s in of_trace(ss, ups[0].trace_id))

    spans = wait_spans(receiver, ready)
    (up,) = upstream_failed(spans)
    trace = of_trace(spans, up.trace_id)
    assert len(trace) >= 4  # caller CLIENT, middle SERVER, middle CLIENT (per try), upstream SERVER
    for s in trace:  # the handler's exception, then the TApplicationException it became on each hop
        assert s.status.code == s.status.STATUS_CODE_ERROR and attrs(s)["error.type"], (s.name, attrs(s))


def test_grpc_handler_calling_thrift_continues_the_trace(
    env: tuple[LoopThread, Receiver], grpc_chain: dict[str, Any], thrift_chain: dict[str, Any]
) -> None:
    lt, receiver = env
    pb = grpc_chain["pb"]
    upstream = thrift_chain["servers"][0][2]
    out: dict[str, Any] = {}

    class Mixed:
        async def Unary(self, request: Any, context: Any) -> Any:
            return pb.EchoReply(text=str(await out["thrift"].call("onward", request.text)))

    async def start() -> str:
        import asyncio

        protos = load_protos([PROTOS / "grpc_echo.proto"], [PROTOS])
        factory = GrpcServer(protos, Mixed(), health=False, reflection=False)
        layer = GrpcServerTracing(**settings(receiver, "mixed"))
        app = build_http_app("mixed", Server(listener="127.0.0.1:0"), factory, [layer])
        srv = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
        out["thrift"] = ThriftClient(
            thrift_chain["idl"], [upstream], inner_layers=[ThriftClientTracing(**settings(receiver, "mixed"))]
        )
        out["stop"] = (app, srv)
        return f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    address = lt.run(start())
    try:
        reply = lt.run(grpc_chain["client"].unary("Echo.Unary", pb.EchoRequest(text="across"), address=address))
        assert reply.text == "across"

        def across(ss: list[Any]) -> list[Any]:
            """Thrift server spans in a trace with a gRPC server span and a Thrift client span."""
            found = []
            for s in ss:
                if s.kind == SERVER and s.name == "Chain/onward":
                    names = {(g.kind, g.name) for g in of_trace(ss, s.trace_id)}
                    if {(SERVER, "monolake.test.Echo/Unary"), (CLIENT, "Chain/onward")} <= names:
                        found.append(s)
            return found

        spans = wait_spans(receiver, lambda ss: bool(across(ss)))
        (thrift_server,) = across(spans)
        trace = of_trace(spans, thrift_server.trace_id)
        (grpc_server,) = [s for s in trace if s.kind == SERVER and s.name == "monolake.test.Echo/Unary"]
        (thrift_client,) = [s for s in trace if s.kind == CLIENT and s.name == "Chain/onward"]
        # gRPC server span -> Thrift client span -> Thrift server span, one trace across protocols
        assert thrift_client.parent_span_id == grpc_server.span_id
        assert thrift_server.parent_span_id == thrift_client.span_id
    finally:

        async def stop() -> None:
            out["thrift"].close()
            app, srv = out["stop"]
            srv.close()
            app.close()

        lt.run(stop())


# -- TOML: the docs' examples ------------------------------------------------------------------


def example(path: Path, receiver: Receiver) -> dict[str, Any]:
    import tomllib

    raw = tomllib.loads(path.read_text())
    for server in raw["servers"].values():
        server["listener"] = "127.0.0.1:0"
        for key in ("rpc_grpc", "rpc_thrift"):
            if key in server:
                server[key]["tracing"] |= {"endpoint": receiver.url, "export_interval": 0.05}
    return raw


def test_toml_examples_serve_traced_calls(env: tuple[LoopThread, Receiver], monkeypatch: pytest.MonkeyPatch) -> None:
    lt, receiver = env
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import traced

    grpc_proxy = InProcessProxy(lt, example(EXAMPLES / "grpc" / "greeter_tracing.toml", receiver), EXAMPLES / "grpc")
    kv_proxy = InProcessProxy(lt, example(EXAMPLES / "thrift" / "kv_tracing.toml", receiver), EXAMPLES / "thrift")
    try:
        grpc_addr = grpc_proxy.url.removeprefix("http://")
        kv_addr = kv_proxy.url.removeprefix("http://")

        async def calls() -> tuple[str, str]:
            g = traced.greeter_client(grpc_addr, receiver.url)
            k = traced.kv_client(kv_addr, receiver.url)
            try:
                pb = g.protos.module("greeter.proto")
                hello = await g.unary("Greeter.SayHello", pb.HelloRequest(name="you"))
                entry = await k.call("put", "a", "b")
                return hello.message, entry.value
            finally:
                await g.aclose()
                k.close()

        assert lt.run(calls()) == ("Hello, you!", "b")
        flush()
        for server_name in ("greeter.Greeter/SayHello", "KV/put"):
            spans = wait_spans(receiver, lambda ss, n=server_name: len({s.kind for s in ss if s.name == n}) == 2)
            (server,) = [s for s in spans if s.name == server_name and s.kind == SERVER]
            (client,) = [s for s in spans if s.name == server_name and s.kind == CLIENT]
            assert server.parent_span_id == client.span_id and server.trace_id == client.trace_id
    finally:
        grpc_proxy.close()
        kv_proxy.close()
        sys.modules.pop("traced", None)


def test_python_example_serves_traced_calls(env: tuple[LoopThread, Receiver], monkeypatch: pytest.MonkeyPatch) -> None:
    lt, receiver = env
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(EXAMPLES / "grpc"))
    had_greeter = "greeter" in sys.modules
    import traced

    app = traced.greeter_app("127.0.0.1:0", receiver.url)
    http = build_http_app(app.name, Server(listener="127.0.0.1:0"), app.factory, app.layers)

    async def call() -> str:
        import asyncio

        srv = await asyncio.get_running_loop().create_server(http.protocol_factory, "127.0.0.1", 0)
        client = traced.greeter_client(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", receiver.url)
        try:
            pb = client.protos.module("greeter.proto")
            return str((await client.unary("Greeter.SayHello", pb.HelloRequest(name="py"))).message)
        finally:
            await client.aclose()
            srv.close()
            http.close()

    def pairs(ss: list[Any]) -> list[tuple[Any, Any]]:
        named = [s for s in ss if s.name == "greeter.Greeter/SayHello"]
        return [(c, s) for c in named for s in named if c.kind == CLIENT and s.parent_span_id == c.span_id]

    before = len(pairs(receiver.spans))  # the TOML example's test makes one too
    try:
        assert lt.run(call()) == "Hello, py!"
        flush()
    finally:
        sys.modules.pop("traced", None)
        if not had_greeter:  # the example's import, from the path this test put first
            sys.modules.pop("greeter", None)

    (client_span, server_span) = pairs(wait_spans(receiver, lambda ss: len(pairs(ss)) > before))[-1]
    assert server_span.kind == SERVER and server_span.trace_id == client_span.trace_id


@pytest.mark.parametrize(
    ("kind", "table", "key"),
    [
        ("rpc_grpc", {"sample_ratio": 2.0}, "servers.s.rpc_grpc.tracing.sample_ratio"),
        ("rpc_grpc", {"endpoint": "collector:4318"}, "servers.s.rpc_grpc.tracing.endpoint"),
        ("rpc_thrift", {"batch": "many"}, "servers.s.rpc_thrift.tracing.batch"),
        ("rpc_thrift", {"sampling": 1}, "servers.s.rpc_thrift.tracing"),
    ],
)
def test_tracing_table_errors_name_the_key(kind: str, table: dict[str, Any], key: str) -> None:
    if kind == "rpc_grpc":
        server = {"listener": "127.0.0.1:0", "rpc_grpc": {"protos": ["greeter.proto"], "handler": "greeter:Greeter"}}
        base = EXAMPLES / "grpc"
    else:
        server = {
            "listener": "127.0.0.1:0",
            "proxy_type": "thrift",
            "rpc_thrift": {"idl": "kv.thrift", "handler": "kv_handler:KV"},
        }
        base = EXAMPLES / "thrift"
    server[kind]["tracing"] = table  # type: ignore[index]
    with pytest.raises(ConfigError) as ei:
        parse_config({"servers": {"s": server}}, base_dir=base)
    assert key in str(ei.value)
