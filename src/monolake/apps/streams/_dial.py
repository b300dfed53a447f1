"""``connect`` and ``connect_rpc``: opening client connections (once per connection, so not
compiled with the hot-path modules: their docstrings stay for ``help()`` and the docs)."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar, cast

from ...core.address import Endpoint
from ...core.client._connect import open_transport
from ._client import RpcConnection, endpoint, open_rpc
from ._codec import Codec
from ._conn import MessageConnection
from ._messages import RpcMessages

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def connect(
    address: str | Endpoint,
    codec: Codec[T],
    *,
    tls: Any = None,
    connect_timeout: float = 10.0,
    idle_timeout: float | None = None,
    max_queued: int = 1024,
) -> MessageConnection[T]:
    """A message connection to ``address`` (see ``endpoint`` for ``tls``). Raises ConnectError
    or ConnectTimeout."""
    ep = endpoint(address, tls)
    loop = asyncio.get_running_loop()
    # open_transport is typed for asyncio.Protocol; a BufferedProtocol goes through the same calls.
    factory: Any = lambda: MessageConnection(codec, idle_timeout=idle_timeout, max_queued=max_queued)  # noqa: E731
    _, conn = await open_transport(loop, factory, ep, connect_timeout, {})
    return cast(MessageConnection[T], conn)


async def connect_rpc(
    address: str | Endpoint,
    codec: Codec[Resp],
    requests: RpcMessages[Req],
    responses: RpcMessages[Resp],
    *,
    tls: Any = None,
    connect_timeout: float = 10.0,
) -> RpcConnection[Req, Resp]:
    """An ``RpcConnection`` to ``address``. Raises ConnectError or ConnectTimeout."""
    return await open_rpc(endpoint(address, tls), codec, requests, responses, connect_timeout)
