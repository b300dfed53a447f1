"""Tracing from Python: a traced gRPC server, and traced gRPC and Thrift clients.

The server takes ``GrpcServerTracing`` in its layers; clients take a tracing layer in
``inner_layers``, so that each try (retries included) is a CLIENT span of its own. Called from
inside a traced server call, a client's spans are that call's children; elsewhere each call
starts a trace. The keywords are the tracing filter's settings (docs/edge.md#tracing).

    python examples/rpc/traced.py --listen 127.0.0.1:50051 --collector http://127.0.0.1:4318/v1/traces
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from monolake.apps.rpc.grpc import GrpcClient, grpc_app
from monolake.apps.rpc.tracing import GrpcClientTracing, GrpcServerTracing, ThriftClientTracing
from monolake.rpc import ThriftClient

HERE = Path(__file__).parent
COLLECTOR = "http://127.0.0.1:4318/v1/traces"


def greeter_app(listen: str, collector: str = COLLECTOR) -> Any:
    """examples/rpc/grpc's greeter (``greeter`` importable: see the end of this file), each call a SERVER span."""
    from greeter import PROTOS, Greeter

    tracing = GrpcServerTracing(endpoint=collector, service_name="greeter")
    return grpc_app("greeter", listen, PROTOS, Greeter, layers=[tracing])


def greeter_client(address: str, collector: str = COLLECTOR) -> GrpcClient:
    """A client of the greeter (this file's, or examples/rpc/grpc/greeter_tracing.toml's)."""
    tracing = GrpcClientTracing(endpoint=collector, service_name="greeter-client")
    return GrpcClient([HERE / "grpc" / "greeter.proto"], [address], inner_layers=[tracing])


def kv_client(address: str, collector: str = COLLECTOR) -> ThriftClient:
    """A client of examples/rpc/thrift/kv_tracing.toml's server (TTHeader carries the context)."""
    tracing = ThriftClientTracing(endpoint=collector, service_name="kv-client")
    return ThriftClient(str(HERE / "thrift" / "kv.thrift"), [address], inner_layers=[tracing])


if __name__ == "__main__":
    from monolake import serve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--collector", default=COLLECTOR)
    args = p.parse_args()
    sys.path.insert(0, str(HERE / "grpc"))
    sys.exit(serve(greeter_app(args.listen, args.collector)))
