"""A raw TCP (or Unix, or TLS) service: echo every byte back.

    python examples/services/echo_tcp.py --listen 127.0.0.1:7000
    monolake run -c examples/services/echo_tcp.toml
    printf 'hello\\n' | nc -q1 127.0.0.1 7000

A stream service is called once per connection with a ``monolake.Connection``;
the connection closes when the call returns. ``EchoFactory.make(old)`` carries the
count of connections served across reloads; each connection is greeted with it.
"""

from __future__ import annotations

import argparse

from monolake import Connection, Factory, StreamApp, serve
from monolake.config import Certificate, ServerTls


class Echo:
    def __init__(self, served: int = 0) -> None:
        self.served = served

    async def __call__(self, conn: Connection) -> None:
        self.served += 1
        conn.write(b"hello %s, connection %d\n" % (conn.peer.encode(), self.served))
        while data := await conn.read():
            conn.write(data)
            await conn.drain()  # a client that does not read stops us reading, not our memory


class EchoFactory(Factory[Echo]):
    def make(self, old: Echo | None) -> Echo:
        return Echo(old.served if old is not None else 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:7000")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    p.add_argument("--cert", help="PEM certificate chain: serve TLS")
    p.add_argument("--key", help="PEM private key of --cert")
    args = p.parse_args()
    tls = ServerTls(certificates=[Certificate(chain=args.cert, key=args.key)]) if args.cert else None
    app = StreamApp(name="echo", listen=args.listen, factory=EchoFactory(), tls=tls)
    return serve(app, workers=args.workers, loop=args.loop)


if __name__ == "__main__":
    raise SystemExit(main())
