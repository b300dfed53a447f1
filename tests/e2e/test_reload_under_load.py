"""Zero downtime under load: two clients send requests without pause for DURATION
seconds while the proxy goes through 5 reloads and 2 binary upgrades.

- keep-alive client: one connection at a time, reused until a response says
  ``Connection: close`` (what a draining worker answers), then a new one;
- new-connection client: one connection per request (``Connection: close``).

Every request must be answered 200; a connection reset, a connection closed
without an answer or any other error counts as a failure. The counts are printed
(``pytest -s`` shows them) and must be zero. 127.0.0.1 only; bounded in time.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from reload_ops import TAG_MODULE, Fleet

from conftest import TIMEOUT, Origin, ProxyFactory, render

pytestmark = pytest.mark.e2e

DURATION = 10.0
RELOADS = 5
UPGRADES = 2

CONFIG = """
[runtime]
drain_timeout = 10

[upstreams.backend]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
filters = [{ use = "tagmod:Tag", args = { value = "{tag}" } }]

[[servers.web.routes]]
path = "/"
upstream = "backend"
response_headers = { set = { "X-Generation" = "{tag}" } }
"""

_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection: *close", re.IGNORECASE)


@dataclass
class Counts:
    ok: int = 0
    failed: int = 0
    resets: int = 0
    connections: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, why: str, *, reset: bool = False) -> None:
        self.failed += 1
        self.resets += reset
        if len(self.errors) < 20:
            self.errors.append(why)


def read_response(sock: socket.socket) -> tuple[int, bool]:
    """(status, server closes) of one Content-Length framed response. Raises EOFError if the
    connection closes first, ConnectionResetError on a reset."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed before a response head ({len(buf)} bytes)")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status = _STATUS.match(head)
    length = _LENGTH.search(head)
    if status is None or length is None:
        raise ValueError(f"unexpected head {head[:200]!r}")
    need = int(length[1])
    while len(body) < need:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed mid-body")
        body += chunk
    return int(status[1]), bool(_CLOSE.search(head))


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def keepalive_client(port: int, stop: threading.Event, counts: Counts) -> None:
    sock: socket.socket | None = None
    request = b"GET /name HTTP/1.1\r\nHost: load\r\n\r\n"
    while not stop.is_set():
        try:
            if sock is None:
                sock = connect(port)
                counts.connections += 1
            sock.sendall(request)
            status, closes = read_response(sock)
            if status == 200:
                counts.ok += 1
            else:
                counts.fail(f"status {status}")
            if closes:
                sock.close()
                sock = None
        except (ConnectionResetError, BrokenPipeError) as exc:
            counts.fail(repr(exc), reset=True)
            sock = None
        except Exception as exc:
            counts.fail(repr(exc))
            sock = None
    if sock is not None:
        sock.close()


def per_request_client(port: int, stop: threading.Event, counts: Counts) -> None:
    request = b"GET /name HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        try:
            with connect(port) as sock:
                counts.connections += 1
                sock.sendall(request)
                status, _ = read_response(sock)
            if status == 200:
                counts.ok += 1
            else:
                counts.fail(f"status {status}")
        except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError) as exc:
            counts.fail(repr(exc), reset=not isinstance(exc, ConnectionRefusedError))
        except Exception as exc:
            counts.fail(repr(exc))


@pytest.fixture
def fleet(proxy: ProxyFactory, origin: Origin, tmp_path: Path) -> Iterator[Fleet]:
    (tmp_path / "tagmod.py").write_text(TAG_MODULE)
    f = Fleet(proxy(render(CONFIG, origin=origin.url, tag="g0"), workers=2))
    yield f
    f.close()


def test_no_request_fails_across_reloads_and_upgrades(fleet: Fleet, origin: Origin) -> None:
    p = fleet.proxy
    port = int(p.address.rpartition(":")[2])
    stop = threading.Event()
    keep, fresh = Counts(), Counts()
    clients = [
        threading.Thread(target=keepalive_client, args=(port, stop, keep), daemon=True),
        threading.Thread(target=per_request_client, args=(port, stop, fresh), daemon=True),
    ]
    plan = ["reload", "reload", "upgrade", "reload", "reload", "upgrade", "reload"]
    assert plan.count("reload") == RELOADS and plan.count("upgrade") == UPGRADES
    pace = DURATION / (len(plan) + 1)
    started = time.monotonic()
    supervisors = [fleet.pid]
    for t in clients:
        t.start()
    try:
        for i, op in enumerate(plan, 1):
            stop.wait(pace)  # pacing the operations under load, not waiting for readiness
            if op == "reload":
                m = fleet.reload(render(CONFIG, origin=origin.url, tag=f"g{i}"))
                assert m[2] == "done" and "changed=web" in m.string, p.log.text
            else:
                supervisors.append(fleet.upgrade())
        stop.wait(max(0.0, DURATION - (time.monotonic() - started)))
    finally:
        stop.set()
        for t in clients:
            t.join(TIMEOUT)
    elapsed = time.monotonic() - started
    summary = (
        f"load over {elapsed:.1f}s, {RELOADS} reloads, {UPGRADES} upgrades (supervisors {supervisors}): "
        f"keep-alive ok={keep.ok} failed={keep.failed} resets={keep.resets} connections={keep.connections}; "
        f"new-connection ok={fresh.ok} failed={fresh.failed} resets={fresh.resets}"
    )
    print("\n" + summary)
    assert all(not t.is_alive() for t in clients)
    assert (keep.failed, keep.resets, fresh.failed, fresh.resets) == (0, 0, 0, 0), (
        summary + "\n" + "\n".join(keep.errors + fresh.errors)
    )
    assert keep.ok > 200 and fresh.ok > 200, summary
    assert keep.connections >= 1 + UPGRADES  # each upgrade moved it to a new worker
