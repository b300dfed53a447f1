"""A small key-value service: the handler of ``kv.thrift``'s ``KV``.

``async def`` methods run concurrently (many calls in flight per connection); ``size`` is a
plain ``def``: quick CPU-only work runs inline, with no task. ``NotFound`` is declared by
the IDL, so raising it answers the caller with it. ``metainfo()`` is the call's metainfo:
``put`` sends the version back as a backward value and records who called (a persistent
``caller`` value, if the caller set one).
"""

from __future__ import annotations

import os

import thriftpy2

from monolake.rpc import metainfo

kv_thrift = thriftpy2.load(os.path.join(os.path.dirname(__file__), "kv.thrift"), module_name="kv_thrift")


class KV:
    def __init__(self) -> None:
        self.entries: dict[str, kv_thrift.Entry] = {}
        self.callers: list[str] = []

    async def get(self, key: str) -> kv_thrift.Entry:
        entry = self.entries.get(key)
        if entry is None:
            raise kv_thrift.NotFound(key=key)
        return entry

    async def put(self, key: str, value: str) -> kv_thrift.Entry:
        old = self.entries.get(key)
        entry = kv_thrift.Entry(key=key, value=value, version=old.version + 1 if old else 1)
        self.entries[key] = entry
        mi = metainfo()
        self.callers.append(mi.get("caller") or "?")
        mi.set_backward("version", str(entry.version))
        return entry

    def size(self) -> int:
        return len(self.entries)

    def touch(self, key: str) -> None:
        pass  # oneway: nobody waits for an answer
