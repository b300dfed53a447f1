"""Shared fixtures for the end-to-end tests: real processes on 127.0.0.1.

- ``Origin``: ``tests/e2e/origin_app.py`` (aiohttp) in its own process; it prints
  its port, then one line per request it starts handling.
- ``Proxy``: ``python -m monolake.product.cli run -c FILE --loop KIND``; ready when its
  stderr shows ``monolake ready servers=...``; every later stderr line is kept so
  tests can wait for and assert on log lines.
- ``Nginx``: nginx with a config, prefix, pid file and temp paths in a tmp dir,
  serving static files generated there.

Readiness is never guessed with sleeps: a thread reads each child's output line by
line and tests wait on the line they need, with a generous timeout. Every process
started here is stopped by its pid at teardown (SIGTERM, then SIGKILL; a proxy gets a
second SIGTERM once its workers drain, which hurries them: see ``Proxy.close``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e"
ORIGIN_APP = E2E / "origin_app.py"
TIMEOUT = 20.0
"""Seconds to wait for any readiness line; generous for a loaded CI machine."""
READY = re.compile(r"monolake ready servers=(?P<servers>\S+) workers=(?P<workers>\d+) loop=(?P<loop>\S+)")
LOOP_KINDS = os.environ.get("MONOLAKE_TEST_LOOPS", "uvloop asyncio io_uring").split()
"""Loop backends the e2e tests run on; MONOLAKE_TEST_LOOPS="io_uring" narrows a run to one."""
BLOCK = bytes(range(256)) * 256
"""The origin's body pattern block (see origin_app.pattern)."""


def pattern(n: int) -> Iterator[bytes]:
    full, rest = divmod(n, len(BLOCK))
    for _ in range(full):
        yield BLOCK
    if rest:
        yield BLOCK[:rest]


def pattern_bytes(n: int) -> bytes:
    return b"".join(pattern(n))


