"""Giving freed heap memory back to the system after a surge of connections.

A worker is one thread, so glibc serves it from the main arena (the brk heap). When
thousands of connections close, their objects larger than pymalloc's 512 bytes
(instance dicts, parser state, transports' buffers) go back to that heap, but glibc
only returns memory at the *top* of the heap, and only past a threshold that grows
with the largest block ever freed; the free chunks in the middle stay resident (an
attack that subsided left RSS where it peaked). ``malloc_trim(0)`` also releases
whole free pages in the middle of the heap (``madvise(MADV_DONTNEED)``), without
moving anything.

``HeapTrimmer`` looks every ``runtime.trim_interval`` seconds (1) at how many objects
Python has allocated (``sys.getallocatedblocks()``: a sum over pymalloc's arenas,
~0.1 ms for a 100 MB heap) and at RSS (``/proc/self/statm``, kept open), and trims when either
says a surge has passed: the object count dropped by ``TRIM_MIN_BLOCKS`` below its
peak since the last trim (an idle HTTP/1 connection is ~43 objects, so ~100
connections closed), or RSS grew by ``TRIM_MIN_RSS`` since the last trim while the
object count did not (a surge shorter than one interval). Nothing is done while the
heap grows or holds steady, and a trim that gave nothing back is not repeated. Asking
glibc how much is free (``mallinfo2``) would be the direct measure but walks every
free chunk (12 ms on a fragmented 140 MB heap); a trim costs about as much, once per
surge. pymalloc's own arenas (objects up to 512 bytes) are unmapped by CPython when
they empty; a trim does not touch them. Elsewhere than glibc (musl) the trimmer does
nothing.

What is freed when a connection closes is what a trim can give back: the HTTP/1
driver and the io_uring transport let go of their reference cycles on
``connection_lost`` for that reason. The stdlib asyncio transport keeps a bound
method of itself (a cycle), so on the ``asyncio`` loop closed transports wait for
CPython's next full collection.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys

log = logging.getLogger("monolake.worker")

TRIM_MIN_BLOCKS = 4096
"""Python objects freed (below the peak since the last trim) that make a trim worth its later page faults."""
TRIM_MIN_RSS = 8 << 20
"""RSS grown since the last trim, with no more objects alive, that makes a trim worth it."""

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the interpreter's own C library (find_library would run ldconfig)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim"):
        return None  # not glibc
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


class _Statm:
    """RSS from /proc/self/statm, kept open: reading it must not need a free descriptor (the
    worker may be out of them just when a trim is due)."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = -1

    def rss(self) -> int:
        """Resident bytes, or 0 where unknown."""
        if self._fd < 0:
            return 0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class HeapTrimmer:
    """A periodic check on the worker's loop (a timer, no task); see the module docstring.

    ``trims`` and ``trimmed_bytes`` (RSS given back) are for tests and the debug log.
    """

    __slots__ = (
        "_blocks_floor",
        "_handle",
        "_index",
        "_interval",
        "_libc",
        "_loop",
        "_peak",
        "_rss_floor",
        "_statm",
        "trimmed_bytes",
        "trims",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, index: int = 0) -> None:
        self._loop = loop
        self._interval = interval
        self._index = index
        self._libc = _libc() if interval > 0 else None
        self._handle: asyncio.TimerHandle | None = None
        self._peak = self._blocks_floor = sys.getallocatedblocks()
        self._statm = _Statm()
        self._rss_floor = self._statm.rss()
        self.trims = 0
        self.trimmed_bytes = 0
        if self._libc is not None:
            self._handle = loop.call_later(interval, self._check)

    def _check(self) -> None:
        self._handle = self._loop.call_later(self._interval, self._check)
        blocks = sys.getallocatedblocks()
        if blocks > self._peak:
            self._peak = blocks
        if self._peak - blocks >= TRIM_MIN_BLOCKS or (
            blocks - self._blocks_floor < TRIM_MIN_BLOCKS and self._statm.rss() - self._rss_floor >= TRIM_MIN_RSS
        ):
            self.trim()

    def trim(self) -> int:
        """``malloc_trim(0)`` now; returns the bytes of RSS it gave back."""
        if self._libc is None:
            return 0
        before = self._statm.rss()
        self._libc.malloc_trim(0)
        self._rss_floor = after = self._statm.rss()
        self._peak = self._blocks_floor = sys.getallocatedblocks()
        released = max(0, before - after)
        self.trims += 1
        self.trimmed_bytes += released
        log.debug("worker %d: heap trimmed, %d KiB given back to the system", self._index, released >> 10)
        return released

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._statm.close()
