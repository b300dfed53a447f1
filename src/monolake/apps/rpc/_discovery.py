"""RPC clients on the fleet's discovery sources, in-process.

``SourceDiscovery`` runs any ``apps.discovery.EndpointSource`` (static, dns, file, etcd or
your own) as a task on the caller's loop and is itself the source's sink: each whole set
it reports becomes the client's endpoint list and bumps ``version``, which the Thrift and
gRPC balancing services compare once per call to rebuild their balancer (a pick stays
what it cost). No supervisor or hub is involved, so a plain asyncio program can use it.

A client given one registers ``on_change``: connections to endpoints that left the set
drain (calls in flight on them finish, then they close; no new call goes there because
the rebuilt balancer no longer names them). A failed lookup keeps the last good set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ...core.address import Endpoint
from ...core.errors import ConfigError
from ..discovery._record import EndpointRecord, to_endpoints
from ..discovery._source import EndpointSource

log = logging.getLogger("monolake.rpc")

Removed = Callable[[list[Endpoint]], None]


class SourceDiscovery:
    """Discovery for ``ThriftClient(discovery=...)`` and ``GrpcClient(discover=...)``.

    The source starts on the first call (on that call's loop); the first call waits for
    the first set. ``close()`` stops it. Use one per client (a client's loop).
    """

    def __init__(self, source: EndpointSource) -> None:
        self.source = source
        self.version = 0
        """Bumped on every change of the set."""
        self.errors = 0
        """Lookups that failed (the last good set stayed)."""
        self.last_error = ""
        self._endpoints: list[Endpoint] = []
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Event | None = None
        self._removed: list[Removed] = []

    # -- what the clients read -------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """The current set (a new list object after each change)."""
        if self._task is None:
            self.start()
        return self._endpoints

    async def wait(self) -> None:
        """Until the source reported a non-empty set."""
        self.start()
        assert self._first is not None
        await self._first.wait()

    def on_change(self, removed: Removed) -> None:
        """Call ``removed(endpoints)`` with the endpoints that left the set, on each change."""
        self._removed.append(removed)

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._first = asyncio.Event()
            self._task = loop.create_task(self._run(), name=f"discovery {self.source.describe()}")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        # A source that returns or raises is restarted after a pause, as the hub does.
        while True:
            try:
                await self.source.run(self)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)

    # -- the source's sink -----------------------------------------------------------

    def update(self, records: Sequence[EndpointRecord]) -> None:
        active, _draining = to_endpoints(records)
        old = self._endpoints
        if [(e.key, e.weight) for e in active] == [(e.key, e.weight) for e in old]:
            return
        keys = {e.key for e in active}
        gone = [e for e in old if e.key not in keys]
        self._endpoints = active
        self.version += 1
        if active and self._first is not None:
            self._first.set()
        log.info("discovery %s: %d endpoint(s)", self.source.describe(), len(active))
        if gone:
            for cb in self._removed:
                try:
                    cb(gone)
                except Exception:
                    log.exception("discovery %s: a drain callback failed", self.source.describe())

    def error(self, why: str) -> None:
        self.errors += 1
        self.last_error = why
        log.warning("discovery %s: %s (keeping the last good set)", self.source.describe(), why)

    # -- shorthands ------------------------------------------------------------------

    @classmethod
    def file(cls, path: str) -> SourceDiscovery:
        """Endpoint records in a JSON or TOML file, watched with inotify."""
        from ..discovery._file import FileSource

        return cls(FileSource("rpc", path))

    @classmethod
    def dns(
        cls,
        name: str,
        port: int = 0,
        *,
        record: str = "A+AAAA",
        nameservers: Sequence[str] = (),
        min_interval: float = 1.0,
        max_interval: float = 300.0,
        timeout: float = 5.0,
    ) -> SourceDiscovery:
        """A/AAAA addresses of ``name`` on ``port``, or its SRV targets (``record="SRV"``),
        re-resolved at the records' TTL within ``[min_interval, max_interval]`` seconds."""
        import msgspec

        from ..config import Discovery
        from ..discovery._dns import DnsSource

        d = msgspec.convert(
            {
                "kind": "dns",
                "name": name,
                "port": port,
                "record": record,
                "nameservers": list(nameservers),
                "min_interval": min_interval,
                "max_interval": max_interval,
                "timeout": timeout,
            },
            Discovery,
        )
        return cls(DnsSource("rpc", d))

    @classmethod
    def etcd(
        cls,
        endpoints: Sequence[str],
        prefix: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> SourceDiscovery:
        """The endpoint records under the key ``prefix`` of etcd (members' "http://host:2379"
        URLs), read then watched; the watch moves to the next member when one fails."""
        return cls.from_config(
            {
                "kind": "etcd",
                "endpoints": list(endpoints),
                "prefix": prefix,
                "username": username,
                "password": password,
                "timeout": timeout,
            }
        )

    @classmethod
    def from_config(cls, discovery: Any, base_dir: str | None = None) -> SourceDiscovery:
        """From a ``[upstreams.NAME.discovery]`` table (a dict, or the schema's ``Discovery``):
        any kind that watches something (dns, file, etcd, custom; TLS for etcd included).
        Raises ConfigError or msgspec.ValidationError."""
        import msgspec

        from ..config import Discovery
        from ..discovery._hub import make_source

        d = discovery if isinstance(discovery, Discovery) else msgspec.convert(discovery, Discovery)
        source = make_source("rpc", d, base_dir)
        if source is None:
            raise ConfigError("discovery.kind", f"{d.kind!r} has nothing to watch: pass the endpoints instead")
        return cls(source)
