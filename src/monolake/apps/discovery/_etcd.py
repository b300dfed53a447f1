"""etcd discovery: the endpoint records under a key prefix, watched through etcd v3.

etcd's v3 API is gRPC; every etcd also serves it as JSON over HTTP (the gRPC gateway,
``/v3/kv/range``, ``/v3/watch``, ``/v3/auth/authenticate``, keys and values base64), which
our own HTTP client speaks (``core.client.Client``, TLS included), so no etcd library is
needed (the Python ones are unmaintained).

Each key under ``prefix`` holds one endpoint record (JSON, see ``_record``). The source
reads the whole prefix once (``range``: the records and the store's revision), publishes
them, then opens a watch from the next revision: each event (a put or a delete of a key)
changes the set, published whole. A watch that ends (the member went away, the connection
broke) is opened again on the next member listed, *from the revision after the last one
seen*, so no change is lost or applied twice; if etcd has compacted that revision away, the
source reads the prefix again. When every member failed in a row it waits ``RETRY`` seconds
(doubling to ``RETRY_MAX``) before going round again; the last good set stays meanwhile.

With ``username``/``password`` a token from ``/v3/auth/authenticate`` goes in each
request's ``Authorization`` header (renewed on a 401 or an auth error); with ``tls`` the
members are spoken to over TLS (a CA, a client certificate for etcd's
``--client-cert-auth``).

A record that does not parse is logged and counted as an error, and left out of the set.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ...core.address import Endpoint, parse_endpoint
from ...core.client import Client, PoolSettings
from ...core.errors import MonolakeError
from ...core.proto.http1 import Headers, Request
from ...core.tls import client_tls
from ..config import Discovery
from ._record import EndpointRecord, parse_record
from ._source import EndpointSource, Sink

log = logging.getLogger("monolake.discovery")

RETRY = 0.5
RETRY_MAX = 10.0
WATCH_IDLE = 900.0
"""Seconds a watch may stay silent (etcd sends a progress notice every 10 minutes)."""


class EtcdError(Exception):
    """etcd answered with an error (or not with what the API promises)."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        self.auth = auth


