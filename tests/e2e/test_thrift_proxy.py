"""The Thrift proxy over real sockets through ``monolake run``, on both loop kinds.

Peers (tests/e2e/thrift_peers.py): thriftpy2 and Apache Thrift servers and
clients (Apache's from code ``thrift --gen py`` generates at test time into a tmp
dir), and a TTHeader server/client pair built on thriftpy2's protocols with
monolake.core.proto.thrift framing. Every transport (framed, THeader, TTHeader) and
protocol (binary, compact) goes through the proxy; so do exceptions, oneway calls,
many concurrent calls over a few multiplexed upstream connections, and the
proxy's own failures, which reach the client as TApplicationException replies.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import pytest
from thrift_peers import (
    ApacheServer,
    ThriftpyServer,
    TTClient,
    TTHeaderServer,
    Upstream,
    apache_client,
    calc,
    generate_apache,
    thriftpy_client,
)
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TTransportException

from conftest import Proxy, ProxyFactory, refused_port
from monolake.core.proto.thrift import ThriftProtocol, encode_framed, message_begin

pytestmark = pytest.mark.e2e

PROTOCOLS = ["binary", "compact"]


@pytest.fixture(scope="session")
def apache_gen(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    if shutil.which("thrift") is None:
        pytest.skip("the thrift compiler is not installed (CI installs thrift-compiler)")
    return generate_apache(tmp_path_factory.mktemp("thrift-gen"))


@pytest.fixture(scope="module")
def ups(apache_gen: ModuleType) -> Iterator[dict[str, Upstream]]:
    started: dict[str, Upstream] = {
        "tpy_binary": ThriftpyServer("tpy_binary", "binary"),
        "tpy_compact": ThriftpyServer("tpy_compact", "compact"),
        "apache_framed_binary": ApacheServer(apache_gen, "apache_framed_binary", "framed", "binary"),
        "apache_framed_compact": ApacheServer(apache_gen, "apache_framed_compact", "framed", "compact"),
        "apache_theader_binary": ApacheServer(apache_gen, "apache_theader_binary", "theader", "binary"),
        "apache_theader_compact": ApacheServer(apache_gen, "apache_theader_compact", "theader", "compact"),
        "tt": TTHeaderServer("tt"),
        "tt_other": TTHeaderServer("tt_other"),
    }
    yield started
    for up in started.values():
        up.close()


SERVERS = """
[runtime]
drain_timeout = 10

[upstreams.tt]
endpoints = [{ endpoint = "{tt}" }]

[servers.{name}]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.{name}.routes]]
upstreams = [{ endpoint = "{up}" }]
"""

CONFIG = """
[runtime]
drain_timeout = 10

[upstreams.tt]
endpoints = [{ endpoint = "{tt}" }]
connect_timeout = 2.0

[servers.routed]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.routed.routes]]
thrift_service = "Other"
upstreams = [{ endpoint = "{tt_other}" }]
[[servers.routed.routes]]
thrift_method = ["add", "get", "slow", "note", "seen", "who"]
upstream = "tt"

[servers.pp]
listener = "127.0.0.1:0"
proxy_type = "thrift"
proxy_protocol = "v1"
[[servers.pp.routes]]
thrift_method = "add"
upstream = "tt"

[servers.dead]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.dead.routes]]
upstreams = [{ endpoint = "127.0.0.1:{dead_port}" }]

[servers.timeout]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.timeout.routes]]
upstreams = [{ endpoint = "{tpy_binary}" }]
timeout = 0.5

[servers.small]
listener = "127.0.0.1:0"
proxy_type = "thrift"
max_frame_size = 1024
[[servers.small.routes]]
upstreams = [{ endpoint = "{tpy_binary}" }]
"""


@pytest.fixture(scope="module")
def thrift_proxy(module_proxy: ProxyFactory, ups: dict[str, Upstream]) -> Proxy:
    text = CONFIG
    for name in ups:
        text += f"""
