"""The discovery hub: one source per cluster, in the supervisor, fanned out to the workers.

The hub runs every cluster's ``EndpointSource`` on one asyncio loop in a thread of the
supervisor, so a fleet of N workers makes one DNS query, one etcd watch, one inotify watch
per cluster, not N. Each new set (a source's ``update``, or an admin change) is published
as one control message, ``{"op": "app", "topic": "endpoints/NAME", "cluster": NAME,
"records": [...]}``, through ``publish`` (the supervisor's ``broadcast``: sent to every
worker now and kept for workers started later, so a restarted worker builds with the
current set). Each worker's proxy builder applies it to its cluster
(``UpstreamCluster.set_endpoints``).

An unchanged set is not published again. A set whose records do not all parse is refused
by the sources before it gets here. The hub keeps per cluster: the current records, the
source's update and error counts, the last error and the wall-clock time of the last
successful lookup, for the admin endpoint's ``/endpoints`` page and the metrics.

Admin changes (``put``, ``delete``, ``drain``) edit the current set and publish it; the
source's next update replaces them (a file or etcd source is the truth; "admin" and
"static" sources have no updates, so there they last).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from ...core.errors import ConfigError
from ..config import Config, Discovery
from ._record import EndpointRecord, records_to_wire
from ._source import EndpointSource, close_in_child

log = logging.getLogger("monolake.discovery")

RESTART_PAUSE = 1.0
"""Seconds before a source that stopped (raised or returned) runs again."""

Publish = Callable[[str, dict[str, Any]], None]


def make_source(cluster: str, d: Discovery, base_dir: str | None) -> EndpointSource | None:
    """The source for ``d`` (None for "static" and "admin": nothing to watch)."""
    if d.kind == "dns":
        from ._dns import DnsSource

        return DnsSource(cluster, d)
    if d.kind == "file":
        from ._file import FileSource, resolve_path

        return FileSource(cluster, resolve_path(d.path, base_dir))
    if d.kind == "etcd":
        from ._etcd import EtcdSource

        return EtcdSource(cluster, d)
    if d.kind == "custom":
        return _custom(cluster, d)
    return None


def _custom(cluster: str, d: Discovery) -> EndpointSource:
    """``d.source``'s class made for ``cluster``. Raises ConfigError naming the key path."""
    where = f"upstreams.{cluster}.discovery.source"
    module, _, attr = d.source.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except Exception as exc:
        raise ConfigError(where, f"cannot import {d.source!r}: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, EndpointSource)):
        raise ConfigError(where, f"{d.source!r} is not an EndpointSource subclass")
    try:
        return cls(cluster, **d.args)  # type: ignore[no-any-return,unused-ignore]
    except Exception as exc:
        raise ConfigError(f"upstreams.{cluster}.discovery.args", f"{type(exc).__name__}: {exc}") from None


def topic(cluster: str) -> str:
    return f"endpoints/{cluster}"


class ClusterSet:
    """One cluster's discovered endpoints and its source's record."""

    def __init__(self, name: str, d: Discovery, source: EndpointSource | None, initial: list[EndpointRecord]) -> None:
        self.name = name
        self.discovery = d
        self.source = source
        self.records: list[EndpointRecord] = initial
        self.configured = list(initial)
        """The config's own endpoints (where a static or admin set starts)."""
        self.published = False
        self.updates = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        """Wall-clock time of the last successful lookup (None: none yet)."""
        self.task: asyncio.Task[None] | None = None

    def statistics(self) -> dict[str, Any]:
        return {
            "kind": self.discovery.kind,
            "source": self.source.describe() if self.source is not None else self.discovery.kind,
            "endpoints": records_to_wire(self.records),
            "updates": self.updates,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_success": self.last_success,
        }


class _Sink:
    def __init__(self, hub: DiscoveryHub, cs: ClusterSet) -> None:
        self.hub = hub
        self.cs = cs

    def update(self, records: Sequence[EndpointRecord]) -> None:
        self.hub._update(self.cs, list(records), counted=True)

    def error(self, why: str) -> None:
        cs = self.cs
        with self.hub.lock:
            cs.errors += 1
            repeated = cs.last_error == why
            cs.last_error = why
        # One line per new error; the count says how often it repeats.
        (log.debug if repeated else log.warning)(
            "discovery: cluster %s: %s failed, keeping the last %d endpoint(s): %s",
            cs.name,
            cs.source.describe() if cs.source else cs.discovery.kind,
            len(cs.records),
            why,
        )


class DiscoveryHub:
    """Runs the sources of ``cfg``'s clusters; ``publish(topic, message)`` reaches the workers."""

    def __init__(self, cfg: Config, publish: Publish) -> None:
        self.publish = publish
        self.lock = threading.RLock()
        self.sets: dict[str, ClusterSet] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cfg = cfg
        self._base_dir = cfg.base_dir
        self.started = time.time()

    # -- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the hub's thread and the sources of the config (returns at once)."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            os.register_at_fork(after_in_child=functools.partial(close_in_child, loop))
            ready.set()
            try:
                loop.run_forever()
            finally:
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))
                loop.close()

        self._thread = threading.Thread(target=main, name="monolake-discovery", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.reconfigure(self._cfg, strict=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        self._loop = self._thread = None

    def reconfigure(self, cfg: Config, *, strict: bool = False) -> None:
        """Follow a (reloaded) config: start sources of new or changed discovery tables, stop
        those of removed ones. Thread-safe. A custom source that cannot be made raises
        ConfigError with ``strict`` (at start), else is logged and its cluster keeps its set."""
        self._cfg = cfg
        self._base_dir = cfg.base_dir
        wanted = {n: c for n, c in cfg.upstreams.items() if c.discovery is not None}
        with self.lock:
            for name in [n for n in self.sets if n not in wanted]:
                self._stop(self.sets.pop(name))
                self.publish(topic(name), {})  # forget the retained set: the config's endpoints rule
            for name, c in wanted.items():
                d = c.discovery
                assert d is not None
                cs = self.sets.get(name)
                initial = [EndpointRecord(address=_spec_text(u.endpoint), weight=u.weight) for u in c.endpoints]
                if cs is not None and cs.discovery == d and (cs.source is not None or cs.configured == initial):
                    continue
                # (A static or admin set starts over from the config's endpoints when they change.)
                edited = cs is not None and cs.published
                if cs is not None:
                    self._stop(cs)
                try:
                    source = make_source(name, d, self._base_dir)
                except ConfigError as exc:
                    if strict:
                        raise
                    log.error("discovery: cluster %s: %s; its endpoints stay as they are", name, exc)
                    continue
                cs = self.sets[name] = ClusterSet(name, d, source, initial)
                if source is None:
                    if d.kind == "admin" or edited:  # a static set the admin API changed is the config's again
                        self._publish(cs)
                    continue
                log.info("discovery: cluster %s follows %s", name, source.describe())
                self._run(cs)

    def _run(self, cs: ClusterSet) -> None:
        loop = self._loop
        if loop is None or cs.source is None:
            return

        def begin() -> None:
            cs.task = loop.create_task(self._supervise(cs))

        loop.call_soon_threadsafe(begin)

    async def _supervise(self, cs: ClusterSet) -> None:
        assert cs.source is not None
        sink = _Sink(self, cs)
        while True:
            try:
                await cs.source.run(sink)
                why = "the source stopped"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("discovery: cluster %s: %s failed", cs.name, cs.source.describe())
                why = f"{type(exc).__name__}: {exc}"
            sink.error(why)
            await asyncio.sleep(RESTART_PAUSE)

    def _stop(self, cs: ClusterSet) -> None:
        task, loop = cs.task, self._loop
        if task is not None and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    # -- updates --------------------------------------------------------------------------

    def _update(self, cs: ClusterSet, records: list[EndpointRecord], *, counted: bool) -> None:
        with self.lock:
            if self.sets.get(cs.name) is not cs:
                return  # a stopped source's last word
            if counted:
                cs.last_success = time.time()
                cs.last_error = None
            if cs.published and records == cs.records:
                return
            if counted:
                cs.updates += 1
            before = len(cs.records)
            cs.records = records
            self._publish(cs)
        log.info("discovery: cluster %s now has %d endpoint(s) (was %d)", cs.name, len(records), before)

    def _publish(self, cs: ClusterSet) -> None:
        cs.published = True
        self.publish(topic(cs.name), {"op": "app", "cluster": cs.name, "records": records_to_wire(cs.records)})

    def current(self, cluster: str) -> list[EndpointRecord] | None:
        with self.lock:
            cs = self.sets.get(cluster)
            return list(cs.records) if cs is not None else None

    # -- the admin API --------------------------------------------------------------------

    def put(self, cluster: str, record: EndpointRecord) -> bool:
        """Add or replace (same address) one endpoint. False: the cluster has no discovery."""
        with self.lock:
            cs = self.sets.get(cluster)
            if cs is None:
                return False
            key = record.endpoint().key
            records = [r for r in cs.records if r.endpoint().key != key] + [record]
            self._update(cs, records, counted=False)
            return True

    def delete(self, cluster: str, address: str) -> bool | None:
        """Remove one endpoint. None: no such cluster; False: no such endpoint."""
        with self.lock:
            cs = self.sets.get(cluster)
            if cs is None:
                return None
            key = _key(address)
            records = [r for r in cs.records if r.endpoint().key != key]
            if len(records) == len(cs.records):
                return False
            self._update(cs, records, counted=False)
            return True

    def drain(self, cluster: str, address: str, draining: bool = True) -> bool | None:
        """Mark one endpoint draining (no new requests; those in flight finish) or not."""
        with self.lock:
            cs = self.sets.get(cluster)
            if cs is None:
                return None
            key = _key(address)
            found = False
            records = []
            for r in cs.records:
                if r.endpoint().key == key:
                    found = True
                    r = msgspec.structs.replace(r, draining=draining)
                records.append(r)
            if not found:
                return False
            self._update(cs, records, counted=False)
            return True

    def statistics(self) -> dict[str, Any]:
        with self.lock:
            return {name: cs.statistics() for name, cs in self.sets.items()}

    def families(self) -> list[Any]:
        """Prometheus metric families of the sources (the admin endpoint adds them to /metrics)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        updates = CounterMetricFamily(
            "monolake_discovery_updates", "Endpoint sets a discovery source delivered", labels=["upstream", "source"]
        )
        errors = CounterMetricFamily(
            "monolake_discovery_errors",
            "Failed discovery lookups (the last set was kept)",
            labels=["upstream", "source"],
        )
        last = GaugeMetricFamily(
            "monolake_discovery_last_success_timestamp_seconds",
            "Unix time of the last successful discovery lookup",
            labels=["upstream", "source"],
        )
        count = GaugeMetricFamily(
            "monolake_discovery_endpoints", "Endpoints the discovery source lists", labels=["upstream", "state"]
        )
        with self.lock:
            for name, cs in self.sets.items():
                kind = cs.discovery.kind
                updates.add_metric([name, kind], cs.updates)
                errors.add_metric([name, kind], cs.errors)
                if cs.last_success is not None:
                    last.add_metric([name, kind], cs.last_success)
                draining = sum(1 for r in cs.records if r.draining)
                count.add_metric([name, "active"], len(cs.records) - draining)
                count.add_metric([name, "draining"], draining)
        return [updates, errors, last, count]


def _key(address: str) -> Any:
    return EndpointRecord(address=address).endpoint().key


def _spec_text(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return f"unix:{spec.value}" if spec.type == "unix" else str(spec.value)


def hub_clusters(cfg: Config) -> Mapping[str, Discovery]:
    return {n: c.discovery for n, c in cfg.upstreams.items() if c.discovery is not None}
