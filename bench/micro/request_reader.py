"""The HTTP/1 request reader's cost per request head, alone: the native scan against llhttp.

    python bench/micro/request_reader.py [-n 200000] [--repeat 5] [--head proxy|browser|post]
                                         [--reader both|native|llhttp|default]

Feeds one request per read (``proxy``: the request of ``proxy_path.py``; ``browser``: a
14-field browser-like head; ``post``: a POST with a 128 B Content-Length body) to a
``RequestReader`` whose hooks only count, and prints the CPU time per request: with the
native head scan (``_h1req.scan_head``, the default) or with llhttp and its per-field
callbacks (``native_heads = False``), or both, alternated. ``--reader default`` leaves the
reader as the tree has it (also a tree from before the scan), so
``tree_ab.py TREE... --script request_reader.py -- --reader default`` compares two trees.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.micro.proxy_path import REQUEST

from monolake.core.proto.http._message import Request
from monolake.core.proto.http1 import _parse
from monolake.core.proto.http1._parse import RequestReader

HEADS = {
    "proxy": REQUEST,
    "browser": (
        b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.com\r\nConnection: keep-alive\r\n"
        b'sec-ch-ua: "Chromium";v="131"\r\nsec-ch-ua-mobile: ?0\r\nUser-Agent: Mozilla/5.0 (X11; Linux '
        b"x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
        b'sec-ch-ua-platform: "Linux"\r\nAccept: */*\r\nSec-Fetch-Site: same-origin\r\n'
        b"Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: script\r\nReferer: https://www.example.com/\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
        b"Cookie: session=abcdef0123456789; theme=dark\r\n\r\n"
    ),
    "post": (
        b"POST /api/v1/items HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
        b"Content-Type: application/json\r\nContent-Length: 128\r\n\r\n" + b"x" * 128
    ),
}


class Counting(RequestReader):
    def __init__(self, native: bool | None) -> None:
        if native is not None:
            self.native_heads = native
        self.reader_init()
        self.requests = 0
        self.body_bytes = 0

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.requests += 1

    def body_received(self, data: bytes) -> None:
        self.body_bytes += len(data)

    def request_complete(self) -> None:
        pass


def run(n: int, data: bytes, native: bool | None) -> float:
    r = Counting(native)
    feed = r.feed
    t0 = time.process_time()
    for _ in range(n):
        feed(data)
    elapsed = time.process_time() - t0
    assert r.requests == n, r.requests
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--head", choices=sorted(HEADS), default="proxy")
    ap.add_argument("--reader", choices=["both", "native", "llhttp", "default"], default="both")
    args = ap.parse_args()
    if args.reader in ("both", "native") and getattr(_parse, "_SCAN", None) is None:
        raise SystemExit("monolake.core.proto.http1._h1req is not built: use --reader llhttp")
    readers: list[bool | None] = {"native": [True], "llhttp": [False], "both": [True, False], "default": [None]}[
        args.reader
    ]
    data = HEADS[args.head]
    results: dict[bool | None, list[float]] = {native: [] for native in readers}
    for _ in range(args.repeat):
        for native in readers:  # alternated, so that a busy machine weighs on both alike
            results[native].append(run(args.n, data, native))
    for native, got in results.items():
        name = {True: "native scan", False: "llhttp", None: "default reader"}[native]
        print(
            f"{args.head} ({len(data)} B), {name}: {min(got):.3f} µs per request read "
            f"(best of {args.repeat}: " + ", ".join(f"{r:.3f}" for r in got) + ")"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
