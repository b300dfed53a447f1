"""Traced RPC clients: a CLIENT span per attempt, its context sent to the server.

The tracing layers go in ``inner_layers`` (each try, retries included, is a span of its own).
Called from inside a traced server call, a client's spans are that call's children; elsewhere
each call starts a trace. The keywords are the tracing filter's settings.
"""

from __future__ import annotations

from pathlib import Path

from monolake.apps.rpc.grpc import GrpcClient
from monolake.apps.rpc.tracing import GrpcClientTracing, ThriftClientTracing
from monolake.rpc import ThriftClient

HERE = Path(__file__).parent


def greeter_client(address: str, collector: str = "http://127.0.0.1:4318/v1/traces") -> GrpcClient:
    """A client of examples/rpc/grpc/greeter_tracing.toml's server."""
    tracing = GrpcClientTracing(endpoint=collector, service_name="greeter-client")
    return GrpcClient([HERE / "grpc" / "greeter.proto"], [address], inner_layers=[tracing])


def kv_client(address: str, collector: str = "http://127.0.0.1:4318/v1/traces") -> ThriftClient:
    """A client of examples/rpc/thrift/kv_tracing.toml's server (TTHeader carries the context)."""
    tracing = ThriftClientTracing(endpoint=collector, service_name="kv-client")
    return ThriftClient(str(HERE / "thrift" / "kv.thrift"), [address], inner_layers=[tracing])
