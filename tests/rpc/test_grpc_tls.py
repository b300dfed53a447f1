"""gRPC over TLS (h2 by ALPN): a monolake server with a certificate, grpcio's and monolake's clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_helpers import LoopThread, Served, echo_protos

from monolake.apps.config import Server
from monolake.apps.rpc.grpc import GrpcClient, GrpcServer
from monolake.apps.rpc.grpc._app import grpc_settings
from monolake.core.address import parse_endpoint
from monolake.core.tls import client_tls
from monolake.core.tls_settings import Certificate, ServerTls, UpstreamTls

P = echo_protos()
M = P.module("grpc_echo.proto")


class Echo:
    async def Unary(self, req: Any, ctx: Any) -> Any:
        return M.EchoReply(text=req.text)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, trustme.CA, Path]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    d = tmp_path_factory.mktemp("certs")
    chain, key, ca_file = d / "chain.pem", d / "key.pem", d / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    lt = LoopThread()
    tls = ServerTls(certificates=[Certificate(chain=str(chain), key=str(key))])
    # alpn left unset: a gRPC server's TLS offers h2 (an http server's default is http/1.1 only)
    s = Served(lt, GrpcServer(P, Echo()), grpc_settings(Server(listener="127.0.0.1:0", tls=tls)))
    yield s, ca, ca_file
    s.close()
    lt.close()


def test_grpcio_client_over_tls(tls_server: tuple[Served, trustme.CA, Path]) -> None:
    s, ca, _ = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    opts = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(s.address, creds, options=opts) as ch:
        call = ch.unary_unary(
            "/monolake.test.Echo/Unary",
            request_serializer=M.EchoRequest.SerializeToString,
            response_deserializer=M.EchoReply.FromString,
        )
        assert call(M.EchoRequest(text="tls"), timeout=20).text == "tls"


def test_our_client_over_tls(tls_server: tuple[Served, trustme.CA, Path]) -> None:
    s, _, ca_file = tls_server
    tls = client_tls("test", UpstreamTls(ca=str(ca_file), sni="localhost", alpn=["h2"]))
    ep = parse_endpoint(f"https://{s.address}")
    ep = type(ep)(scheme=ep.scheme, host=ep.host, port=ep.port, tls=tls)

    async def main() -> None:
        c = GrpcClient(P, [ep], timeout=20)
        try:
            assert (await c.unary("Echo.Unary", M.EchoRequest(text="tls"))).text == "tls"
        finally:
            await c.aclose()  # TLS: the close_notify exchange needs the loop

    asyncio.run(main())


def test_grpc_settings() -> None:
    """h2 by ALPN unless set; the whole-stream body limit off unless set (messages are bounded)."""
    from monolake.apps.config import Limits

    tls = ServerTls(certificates=[Certificate(chain="c", key="k")])
    s = grpc_settings(Server(listener="127.0.0.1:0", tls=tls))
    assert s.tls is not None and s.tls.alpn == ["h2"]
    assert s.limits.max_body_bytes == 0
    own = ServerTls(certificates=[Certificate(chain="c", key="k")], alpn=["h2", "http/1.1"])
    s = grpc_settings(Server(listener="127.0.0.1:0", tls=own, limits=Limits(max_body_bytes=1000)))
    assert s.tls is not None and s.tls.alpn == ["h2", "http/1.1"]
    assert s.limits.max_body_bytes == 1000