[servers.via_{name}]
listener = "127.0.0.1:0"
proxy_type = "thrift"
upstream_connections = 2
upstream_in_flight = 8
[[servers.via_{name}.routes]]
upstreams = [{{ endpoint = "{ups[name].address}" }}]
"""
    return module_proxy(text, dead_port=refused_port(), **{k: u.address for k, u in ups.items()})


def addr(proxy: Proxy, server: str) -> str:
    return proxy.servers[server]


# -- every transport and protocol --------------------------------------------------------


def exercise(client: Any, boom: type[BaseException], handler: Any, tag: str) -> None:
    """The same calls whatever the client library."""
    assert client.add(2, 40) == 42
    assert client.echo("héllo ✓") == "héllo ✓"
    item = client.get(7)
    assert (item.id, item.name, item.tags) == (7, "item7", ["a", "7"])
    with pytest.raises(boom) as info:
        client.get(-3)
    assert (info.value.why, info.value.code) == ("no item -3", 3)  # type: ignore[attr-defined]
    client.note(f"{tag}-1")
    client.note(f"{tag}-2")
    assert client.who() == handler.name  # after the oneway calls on the same connection
    assert [n for n in handler.wait_notes(2) if n.startswith(tag)][-2:] == [f"{tag}-1", f"{tag}-2"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_thriftpy2_framed(thrift_proxy: Proxy, ups: dict[str, Upstream], protocol: str) -> None:
    up = ups[f"tpy_{protocol}"]
    client = thriftpy_client(addr(thrift_proxy, f"via_tpy_{protocol}"), protocol)
    try:
        exercise(client, calc.Boom, up.handler, f"tpy-{protocol}-{thrift_proxy.pid}")
    finally:
        client.close()


@pytest.mark.parametrize("transport", ["framed", "theader"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_apache_generated_code(
    thrift_proxy: Proxy, ups: dict[str, Upstream], apache_gen: ModuleType, transport: str, protocol: str
) -> None:
    import calc.ttypes as ttypes  # generated by the apache_gen fixture

    name = f"apache_{transport}_{protocol}"
    client, trans = apache_client(addr(thrift_proxy, f"via_{name}"), transport, protocol)
    try:
        exercise(client, ttypes.Boom, ups[name].handler, f"{name}-{thrift_proxy.pid}")
    finally:
        trans.close()


@pytest.mark.parametrize("protocol", [ThriftProtocol.BINARY, ThriftProtocol.COMPACT])
def test_ttheader_calls_and_metadata(thrift_proxy: Proxy, ups: dict[str, Upstream], protocol: ThriftProtocol) -> None:
    c = TTClient(addr(thrift_proxy, "via_tt"), protocol)
    try:
        assert c.call("add", a=1, b=2)[0] == 3
        value, _ = c.call("get", id=-5)
        assert isinstance(value, calc.Boom) and value.code == 5
        meta = {"RPC_PERSIST_TRACE": "t-1", "RPC_TRANSIT_HOP": "h-1", "isn": "Calc", "plain": "x"}
        seen, back = c.call("seen", headers=meta)
        # Persistent and transit keys reach the upstream (the hop the caller addressed), unchanged.
        assert seen == sorted(f"{k}={v}" for k, v in meta.items())
        assert back == {"RPC_BACKWARD_SERVER": "tt"}
        c.send(c.encode("note", 100, None, text="tt-oneway"))
        assert c.call("who")[0] == "tt"
        assert "tt-oneway" in ups["tt"].handler.wait_notes(1)
    finally:
        c.close()


# -- multiplexing -------------------------------------------------------------------------


def test_concurrent_clients_share_few_upstream_connections(thrift_proxy: Proxy, ups: dict[str, Upstream]) -> None:
    up = ups["tpy_binary"]
    before = up.connections
    n = 40

    def one(i: int) -> tuple[int, str, int]:
        client = thriftpy_client(addr(thrift_proxy, "via_tpy_binary"))
        try:
            return i, client.echo(f"call-{i}"), client.add(i, 1000)
        finally:
            client.close()

    barrier_pool = ThreadPoolExecutor(n)
    try:
        results = list(barrier_pool.map(one, range(n)))
    finally:
        barrier_pool.shutdown()
    assert results == [(i, f"call-{i}", i + 1000) for i in range(n)]
    opened = up.connections - before
    assert opened <= 2, f"{n} clients made the proxy open {opened} upstream connections (upstream_connections = 2)"


def test_pipelined_calls_on_one_connection_come_back_by_seq_id(thrift_proxy: Proxy) -> None:
    c = TTClient(addr(thrift_proxy, "via_tt"))
    try:
        delays = {11: 0.4, 12: 0.0, 13: 0.2, 14: 0.0}
        c.send(b"".join(c.encode("slow", seq, None, seconds=d, tag=f"t{seq}") for seq, d in delays.items()))
        got = {}
        for _ in delays:
            f = c.recv_frame()
            seq, value = c.decode("slow", f)
            assert f.seq_id == seq
            got[seq] = value
        assert got == {seq: f"t{seq}" for seq in delays}
    finally:
        c.close()


# -- routing -----------------------------------------------------------------------------


def test_route_on_service_and_method(thrift_proxy: Proxy) -> None:
    c = TTClient(addr(thrift_proxy, "routed"))
    try:
        assert c.call("who", headers={"isn": "Other"})[0] == "tt_other"
        assert c.call("who", headers={"isn": "Calc"})[0] == "tt"
        assert c.call("who")[0] == "tt"
    finally:
        c.close()


def test_multiplexed_name_routes_on_its_service_prefix(thrift_proxy: Proxy, ups: dict[str, Upstream]) -> None:
    c = TTClient(addr(thrift_proxy, "routed"))
    try:
        # A TMultiplexedProtocol name: "Other:" picks the first route; the name goes upstream as it is.
        c.send(c.encode("who", 5, name="Other:who"))
        seq, value = c.decode("who", c.recv_frame())
        assert seq == 5 and isinstance(value, TApplicationException)  # tt_other is not multiplexed
        assert "Other:who" in ups["tt_other"].names  # type: ignore[attr-defined]
    finally:
        c.close()


def test_no_route_is_an_unknown_method_exception(thrift_proxy: Proxy) -> None:
    mark = thrift_proxy.log.mark()
    client = thriftpy_client(addr(thrift_proxy, "routed"))
    try:
        for _ in range(2):  # the connection survives
            with pytest.raises(TApplicationException) as info:
                client.echo("x")
            assert info.value.type == TApplicationException.UNKNOWN_METHOD
            assert info.value.message == "monolake: no route for method 'echo'"
    finally:
        client.close()
    thrift_proxy.log.wait_line(r"thrift: no route: server=routed client=127.0.0.1 method 'echo'", after=mark)


def test_proxy_protocol_listener_uses_the_header_client(thrift_proxy: Proxy) -> None:
    mark = thrift_proxy.log.mark()
    c = TTClient(addr(thrift_proxy, "pp"))
    try:
        c.send(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 9090\r\n")
        assert c.call("add", a=20, b=22)[0] == 42
        value, _ = c.call("who")
        assert isinstance(value, TApplicationException)
    finally:
        c.close()
    thrift_proxy.log.wait_line(r"thrift: no route: server=pp client=203\.0\.113\.7 method 'who'", after=mark)


# -- failures ----------------------------------------------------------------------------


def test_upstream_down_is_an_exception_reply(thrift_proxy: Proxy) -> None:
    mark = thrift_proxy.log.mark()
    client = thriftpy_client(addr(thrift_proxy, "dead"))
    try:
        for _ in range(2):  # the connection survives the failure
            with pytest.raises(TApplicationException) as info:
                client.add(1, 2)
            assert info.value.type == TApplicationException.INTERNAL_ERROR
            assert "ConnectError" in info.value.message
    finally:
        client.close()
    thrift_proxy.log.wait_line(r"thrift call failed: server=dead .* method=add .*ConnectError", after=mark)


def test_timeout_is_an_exception_reply_and_the_connection_lives_on(thrift_proxy: Proxy) -> None:
    client = thriftpy_client(addr(thrift_proxy, "timeout"))
    try:
        with pytest.raises(TApplicationException) as info:
            client.slow(2.0, "late")
        assert "ReadTimeout" in info.value.message
        assert client.add(1, 1) == 2  # the late reply was dropped, not delivered here
    finally:
        client.close()


def test_frame_over_the_limit_is_answered_then_closed(thrift_proxy: Proxy) -> None:
    client = thriftpy_client(addr(thrift_proxy, "small"))
    try:
        assert client.echo("x" * 500) == "x" * 500
        with pytest.raises(TApplicationException) as info:
            client.echo("x" * 2000)
        assert info.value.type == TApplicationException.PROTOCOL_ERROR
        assert "exceeds the limit of 1024" in info.value.message
        with pytest.raises((TTransportException, OSError)):
            client.add(1, 1)
    finally:
        client.close()


def test_unframed_client_is_closed_and_logged(thrift_proxy: Proxy) -> None:
    mark = thrift_proxy.log.mark()
    with socket.create_connection(("127.0.0.1", int(addr(thrift_proxy, "routed").rpartition(":")[2])), 10) as s:
        s.sendall(message_begin("add", 1, 1, ThriftProtocol.BINARY) + b"\x00")
        assert s.recv(100) == b""
    thrift_proxy.log.wait_line(r"thrift: bad frame: server=routed .*unframed", after=mark)


def test_reply_type_message_is_rejected_per_call(thrift_proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", int(addr(thrift_proxy, "routed").rpartition(":")[2])), 10) as s:
        s.sendall(encode_framed(message_begin("add", 2, 77, ThriftProtocol.BINARY) + b"\x00"))
        data = s.recv(1000)
    assert message_begin("add", 3, 77, ThriftProtocol.BINARY) in data


# -- drain ---------------------------------------------------------------------------------


def test_drain_lets_calls_in_flight_finish(proxy: ProxyFactory, ups: dict[str, Upstream]) -> None:
    up = ThriftpyServer("drain")
    try:
        p = proxy(SERVERS, name="drain", up=up.address, tt=ups["tt"].address)
        client = thriftpy_client(p.address)
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(client.slow(1.0, "done")))
        t.start()
        assert up.handler.slow_started.wait(20)
        p.proc.send_signal(signal.SIGTERM)
        t.join(20)
        client.close()
        assert result == ["done"]
        assert p.proc.wait(20) == 0
    finally:
        up.close()
