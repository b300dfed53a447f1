"""The origin server the end-to-end tests proxy to: an aiohttp app in its own process.

Run as ``python tests/e2e/origin_app.py [--name NAME] [--rcvbuf BYTES]``. It binds 127.0.0.1:0 and
prints ``PORT <port>`` on stdout once it accepts connections, then one line per
request it starts handling (``REQ <method> <path_qs> conn=<peer port>``), so a test
can wait for "the origin has the request" instead of sleeping.

Endpoints (every response carries ``X-Origin: NAME`` and ``X-Conn: <peer port>``):

- ``/echo`` (any method): JSON of name, pid, method, path+query, raw_path (the target as sent), headers (a list of
  pairs, duplicates kept), body length and sha256 (the body is read streaming), conn.
- ``/stream-sha`` (POST): the body's length and sha256, read in pieces.
- ``/slow-sha`` (POST): the same, read slowly (16 KiB then 1 ms of sleep).
- ``/bytes/N``: N bytes of ``pattern`` with Content-Length and ``X-Body-Sha256``.
- ``/chunked/N``: the same bytes, chunked, in 64 KiB pieces.
- ``/blob/N``: the same bytes with Content-Length, head and body in one write.
- ``/status/N``: that status (no body for 1xx/204/304).
- ``/delay/S``: ``delayed`` after S seconds.
- ``/gate?file=PATH``: ``released`` once PATH exists (a test opens the gate when it is ready for
  the answer, instead of guessing a delay; at most 60 s).
- ``/close``: answers with ``Connection: close``.
- ``/pid``, ``/name``, ``/conn``: this process's pid, its name, the peer port of the
  TCP connection the request came on (one id per upstream connection).
- ``/auth``: an auth service: ``Authorization: Bearer ok-USER`` is 200 with ``X-Auth-User: USER``,
  ``Bearer no`` is 403, anything else 401.
- ``/hop``: a response carrying hop-by-hop headers (Connection-listed, Keep-Alive,
  Upgrade, Proxy-Authenticate, Trailer) the proxy must not forward.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import sys

from aiohttp import web

BLOCK = bytes(range(256)) * 256
"""64 KiB; bodies are this block repeated, cut to length."""


def pattern(n: int):
    """The N bytes /bytes/N and /chunked/N send, in 64 KiB pieces."""
    full, rest = divmod(n, len(BLOCK))
    for _ in range(full):
        yield BLOCK
    if rest:
        yield BLOCK[:rest]


def pattern_sha(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern(n):
        h.update(piece)
    return h.hexdigest()


def _conn(request: web.Request) -> int:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer[1] if peer else 0


@web.middleware
async def announce(request: web.Request, handler):
    print(f"REQ {request.method} {request.path_qs} conn={_conn(request)}", flush=True)
    return await handler(request)


async def tag(request: web.Request, resp: web.StreamResponse) -> None:
    # on_response_prepare: runs before the head is written, streamed responses too.
    resp.headers["X-Origin"] = request.app["name"]
    resp.headers["X-Conn"] = str(_conn(request))


async def _read_body(request: web.Request) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    async for piece in request.content.iter_any():
        n += len(piece)
        h.update(piece)
    return n, h.hexdigest()


async def echo(request: web.Request) -> web.Response:
    n, sha = await _read_body(request)
    info = {
        "name": request.app["name"],
        "pid": os.getpid(),
        "method": request.method,
        "path": request.path_qs,
        "raw_path": request.raw_path,  # the request-target exactly as sent (path_qs is normalised by yarl)
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_len": n,
        "body_sha256": sha,
        "conn": _conn(request),
    }
    return web.json_response(info)


async def stream_sha(request: web.Request) -> web.Response:
    n, sha = await _read_body(request)
    return web.json_response({"body_len": n, "body_sha256": sha})


async def slow_sha(request: web.Request) -> web.Response:
    """Like /stream-sha, but reads slowly (a short pause per piece): the proxy's writes
    to this origin back up and it has to apply backpressure to its client."""
    h = hashlib.sha256()
    n = 0
    while piece := await request.content.read(16384):
        n += len(piece)
        h.update(piece)
        await asyncio.sleep(0.001)
    return web.json_response({"body_len": n, "body_sha256": h.hexdigest()})


async def fixed_bytes(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    headers = {"Content-Type": "application/octet-stream", "X-Body-Sha256": pattern_sha(n)}
    resp = web.StreamResponse(headers=headers)
    resp.content_length = n
    await resp.prepare(request)
    if request.method != "HEAD":
        for piece in pattern(n):
            await resp.write(piece)
    await resp.write_eof()
    return resp


async def blob(request: web.Request) -> web.Response:
    # One write for head and body: the proxy reads it as fast as the socket allows.
    n = int(request.match_info["n"])
    return web.Response(body=b"".join(pattern(n)), content_type="application/octet-stream")


async def chunked_bytes(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Body-Sha256": pattern_sha(n)})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for piece in pattern(n):
        await resp.write(piece)
    await resp.write_eof()
    return resp


async def duplex(request: web.Request) -> web.StreamResponse:
    """Full duplex: answer at once, then echo each piece of the request body as it arrives."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    async for piece in request.content.iter_any():
        await resp.write(piece)
    await resp.write_eof()
    return resp


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["n"])
    if code in (204, 304) or code < 200:
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}\n")