class Compacted(Exception):
    """The revision to resume from was compacted away: read the prefix again."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's ``--prefix``)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"  # every key


class EtcdClient:
    """The few calls of etcd's JSON gateway the discovery and config sources need."""

    def __init__(
        self,
        urls: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        tls: Any = None,
        timeout: float = 5.0,
        where: str = "etcd",
    ) -> None:
        ctls = client_tls(f"{where}.tls", tls) if tls is not None else None
        self.members: list[Endpoint] = []
        for url in urls:
            ep = parse_endpoint(url.rstrip("/"))
            if ctls is not None and not ep.path:
                ep = Endpoint(scheme="https", host=ep.host, port=ep.port, tls=ctls)
            self.members.append(ep)
        self.username = username
        self.password = password
        self.timeout = timeout
        self.token: str | None = None
        self.client = Client(default=PoolSettings(connect_timeout=timeout, read_timeout=timeout, max_idle=4))

    def close(self) -> None:
        self.client.close()

    async def _post(self, ep: Endpoint, path: str, payload: dict[str, Any], *, stream: bool = False) -> Any:
        """POST ``payload`` and return the decoded answer (``stream``: the response, whose body the
        caller reads). Raises EtcdError, MonolakeError, OSError."""
        if self.username is not None and self.token is None and path != "/v3/auth/authenticate":
            await self.authenticate(ep)
        fields = [(b"Host", ep.authority.encode()), (b"Content-Type", b"application/json")]
        if self.token is not None and path != "/v3/auth/authenticate":
            fields.append((b"Authorization", self.token.encode()))
        req = Request(b"POST", path.encode(), Headers(fields), body=json.dumps(payload).encode())
        resp = await self.client.send(req, ep, read_timeout=WATCH_IDLE if stream else self.timeout)
        if stream and resp.status == 200:
            return resp
        body = resp.body if isinstance(resp.body, bytes) else await resp.body.read_all(16 << 20)
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        if resp.status != 200 or "error" in doc or ("code" in doc and doc.get("message")):
            message = str(doc.get("message") or doc.get("error") or f"HTTP {resp.status}")
            auth = resp.status == 401 or "token" in message or "auth" in message
            if auth:
                self.token = None
            raise EtcdError(f"{ep}: {path}: {message}", auth=auth)
        return doc

    async def authenticate(self, ep: Endpoint) -> None:
        doc = await self._post(ep, "/v3/auth/authenticate", {"name": self.username, "password": self.password})
        token = doc.get("token")
        if not token:
            raise EtcdError(f"{ep}: authentication gave no token", auth=True)
        self.token = str(token)

    async def range(self, ep: Endpoint, key: bytes, end: bytes | None) -> tuple[dict[bytes, bytes], int]:
        """The keys in [key, end) (just ``key`` when ``end`` is None) and the store's revision."""
        payload = {"key": _b64(key)}
        if end is not None:
            payload["range_end"] = _b64(end)
        doc = await self._post(ep, "/v3/kv/range", payload)
        kvs = {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in doc.get("kvs", ())}
        return kvs, int(doc.get("header", {}).get("revision", 0))

    async def put(self, ep: Endpoint, key: bytes, value: bytes) -> int:
        doc = await self._post(ep, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(doc.get("header", {}).get("revision", 0))

    async def watch(
        self, ep: Endpoint, key: bytes, end: bytes | None, start_revision: int
    ) -> AsyncIterator[tuple[int, list[tuple[str, bytes, bytes]]]]:
        """Yield (revision, [(type "PUT"|"DELETE", key, value)]) per watch response, from
        ``start_revision`` on, until the stream ends (then return). Raises Compacted, EtcdError,
        MonolakeError, OSError."""
        create: dict[str, Any] = {"key": _b64(key), "start_revision": start_revision, "progress_notify": True}
        if end is not None:
            create["range_end"] = _b64(end)
        resp = await self._post(ep, "/v3/watch", {"create_request": create}, stream=True)
        body = resp.body
        if isinstance(body, bytes):
            return  # the whole answer came at once: the stream ended
        buf = ""
        decoder = json.JSONDecoder()
        try:
            while chunk := await body.read():
                buf += chunk.decode()
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        doc, used = decoder.raw_decode(buf)
                    except ValueError:
                        break  # an incomplete object: wait for more
                    buf = buf[used:]
                    if "error" in doc:
                        err = doc["error"]
                        message = str(err.get("message", err))
                        auth = "auth" in message or "token" in message
                        if auth:
                            self.token = None  # expired (etcd's simple tokens do): authenticate again
                        raise EtcdError(f"{ep}: watch: {message}", auth=auth)
                    result = doc.get("result", {})
                    if result.get("canceled") or result.get("compact_revision"):
                        if int(result.get("compact_revision", 0) or 0):
                            raise Compacted(f"revision {start_revision} compacted")
                        raise EtcdError(f"{ep}: watch canceled: {result.get('cancel_reason', '')}")
                    rev = int(result.get("header", {}).get("revision", 0))
                    events = [
                        (
                            str(ev.get("type", "PUT")),
                            base64.b64decode(ev["kv"]["key"]),
                            base64.b64decode(ev["kv"].get("value", "")),
                        )
                        for ev in result.get("events", ())
                    ]
                    yield rev, events
        finally:
            body.cancel()


class EtcdSource(EndpointSource):
    kind = "etcd"

    def __init__(self, cluster: str, d: Discovery) -> None:
        super().__init__(cluster)
        self.cfg = d
        self.prefix = d.prefix.encode()
        self.revision = 0
        """The last revision seen (0: read the prefix first)."""
        self.kvs: dict[bytes, EndpointRecord] = {}
        self.member = 0
        self.watching: Endpoint | None = None
        """The member the watch is on now (for tests and the admin page)."""

    def describe(self) -> str:
        return f"etcd {self.cfg.prefix}"

    def _set(self, key: bytes, value: bytes, sink: Sink) -> None:
        try:
            self.kvs[key] = parse_record(value, f"etcd key {key.decode(errors='replace')}")
        except ValueError as exc:
            self.kvs.pop(key, None)
            sink.error(str(exc))

    async def run(self, sink: Sink) -> None:
        d = self.cfg
        etcd = EtcdClient(
            d.endpoints, username=d.username, password=d.password, tls=d.tls, timeout=d.timeout, where="discovery"
        )
        end = prefix_end(self.prefix)
        failed = 0
        pause = RETRY
        try:
            while True:
                ep = etcd.members[self.member % len(etcd.members)]
                try:
                    if self.revision == 0:
                        kvs, rev = await etcd.range(ep, self.prefix, end)
                        self.kvs.clear()
                        for k, v in kvs.items():
                            self._set(k, v, sink)
                        self.revision = rev
                        sink.update(sorted(self.kvs.values(), key=lambda r: r.address))
                    self.watching = ep
                    async for rev, events in etcd.watch(ep, self.prefix, end, self.revision + 1):
                        failed, pause = 0, RETRY
                        for kind, key, value in events:
                            if kind == "DELETE":
                                self.kvs.pop(key, None)
                            else:
                                self._set(key, value, sink)
                        if rev:
                            self.revision = max(self.revision, rev)
                        if events:
                            sink.update(sorted(self.kvs.values(), key=lambda r: r.address))
                    raise EtcdError(f"{ep}: the watch ended")
                except asyncio.CancelledError:
                    raise
                except Compacted as exc:
                    sink.error(f"{ep}: {exc}; reading {d.prefix} again")
                    self.revision = 0
                    continue
                except (EtcdError, MonolakeError, OSError, ValueError, KeyError) as exc:
                    self.watching = None
                    sink.error(f"{ep}: {type(exc).__name__}: {exc}")
                    self.member += 1
                    failed += 1
                    if failed >= len(etcd.members):
                        failed = 0
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, RETRY_MAX)
        finally:
            etcd.close()
