"""The HTTP/1 response reader's cost per upstream response, alone.

    python bench/micro/response_reader.py [-n 200000] [--repeat 5] [--body 128] [--chunked] [--llhttp]

Feeds the canned nginx-like response of ``proxy_path.py`` (one read, head and body) to a
``ResponseReader`` whose hooks only count, and prints the CPU time per response: the native head
scan (``_h1resp``, when built) or llhttp and its callbacks, and the head handling (status line,
hop-by-hop cut, framing, keep-alive). ``--llhttp``: every head through llhttp (``native_heads``
off), the path taken without the C module or for an uncommon response.
Finer than ``proxy_path.py`` for a change to the reader; compare two trees with
``tree_ab.py TREE... --script response_reader.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.micro.proxy_path import nginx_response

from monolake.core.proto.http._message import Response
from monolake.core.proto.http1._parse import ResponseReader


class Counting(ResponseReader):
    def __init__(self) -> None:
        self.reader_init()
        self.responses = 0
        self.body_bytes = 0

    def response_received(self, resp: Response, has_body: bool) -> None:
        self.responses += 1

    def body_received(self, data: bytes) -> None:
        self.body_bytes += len(data)

    def response_complete(self) -> None:
        pass


def run(n: int, data: bytes, llhttp: bool = False) -> float:
    r = Counting()
    if llhttp:
        r.native_heads = False
    feed = r.feed
    t0 = time.process_time()
    for _ in range(n):
        feed(data)
    elapsed = time.process_time() - t0
    assert r.responses == n, r.responses
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--body", type=int, default=128, help="response body size, bytes")
    ap.add_argument("--chunked", action="store_true", help="the body as one chunk, Transfer-Encoding: chunked")
    ap.add_argument("--llhttp", action="store_true", help="parse every head with llhttp (no native scan)")
    args = ap.parse_args()
    data = nginx_response(b"x" * args.body)
    if args.chunked:
        head = data[: data.index(b"\r\n\r\n") + 2].replace(
            b"Content-Length: %d\r\n" % args.body, b"Transfer-Encoding: chunked\r\n"
        )
        data = head + b"\r\n%x\r\n" % args.body + b"x" * args.body + b"\r\n0\r\n\r\n"
    results = [run(args.n, data, args.llhttp) for _ in range(args.repeat)]
    print(
        f"body={args.body}: {min(results):.3f} µs per response read "
        f"(best of {args.repeat}: " + ", ".join(f"{r:.3f}" for r in results) + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
