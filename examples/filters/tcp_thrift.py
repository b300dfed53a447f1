"""Filters for ``proxy_type = "tcp"`` and ``"thrift"`` servers.

tcp (``TcpFilter``)::

    [servers.db]
    proxy_type = "tcp"
    filters = [{ use = "examples.filters.tcp_thrift:AllowList", args = { allow = ["127.0.0.1"] } },
               "examples.filters.tcp_thrift:ConnectionLog"]

- ``on_connect(peer, ctx)`` runs before anything is connected upstream; False closes the
  client's connection (an allow-list, a connection rate limit). It may be ``async def``.
- ``on_close(ctx, stats)`` sees the bytes each way, the duration, the endpoint, the outcome.

thrift (``ThriftFilter``)::

    [servers.rpc]
    proxy_type = "thrift"
    filters = [{ use = "examples.filters.tcp_thrift:DenyMethods", args = { methods = ["drop_table"] } },
               "examples.filters.tcp_thrift:CallLog"]

- ``call_filter(call, ctx)`` sees service, method, seq id and TTHeader headers before the
  call is routed; raising ``RefuseCall`` answers it with a TApplicationException.
- ``call_done(call, outcome, ctx)`` sees how every call ended.
"""

from __future__ import annotations

import asyncio
import logging

from monolake.proxy import ConnectionStats, RefuseCall, TcpFilter, ThriftCall, ThriftFilter
from monolake.service import Context

log = logging.getLogger("examples.filters")


class AllowList(TcpFilter):
    """Only clients whose IP is listed get relayed (async: a real one might ask a store)."""

    def __init__(self, allow: list[str]) -> None:
        self.allow = frozenset(allow)

    async def on_connect(self, peer: str, ctx: Context) -> bool:
        await asyncio.sleep(0)
        return peer in self.allow


class ConnectionLog(TcpFilter):
    def on_close(self, ctx: Context, stats: ConnectionStats) -> None:
        log.info(
            "tcp-closed server=%s peer=%s outcome=%s up=%d down=%d endpoint=%s",
            ctx.server,
            ctx.peer,
            stats.outcome,
            stats.bytes_up,
            stats.bytes_down,
            stats.endpoint,
        )


class DenyMethods(ThriftFilter):
    """Refuses the listed methods (async: a real one might ask a policy service)."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = frozenset(methods)

    async def call_filter(self, call: ThriftCall, ctx: Context) -> None:
        await asyncio.sleep(0)
        if call.method in self.methods:
            raise RefuseCall(f"method {call.method} is not allowed here")


class RequireHeader(ThriftFilter):
    """Refuses calls whose TTHeader/THeader headers lack ``header`` (plain: no I/O needed)."""

    def __init__(self, header: str = "RPC_PERSIST_CALLER") -> None:
        self.header = header

    def call_filter(self, call: ThriftCall, ctx: Context) -> None:
        if self.header not in call.headers:
            raise RefuseCall(f"{self.header} is required", kind=7)  # PROTOCOL_ERROR


class CallLog(ThriftFilter):
    def call_done(self, call: ThriftCall, outcome: str, ctx: Context) -> None:
        log.info("thrift-done method=%s seq=%d outcome=%s peer=%s", call.method, call.seq_id, outcome, ctx.peer)
