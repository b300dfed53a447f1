"""Connectors: TCP, Unix and TLS connections to an endpoint, with error translation in one place.

Every client protocol (HTTP/1.1, HTTP/2, Thrift) and the health checks connect through
``open_transport``: the loop's own connect (and TLS handshake), then a protocol's greeting, all
within one ``connect_timeout``; whatever fails becomes ``ConnectError`` or ``ConnectTimeout``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..address import Endpoint
from ..errors import ConnectError, ConnectTimeout

P = TypeVar("P", bound=asyncio.Protocol)


async def open_transport(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    ep: Endpoint,
    connect_timeout: float,
    errors: dict[str, int],
    handshake: Callable[[asyncio.Transport, P], Awaitable[None]] | None = None,
) -> tuple[asyncio.Transport, P]:
    """Connect to ``ep`` (TCP, TLS or unix), then run ``handshake`` (a protocol's own greeting)
    within the same ``connect_timeout``; TCP_NODELAY is set. Raises ConnectError or
    ConnectTimeout, counted in ``errors`` by endpoint; the transport is closed on failure."""
    try:
        async with asyncio.timeout(connect_timeout):
            transport: Any
            if ep.path:
                transport, proto = await loop.create_unix_connection(factory, ep.path)
            elif ep.tls is not None:
                tls = ep.tls
                transport, proto = await loop.create_connection(
                    factory, ep.host, ep.port, ssl=tls.context, server_hostname=tls.sni or ep.host
                )
            else:
                transport, proto = await loop.create_connection(factory, ep.host, ep.port)
            if handshake is not None:
                try:
                    await handshake(transport, proto)
                except BaseException:
                    transport.close()
                    raise
    except ConnectError:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise
    except TimeoutError:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise ConnectTimeout(f"connect to {ep} timed out after {connect_timeout:g}s") from None
    except ssl.SSLCertVerificationError as exc:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        name = ep.tls.sni or ep.host if ep.tls is not None else ep.host
        raise ConnectError(
            f"TLS handshake with {ep} (server name {name!r}) failed: certificate verify failed: "
            f"{exc.verify_message or exc.reason}"
        ) from None
    except ssl.SSLError as exc:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise ConnectError(f"TLS handshake with {ep} failed: {exc.reason or exc}") from None
    except OSError as exc:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise ConnectError(f"connect to {ep} failed: {exc.strerror or exc}") from None
    sock: Any = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport, proto
