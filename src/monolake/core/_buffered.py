"""Handing received bytes to an ``asyncio.BufferedProtocol``: shared by the transports that read
into bytes of their own (the io_uring socket transport's provided buffers, the TLS transport's
plaintext), which copy them into the protocol's buffers. A module of its own, compiled with the hot
path: the io_uring transport's module loads the C ring at import, so TLS cannot import it from there.
"""

from __future__ import annotations

from asyncio import BufferedProtocol


def feed(proto: BufferedProtocol, data: bytes) -> None:
    """Copy ``data`` into ``proto``'s buffers, as many ``get_buffer``/``buffer_updated`` rounds as
    its buffers take."""
    view = memoryview(data)
    while view:
        buf = memoryview(proto.get_buffer(len(view)))
        n = min(len(buf), len(view))
        if not n:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]
