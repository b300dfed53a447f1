"""The upstream of the L4 benchmark: a byte sink, a byte source and an echo server in one process.

``python -m bench.l4.peers --sink PORT --source PORT --echo PORT --data FILE`` (loopback only):

- sink: reads a connection to its end and discards the bytes (``os.splice`` socket -> pipe -> /dev/null,
  so Python never copies them), then answers ``<bytes read>\\n`` and closes: the client learns that every
  byte went through the proxy, and the proxy's half-close is exercised;
- source: reads a line ``<N>\\n``, sends N bytes (``os.sendfile`` from ``FILE``, repeated), then closes;
- echo: writes back whatever it reads (asyncio protocol, uvloop when installed); closes on EOF.

Sink and source connections are served by one thread each (blocking sockets); the echo server runs on
the event loop of the main thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import socket
import threading

PIPE_SIZE = 1 << 20


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def drain(sock: socket.socket) -> int:
    """Read ``sock`` to EOF, discarding the bytes without copying them into Python; the count."""
    r, w = _pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    total = 0
    try:
        while True:
            n = os.splice(sock.fileno(), w, PIPE_SIZE, flags=os.SPLICE_F_MOVE)
            if n == 0:
                return total
            total += n
            while n:
                n -= os.splice(r, null, n, flags=os.SPLICE_F_MOVE)
    finally:
        for fd in (r, w, null):
            os.close(fd)


def send_bytes(sock: socket.socket, data_fd: int, data_size: int, count: int) -> int:
    """Send ``count`` bytes of the data file (from its start, over again as needed) with sendfile."""
    left = count
    while left:
        off = (count - left) % data_size
        n = os.sendfile(sock.fileno(), data_fd, off, min(left, data_size - off))
        if n == 0:
            raise OSError("sendfile sent nothing")
        left -= n
    return count


def _sink_conn(conn: socket.socket) -> None:
    with conn:
        try:
            n = drain(conn)
            conn.sendall(f"{n}\n".encode())
        except OSError:
            pass


def _source_conn(conn: socket.socket, data_fd: int, data_size: int) -> None:
    with conn:
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    return
                line += chunk
            send_bytes(conn, data_fd, data_size, int(line))
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):  # until the client closes
                pass
        except (OSError, ValueError):
            pass


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    return s


def _accept_loop(lsock: socket.socket, handler: object, *extra: object) -> None:
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=handler, args=(conn, *extra), daemon=True).start()  # type: ignore[arg-type]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once the echoed bytes are flushed


async def _serve_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.l4.peers")
    ap.add_argument("--sink", type=int, required=True)
    ap.add_argument("--source", type=int, required=True)
    ap.add_argument("--echo", type=int, required=True)
    ap.add_argument("--data", required=True, help="file whose bytes the source sends")
    args = ap.parse_args(argv)
    data_fd = os.open(args.data, os.O_RDONLY)
    data_size = os.fstat(data_fd).st_size
    sink, source = _listen(args.sink), _listen(args.source)
    threading.Thread(target=_accept_loop, args=(sink, _sink_conn), daemon=True).start()
    threading.Thread(target=_accept_loop, args=(source, _source_conn, data_fd, data_size), daemon=True).start()
    try:
        import uvloop

        uvloop.run(_serve_echo(args.echo))
    except ImportError:
        asyncio.run(_serve_echo(args.echo))


if __name__ == "__main__":
    main()
