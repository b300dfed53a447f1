"""Serve the KV Thrift service from Python on the monolake runtime.

    python examples/rpc/thrift/serve.py --listen 127.0.0.1:9090
    monolake rpc call 127.0.0.1:9090 --idl examples/rpc/thrift/kv.thrift KV.put '{"key": "a", "value": "1"}'

Framed, TTHeader, THeader and unframed clients, binary or compact, are all served on the
one listener: the transport is detected per connection.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kv_handler import KV

from monolake import serve
from monolake.rpc import ThriftApp, ThriftService

IDL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kv.thrift")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:9090")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--access-log", default=None, help='"stdout", "stderr" or a path: a line per call')
    args = p.parse_args()
    service = ThriftService(IDL, KV(), timeout=5.0)  # each call gets 5 s at most
    app = ThriftApp(name="kv", listen=args.listen, service=service, access_log=args.access_log)
    return serve(app, workers=args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