async def delay(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.match_info["s"]))
    return web.Response(text="delayed\n")


async def gate(request: web.Request) -> web.Response:
    path = request.query["file"]
    for _ in range(6000):  # polls the test's file: what it waits for is in another process
        if os.path.exists(path):
            return web.Response(text="released\n")
        await asyncio.sleep(0.01)
    return web.Response(status=504, text="the gate was never opened\n")


async def close(request: web.Request) -> web.Response:
    resp = web.Response(text=f"conn {_conn(request)}\n")
    resp.force_close()
    return resp


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


async def name(request: web.Request) -> web.Response:
    return web.Response(text=request.app["name"])


async def conn(request: web.Request) -> web.Response:
    return web.Response(text=str(_conn(request)))


async def hop(request: web.Request) -> web.Response:
    resp = web.Response(text="hop\n")
    resp.headers["Connection"] = "X-Private-Hop"
    resp.headers["X-Private-Hop"] = "secret"
    resp.headers["Keep-Alive"] = "timeout=5"
    resp.headers["Proxy-Authenticate"] = "Basic"
    resp.headers["X-End-To-End"] = "kept"
    return resp


async def auth(request: web.Request) -> web.Response:
    """An auth service: "Bearer ok-USER" is 200 with X-Auth-User: USER, "Bearer no" 403, else 401."""
    token = request.headers.get("Authorization", "")
    if token.startswith("Bearer ok-"):
        return web.Response(text="ok\n", headers={"X-Auth-User": token[len("Bearer ok-") :]})
    if token == "Bearer no":
        return web.Response(status=403, text="no\n")
    return web.Response(status=401, text="who?\n")


def make_app(app_name: str) -> web.Application:
    app = web.Application(middlewares=[announce], client_max_size=1 << 30)
    app["name"] = app_name
    app.on_response_prepare.append(tag)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_post("/stream-sha", stream_sha)
    app.router.add_post("/slow-sha", slow_sha)
    app.router.add_post("/duplex", duplex)
    app.router.add_get("/bytes/{n:\\d+}", fixed_bytes)
    app.router.add_get("/chunked/{n:\\d+}", chunked_bytes)
    app.router.add_get("/blob/{n:\\d+}", blob)
    app.router.add_route("*", "/status/{n:\\d+}", status)
    app.router.add_get("/delay/{s}", delay)
    app.router.add_get("/gate", gate)
    app.router.add_get("/close", close)
    app.router.add_get("/pid", pid)
    app.router.add_get("/name", name)
    app.router.add_get("/conn", conn)
    app.router.add_get("/hop", hop)
    app.router.add_get("/auth", auth)
    # Everything else echoes too, so routing tests can use any path.
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(app_name: str, rcvbuf: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        # Inherited by accepted sockets: a small window keeps the sender's buffers small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(make_app(app_name), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="origin")
    parser.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF for accepted connections")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.name, args.rcvbuf))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