def pattern_sha(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern(n):
        h.update(piece)
    return h.hexdigest()


def free_port() -> int:
    """A port that was free a moment ago (for servers that need an explicit port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_REFUSING: list[socket.socket] = []


def refused_port() -> int:
    """A 127.0.0.1 port where a connect is refused for the rest of the test process: bound and
    never listening. Unlike a port from ``free_port`` (closed again), no other test's server or
    outgoing connection can be given it meanwhile, so "connection refused" stays true."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    if not _REFUSING:
        atexit.register(lambda: [held.close() for held in _REFUSING])
    _REFUSING.append(s)
    return int(s.getsockname()[1])


def render(template: str, **values: Any) -> str:
    """Replace ``{name}`` placeholders (only names given) and leave TOML's ``{ ... }`` alone."""
    return re.sub(r"\{([a-z_][a-z0-9_]*)\}", lambda m: str(values[m[1]]) if m[1] in values else m[0], template)


# -- parallel runs ---------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``python -m pytest`` runs on one process per core when pytest-xdist is installed
    (``-n auto --dist loadfile``: a file's tests stay together, so its module-scoped proxies
    start once). The e2e tests mostly wait on timers and child processes, bind port 0 and
    write under tmp_path only. An explicit ``-n``, ``-s``, ``--pdb`` or a test id (``file::test``)
    keeps one process, as does a missing xdist (the wheel check's clean venv)."""
    opt = config.option
    if (
        hasattr(config, "workerinput")  # an xdist worker: never spawn more
        or not config.pluginmanager.hasplugin("xdist")
        or opt.numprocesses is not None
        or getattr(opt, "dist", "no") != "no"
        or opt.usepdb
        or opt.capture == "no"
        or opt.collectonly
        or any("::" in arg for arg in config.args)
    ):
        return
    opt.numprocesses = "auto"
    opt.dist = "loadfile"


# -- output collection -------------------------------------------------------------


class LineLog:
    """Lines read from a child's pipe by a daemon thread; wait on them by pattern."""

    def __init__(self, stream: IO[bytes], what: str) -> None:
        self.what = what
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in stream:
                with self._cond:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def mark(self) -> int:
        """Index of the next line, for ``wait_line(after=...)`` and ``since``."""
        with self._cond:
            return len(self.lines)

    def since(self, mark: int) -> list[str]:
        with self._cond:
            return self.lines[mark:]

    def wait_line(self, pattern: str | re.Pattern[str], *, after: int = 0, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line at index >= ``after`` matching ``pattern``; fails on timeout or EOF."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "EOF" if self.eof else f"no match after {timeout}s"
                    raise AssertionError(f"{why} waiting for {rx.pattern!r} on {self.what}:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def count(self, pattern: str, *, after: int = 0) -> int:
        rx = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines[after:] if rx.search(line))

    def wait_count(self, pattern: str, n: int, *, after: int = 0, timeout: float = TIMEOUT) -> bool:
        """True once ``n`` lines at index >= ``after`` match ``pattern``; False on timeout or EOF."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen, i = 0, after
        with self._cond:
            while True:
                for line in self.lines[i:]:
                    seen += 1 if rx.search(line) else 0
                i = len(self.lines)
                left = deadline - time.monotonic()
                if seen >= n:
                    return True
                if self.eof or left <= 0:
                    return False
                self._cond.wait(left)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# -- origin ----------------------------------------------------------------------


class Origin:
    """``origin_app.py`` in a subprocess. ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, name: str = "origin", *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(ORIGIN_APP), "--name", name, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.log = LineLog(self.proc.stdout, f"origin {name} stdout")
        self.errors = LineLog(self.proc.stderr, f"origin {name} stderr")
        try:
            m = self.log.wait_line(r"^PORT (\d+)$")
        except AssertionError as exc:
            self.close()
            raise AssertionError(f"{exc}\nstderr:\n{self.errors.text}") from None
        self.port = int(m[1])
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"

    def close(self) -> None:
        _stop_process(self.proc, 10)
        self.log.join()
        self.errors.join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# -- proxy -----------------------------------------------------------------------


_counter = itertools.count()


class Proxy:
    """A running ``monolake run`` supervisor and its workers."""

    def __init__(
        self,
        config_text: str,
        directory: Path,
        *,
        loop: str,
        workers: int | None = 1,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.config_path = directory / f"proxy-{next(_counter)}.toml"
        self.config_path.write_text(config_text)
        self.loop = loop
        args = [sys.executable, "-m", "monolake.product.cli", "run", "-c", str(self.config_path), "--loop", loop]
        if workers is not None:
            args += ["--workers", str(workers)]
        args += extra_args or []
        full_env = dict(os.environ)
        # The repository root is importable, so filters are named "examples.filters.x:Class"
        # as in the README, whatever the working directory.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd or directory,  # ``cwd``: run from elsewhere than the config file's directory
        )
        self.pid = self.proc.pid
        self.seen_workers: set[int] = set()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.log = LineLog(self.proc.stderr, f"proxy pid {self.pid} stderr")
        self.stdout = LineLog(self.proc.stdout, f"proxy pid {self.pid} stdout")
        try:
            m = self.log.wait_line(READY)
            if loop == "io_uring" and not full_env.get("MONOLAKE_URING_FAIL"):
                # Falling back to uvloop would make every io_uring test a uvloop test.
                assert not self.log.count(r"io_uring (unavailable|ring setup failed)"), (
                    "the proxy fell back from io_uring: " + "\n".join(self.log.lines[-5:])
                )
        except AssertionError:
            self.close()
            raise
        self.servers: dict[str, str] = dict(pair.split("=", 1) for pair in m["servers"].split(","))
        self.address = next(iter(self.servers.values()))
        self.url = f"http://{self.address}"
        self.workers()

    def url_of(self, server: str) -> str:
        return f"http://{self.servers[server]}"

    def workers(self) -> list[int]:
        """The supervisor's current children (its workers), from /proc."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            pids = sorted(int(p) for p in path.read_text().split())
        except OSError:
            pids = []
        self.seen_workers.update(pids)
        return pids

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the supervisor and wait; returns its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.join()
        return code

    def close(self) -> None:
        """Teardown: stop now, not gracefully (a test of the graceful stop calls ``stop``).

        The first SIGTERM starts the drain; once each worker has logged it, a second one
        hurries them, so an idle keep-alive connection (closed after 1 s of drain) or a
        request left in flight (``drain_timeout``) does not hold the suite up. Waiting
        for the lines first matters: two SIGTERMs that reach a worker before it handled
        the first are one signal to the kernel."""
        workers = self.workers()
        if self.proc.poll() is None:
            mark = self.log.mark()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            # (a worker's line, runtime/_worker.py; EOF when the proxy exits first)
            self.log.wait_count(r"worker \d+ draining", len(workers), after=mark, timeout=3)
            with contextlib.suppress(ProcessLookupError):
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
        _stop_process(self.proc)
        # Workers outlive a killed supervisor only until they see the life pipe close;
        # anything still running our exact command line is ours and goes now.
        for pid in self.seen_workers:
            with contextlib.suppress(OSError):
                if str(self.config_path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self.log.join()
        self.stdout.join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class ProxyFactory:
    """Starts proxies from TOML text (``{name}`` placeholders filled from keywords)."""

    def __init__(self, directory: Path, loop: str) -> None:
        self.directory = directory
        self.loop = loop
        self.started: list[Proxy] = []

    def __call__(
        self,
        template: str,
        *,
        workers: int | None = 1,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        **values: Any,
    ) -> Proxy:
        proxy = Proxy(render(template, **values), self.directory, loop=self.loop, workers=workers, env=env, cwd=cwd)
        self.started.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.started:
            proxy.close()


# -- nginx -----------------------------------------------------------------------


@dataclass
class Nginx:
    """nginx serving ``files`` (name -> bytes) from ``root`` on ``port``."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


NGINX_CONF = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 10000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location = /ok {{ return 200 "nginx ok\\n"; }}
    }}
}}
"""


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> bool:
    """True once ``port`` accepts a connection; False if ``proc`` exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.02)  # polling a condition (nginx prints nothing when ready)
    return False


