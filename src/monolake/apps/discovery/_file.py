"""File discovery: a JSON or TOML file of endpoint records, watched with inotify.

For tools that render a file (consul-template, confd, a deploy script): the file is a JSON
list of records, a JSON object ``{"endpoints": [...]}``, or a TOML file (by its ``.toml``
suffix) with ``[[endpoints]]`` tables. Its directory is watched as the config file is
(``core.runtime._watch``: renames over the file and Kubernetes' ``..data`` symlink swaps
count); after ``DEBOUNCE`` seconds of quiet the file is read and, if its bytes changed,
parsed. A file that is missing or does not parse is logged and counted; the last good set
stays. With no inotify (not Linux) the file is polled every ``POLL`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tomllib
from typing import Any

from ...core.runtime._watch import DEBOUNCE, ConfigWatcher
from ._record import parse_records
from ._source import EndpointSource, Sink

POLL = 2.0


def read_records_file(path: str) -> tuple[bytes, Any]:
    """The file's bytes and its list of record objects. Raises OSError or ValueError."""
    with open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".toml"):
        doc: Any = tomllib.loads(data.decode())
    else:
        doc = json.loads(data)
    items = doc.get("endpoints") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ValueError('expected a list of endpoint records, or "endpoints" = [...]')
    return data, items


class FileSource(EndpointSource):
    kind = "file"

    def __init__(self, cluster: str, path: str) -> None:
        super().__init__(cluster)
        self.path = path
        self._digest: str | None = None

    def describe(self) -> str:
        return f"file {self.path}"

    def _load(self, sink: Sink) -> None:
        try:
            data, items = read_records_file(self.path)
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._digest:
                return
            records = parse_records(items, "endpoints")
        except (OSError, ValueError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            sink.error(f"{self.path}: {exc.strerror if isinstance(exc, OSError) else exc}")
            return
        self._digest = digest
        sink.update(records)

    async def run(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        try:
            watcher = ConfigWatcher(self.path)  # before the first read: a change after it is seen
        except OSError:
            while True:
                self._load(sink)
                await asyncio.sleep(POLL)
        self._load(sink)
        changed = asyncio.Event()

        def on_events() -> None:
            if watcher.read():
                changed.set()

        loop.add_reader(watcher.fileno(), on_events)
        try:
            while True:
                await changed.wait()
                # Quiet for DEBOUNCE: a writer's burst of events is one change.
                while changed.is_set():
                    changed.clear()
                    await asyncio.sleep(DEBOUNCE)
                self._load(sink)
        finally:
            loop.remove_reader(watcher.fileno())
            watcher.close()


def resolve_path(path: str, base_dir: str | None) -> str:
    return path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)
