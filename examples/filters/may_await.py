"""A filter that usually answers at once and only sometimes waits: ``@may_await``.

``ApiKeys`` lets through requests whose ``X-Api-Key`` is in a JSON list kept in a file
(``["key1", "key2"]``). The list is held in memory: a known key (nearly every request) is
checked by a plain call that returns None, with no coroutine and no await. A key it does
not know may have been added since: then, at most once per ``reload_every`` seconds, it
returns a coroutine that reads the file again (in a thread, off the event loop) and the
proxy awaits that one request; the others go on meanwhile.

    [[servers.api.filters]]
    use = "examples.filters.may_await:ApiKeys"
    args = { path = "api-keys.json", reload_every = 5.0 }
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

from monolake.apps.proxy import HttpFilter, may_await
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context


def _deny(status: int, text: bytes) -> Response:
    return Response(status, Headers([(b"Content-Type", b"text/plain")]), text)


class ApiKeys(HttpFilter):
    def __init__(self, path: str, reload_every: float = 5.0) -> None:
        self.path = Path(path)
        self.reload_every = reload_every
        self.keys = self._read()
        self.loaded_at = float("-inf")
        """Loop time of the last reload; the first unknown key reloads at once."""
        self.reloads = 0

    def _read(self) -> frozenset[bytes]:
        return frozenset(k.encode() for k in json.loads(self.path.read_text()))

    @may_await
    def request_filter(self, req: Request, ctx: Context) -> Response | Awaitable[Response | None] | None:
        key = req.headers.get(b"x-api-key")
        if key is None:
            return _deny(401, b"X-Api-Key required\n")
        if key in self.keys:
            return None  # the common case: answered by the call itself
        if ctx.start - self.loaded_at < self.reload_every:
            return _deny(403, b"unknown API key\n")
        return self._reload_then_check(key, ctx)  # the proxy awaits this one

    async def _reload_then_check(self, key: bytes, ctx: Context) -> Response | None:
        self.loaded_at = ctx.start
        self.reloads += 1
        self.keys = await asyncio.to_thread(self._read)
        return None if key in self.keys else _deny(403, b"unknown API key\n")
