"""The whole config in one etcd key: ``monolake run --config etcd://host:port/key``.

A fleet of instances started with the same URL reads the same TOML text (the key's value)
and follows it: each instance watches the key (one watch, in a thread of the supervisor)
and on a change asks its supervisor for a reload, which reads the key again and goes through
the same two-phase reload as SIGHUP. So every instance switches to a good config within a
moment of the others, and a bad one is refused by each (``monolake check``'s errors, with
key paths, logged and kept as the last reload's result; the running config stays).

URL: ``etcd://HOST:PORT[,HOST:PORT...]/KEY`` (``etcds://`` for TLS). The members are tried
in order, the watch resumes from the last revision it saw on the next one after a failure.
Credentials and TLS files come from the environment, not the command line (which every user
can read in /proc): ``MONOLAKE_ETCD_USERNAME``/``MONOLAKE_ETCD_PASSWORD``,
``MONOLAKE_ETCD_CA``, ``MONOLAKE_ETCD_CERT``/``MONOLAKE_ETCD_KEY`` (a client certificate).
Relative paths in the config (filter modules, certificates, IDLs) are taken from the working
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...core.errors import ConfigError, MonolakeError
from ...core.tls_settings import UpstreamTls
from ..config import Config, parse_config
from ._etcd import RETRY, RETRY_MAX, Compacted, EtcdClient, EtcdError
from ._source import close_in_child

log = logging.getLogger("monolake.discovery")

SCHEMES = ("etcd://", "etcds://")


def is_etcd_url(text: str) -> bool:
    return text.startswith(SCHEMES)


@dataclass(frozen=True, slots=True)
class EtcdConfigUrl:
    members: list[str]
    key: bytes

    @classmethod
    def parse(cls, url: str) -> EtcdConfigUrl:
        """Raises ConfigError for a malformed URL."""
        scheme, _, rest = url.partition("://")
        hosts, slash, key = rest.partition("/")
        if not hosts or not slash or not key:
            raise ConfigError("", f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT...]/KEY")
        http = "https" if scheme == "etcds" else "http"
        return cls([f"{http}://{h}" for h in hosts.split(",") if h], ("/" + key).encode())


def _client(url: EtcdConfigUrl, timeout: float = 5.0) -> EtcdClient:
    env = os.environ
    tls = None
    if url.members[0].startswith("https://"):
        tls = UpstreamTls(
            ca=env.get("MONOLAKE_ETCD_CA"),
            client_cert=env.get("MONOLAKE_ETCD_CERT"),
            client_key=env.get("MONOLAKE_ETCD_KEY"),
        )
    return EtcdClient(
        url.members,
        username=env.get("MONOLAKE_ETCD_USERNAME"),
        password=env.get("MONOLAKE_ETCD_PASSWORD"),
        tls=tls,
        timeout=timeout,
        where="etcd",
    )


async def _read(url: EtcdConfigUrl) -> tuple[bytes, int]:
    etcd = _client(url)
    try:
        errors = []
        for ep in etcd.members:
            try:
                kvs, rev = await etcd.range(ep, url.key, None)
            except (EtcdError, MonolakeError, OSError, ValueError) as exc:
                errors.append(f"{ep}: {exc}")
                continue
            if url.key not in kvs:
                raise ConfigError("", f"etcd key {url.key.decode()} does not exist")
            return kvs[url.key], rev
        raise ConfigError("", "cannot read the config from etcd: " + "; ".join(errors))
    finally:
        etcd.close()


def load_etcd_config(text_url: str) -> Config:
    """Read and validate the config in the key. Raises ConfigError (also when etcd cannot be
    reached). Runs its own short-lived loop: call it where no loop runs (the supervisor)."""
    url = EtcdConfigUrl.parse(text_url)
    data, _ = asyncio.run(_read(url))
    try:
        raw = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("", f"{text_url} is not valid TOML: {exc}") from None
    return parse_config(raw, os.getcwd())


class EtcdConfigWatch:
    """Calls ``on_change()`` (from its own thread) each time the key is written or deleted."""

    def __init__(self, text_url: str, on_change: Callable[[], None]) -> None:
        self.url = EtcdConfigUrl.parse(text_url)
        self.on_change = on_change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.revision = 0
        self.watching: Any = None

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            os.register_at_fork(after_in_child=functools.partial(close_in_child, loop))
            task = loop.create_task(self._run())
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
            loop.close()

        self._thread = threading.Thread(target=main, name="monolake-etcd-config", daemon=True)
        self._thread.start()
        ready.wait()

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def cancel() -> None:
            for t in asyncio.all_tasks(loop):
                t.cancel()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(cancel)
        thread.join(5.0)

    async def _run(self) -> None:
        etcd = _client(self.url)
        member, failed, pause = 0, 0, RETRY
        try:
            while True:
                ep = etcd.members[member % len(etcd.members)]
                try:
                    if self.revision == 0:
                        _, self.revision = await etcd.range(ep, self.url.key, None)
                    self.watching = ep
                    async for rev, events in etcd.watch(ep, self.url.key, None, self.revision + 1):
                        failed, pause = 0, RETRY
                        self.revision = max(self.revision, rev)
                        if events:
                            log.info("etcd: config key %s changed (revision %d); reloading", self.url.key.decode(), rev)
                            self.on_change()
                    raise EtcdError(f"{ep}: the watch ended")
                except asyncio.CancelledError:
                    raise
                except Compacted:
                    self.revision = 0
                    self.on_change()  # what changed meanwhile is unknown: read it again
                except (EtcdError, MonolakeError, OSError, ValueError, KeyError) as exc:
                    self.watching = None
                    log.warning("etcd: watching the config key on %s failed: %s", ep, exc)
                    member += 1
                    failed += 1
                    if failed >= len(etcd.members):
                        failed = 0
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, RETRY_MAX)
        finally:
            etcd.close()