def start_nginx(directory: Path, files: dict[str, bytes]) -> Nginx:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.skip("nginx is not installed (CI installs it; apt-get install nginx to run these locally)")
    www = directory / "www"
    www.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (www / name).write_bytes(data)
    user = ""
    if os.geteuid() == 0:
        # Workers would drop to "nobody", which cannot read a 0700 pytest tmp dir.
        user = "user root;"
    last_err = ""
    for _attempt in range(3):
        port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, dir=directory, port=port))
        proc = subprocess.Popen(
            [binary, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if _wait_port(port, proc):
            assert proc.stderr is not None
            proc.stderr.close()
            return Nginx(proc, port, www, files)
        _stop_process(proc, 5)
        assert proc.stderr is not None
        last_err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        with contextlib.suppress(OSError):
            last_err += (directory / "error.log").read_text()
    raise AssertionError(f"nginx did not start:\n{last_err}")


def stop_nginx(nginx: Nginx) -> None:
    # SIGQUIT is nginx's graceful stop; _stop_process falls back to SIGKILL.
    if nginx.proc.poll() is None:
        nginx.proc.send_signal(signal.SIGQUIT)
        try:
            nginx.proc.wait(10)
        except subprocess.TimeoutExpired:
            nginx.proc.kill()
            nginx.proc.wait(5)


# -- raw HTTP over a socket ------------------------------------------------------


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    def header_names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


class RawClient:
    """A blocking socket with a read buffer, for requests httpx will not send."""

    def __init__(self, address: str, timeout: float = TIMEOUT, *, rcvbuf: int = 0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the window is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, int(port)))
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before {marker!r}; have {self.buf[:200]!r}")
        out, _, self.buf = self.buf.partition(marker)
        return out

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed with {len(self.buf)} of {n} body bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> RawResponse:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head.split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
        return RawResponse(version, int(status), reason[0] if reason else "", headers, b"")

    def read_response(self, *, head: bool = False) -> RawResponse:
        """The next final response (interim 1xx skipped unless asked for with read_head)."""
        while True:
            resp = self.read_head()
            if resp.status >= 200 or resp.status == 101:
                break
        if head or resp.status in (204, 304):
            return resp
        te = resp.header("Transfer-Encoding")
        cl = resp.header("Content-Length")
        if te is not None and "chunked" in te.lower():
            resp.chunked = True
            parts = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")  # no trailers expected
                    break
                parts.append(self._read_exact(size))
                self._read_exact(2)
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._read_exact(int(cl))
        else:
            resp.body = self.read_until_close()
        return resp

    def read_until_close(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def is_closed(self, timeout: float = TIMEOUT) -> bool:
        """True when the peer closes (EOF) with nothing more to read within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False


def raw_request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test.local"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- process memory --------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {key}")


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module", params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The proxy's event loop backend; every e2e test runs on each (io_uring only where this
    machine can run it: the skip names the reason, and a proxy that falls back fails)."""
    if request.param == "io_uring":
        from monolake.core.runtime.uring import unavailable

        reason = unavailable()
        if reason is not None:
            pytest.skip(f"io_uring is not usable on this machine: {reason}")
    return str(request.param)


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    o = Origin("origin")
    yield o
    o.close()


@pytest.fixture(scope="session")
def origins() -> Iterator[list[Origin]]:
    """Three more origins (names a, b, c) for load balancing."""
    started: list[Origin] = []
    try:
        for name in ("a", "b", "c"):
            started.append(Origin(name))
        yield started
    finally:
        for o in started:
            o.close()


@pytest.fixture
def proxy(tmp_path: Path, loop_kind: str) -> Iterator[ProxyFactory]:
    """Function-scoped proxy factory: ``proxy(toml, **placeholders) -> Proxy``."""
    factory = ProxyFactory(tmp_path, loop_kind)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_proxy(tmp_path_factory: pytest.TempPathFactory, loop_kind: str) -> Iterator[ProxyFactory]:
    """Module-scoped proxy factory for the many small tests that share one config."""
    factory = ProxyFactory(tmp_path_factory.mktemp(f"proxy-{loop_kind}"), loop_kind)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def nginx_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    files = {
        "small.txt": b"hello from nginx\n",
        "medium.bin": pattern_bytes(300_000),
        "large.bin": os.urandom(20 * 1024 * 1024),
    }
    n = start_nginx(tmp_path_factory.mktemp("nginx"), files)
    yield n
    stop_nginx(n)


# -- in-process TLS and HTTP/2 origins (client and health-check tests) ----------------------


def load_h2_origin() -> ModuleType:
    """tests/e2e/h2_origin.py (an HTTP/2 origin on the ``h2`` library), imported once per process."""
    mod = sys.modules.get("h2_origin")
    if mod is None:
        spec = importlib.util.spec_from_file_location("h2_origin", E2E / "h2_origin.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["h2_origin"] = mod
        spec.loader.exec_module(mod)
    return mod


def issue_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A fresh test CA and a certificate for 127.0.0.1 under ``directory``: (chain, key, CA) PEM paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    (directory / "chain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return directory / "chain.pem", directory / "key.pem", directory / "ca.pem"


def tls_server_context(certs: tuple[Path, Path, Path], alpn: list[str]) -> ssl.SSLContext:
    """A server context for ``issue_certs``' certificate offering ``alpn``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs[0]), str(certs[1]))
    ctx.set_alpn_protocols(alpn)
    return ctx
