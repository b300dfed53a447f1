"""Call the KV service with monolake's Thrift client.

    python examples/rpc/thrift/client.py --address 127.0.0.1:9090

The client multiplexes calls over TTHeader connections, carries metainfo, balances over
its endpoints and retries a call that never reached a server on another one.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from monolake.rpc import ThriftClient, metainfo

IDL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kv.thrift")


async def run(address: str) -> list[str]:
    out = []
    mi = metainfo()
    mi.set_persistent("caller", "example-client")  # reaches every hop of the call chain
    async with ThriftClient(IDL, [address], timeout=5.0) as kv:
        entries = await asyncio.gather(*(kv.put(f"k{i}", f"v{i}") for i in range(3)))
        out.append(" ".join(f"{e.key}={e.value}" for e in entries))
        again = await kv.put("k0", "w0")
        out.append(f"k0 version {again.version}, sent back as {mi.received_backward['version']}")
        try:
            await kv.get("nope")
        except kv.definition.module.NotFound as exc:
            out.append(f"not found: {exc.key}")
        out.append(f"size {await kv.size()}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="127.0.0.1:9090")
    for line in asyncio.run(run(p.parse_args().address)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
