"""``monolake demo-origin``: standard status lines, read off a raw socket."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import LineLog, RawClient, _stop_process


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "monolake.cli", "demo-origin", "--listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = LineLog(proc.stdout, "demo origin stdout")
    try:
        yield out.wait_line(r"listening on http://(\S+)$")[1]
    finally:
        _stop_process(proc)
        out.join()
        proc.stdout.close()


def status_line(address: str, path: str) -> bytes:
    with RawClient(address) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        head, _, _ = c.read_until_close().partition(b"\r\n")
    return head


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("/", b"HTTP/1.1 200 OK"),
        ("/bytes/3", b"HTTP/1.1 200 OK"),
        ("/status/404", b"HTTP/1.1 404 Not Found"),
        ("/status/503", b"HTTP/1.1 503 Service Unavailable"),
        ("/status/204", b"HTTP/1.1 204 No Content"),
        ("/status/299", b"HTTP/1.1 299 Unknown"),
        ("/status/100", b"HTTP/1.1 400 Bad Request"),
        ("/status/1000", b"HTTP/1.1 400 Bad Request"),
        ("/delay/0", b"HTTP/1.1 200 OK"),
        ("/delay/soon", b"HTTP/1.1 400 Bad Request"),
        ("/delay/nan", b"HTTP/1.1 400 Bad Request"),
    ],
)
def test_status_line_has_the_standard_reason_phrase(origin: str, path: str, line: bytes) -> None:
    assert status_line(origin, path) == line
