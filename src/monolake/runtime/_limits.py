"""Open-file limits: ``runtime.max_open_files``, the start-up warning, accept failures.

Every connection is a descriptor, and a proxied one usually two (the client's and
the upstream's). The supervisor sets ``RLIMIT_NOFILE`` before it forks, so every
worker inherits it: the soft limit becomes ``runtime.max_open_files`` (default: the
hard limit, so the usual soft 1024 never caps a proxy by accident). A value above
the hard limit raises the hard limit too where the process may (root,
CAP_SYS_RESOURCE), else it is a config error naming the key.

The start-up warning uses ``fds_needed``: per server, ``1`` (its listener) plus
``2 x max(backlog, max_concurrency)`` (a burst of connections as large as the
accept queue, each with an upstream descriptor), plus ``WORKER_MARGIN`` for the
worker's own descriptors (loop, pipes, control channel, logs, admin, health checks).
It is an estimate of a busy worker, not a bound: idle keep-alive connections are
not limited by either setting.

Accept failures for lack of descriptors are logged as one line per 10 s on every
loop, the failures in between counted (``observe.RateLimitedLog``). asyncio and
the io_uring loop report them to the loop's exception handler (and retry a second
later, leaving the connection queued); uvloop's libuv accepts and closes such
connections itself without telling the loop, so on uvloop ``FdProbe`` samples the
descriptor table once a second and logs the same line while it is full.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from collections.abc import Mapping
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..observe._ratelimit import RateLimitedLog

log = logging.getLogger("monolake.worker")

MIN_OPEN_FILES = 64
"""The smallest ``runtime.max_open_files`` accepted (a worker needs ~30 to start)."""
WORKER_MARGIN = 64
"""Descriptors a worker holds besides its connections, in the ``fds_needed`` estimate."""
LOG_INTERVAL = 10.0
"""Seconds between two accept-failure lines (the ones between are counted, not logged)."""
PROBE_INTERVAL = 1.0
"""Seconds between two samples of the descriptor table on uvloop."""

_RESOURCE_ERRORS = {
    errno.EMFILE: "too many open files (limit {limit}); raise runtime.max_open_files",
    errno.ENFILE: "too many open files in the system (fs.file-max)",
    errno.ENOBUFS: "out of memory (ENOBUFS)",
    errno.ENOMEM: "out of memory (ENOMEM)",
}


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def open_files_limit() -> int:
    """This process's soft RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def apply_open_files(cfg: Config) -> int:
    """Set this process's soft RLIMIT_NOFILE to ``runtime.max_open_files`` (None: the hard limit).

    Returns the soft limit now in force. Raises ConfigError naming
    ``runtime.max_open_files`` when the value is above the hard limit and this process may
    not raise it (or the kernel refuses it: above ``fs.nr_open``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cfg.runtime.max_open_files
    if want is None:
        target = hard if hard != resource.RLIM_INFINITY else _nr_open()
        if target != soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError) as exc:
                log.warning("cannot raise the open-file limit from %d to the hard limit %d: %s", soft, target, exc)
                return soft
        return target
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
    except (ValueError, OSError) as exc:
        if want > hard:
            raise ConfigError(
                "runtime.max_open_files",
                f"{want} is above the hard limit of open files ({hard}), which this process may not raise"
                f" ({exc}); lower it, or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)",
            ) from None
        raise ConfigError("runtime.max_open_files", f"cannot set the open-file limit to {want}: {exc}") from None
    return want


def fds_needed(cfg: Config) -> int:
    """The descriptors a busy worker may need for ``cfg`` (the rule in the module docstring)."""
    need = WORKER_MARGIN
    for server in cfg.servers.values():
        need += 1 + 2 * max(server.backlog, server.max_concurrency or 0)
    return need


def low_limit_warning(cfg: Config, limit: int) -> str | None:
    """The start-up warning's text when ``limit`` is below ``fds_needed(cfg)``, else None."""
    need = fds_needed(cfg)
    if limit >= need:
        return None
    return (
        f"runtime.max_open_files: each worker may open {limit} files, low for the configured connections:"
        f" {need} advised (per server 1 + 2 x max(backlog, max_concurrency), a client and an upstream"
        f" descriptor per connection, + {WORKER_MARGIN}); connections beyond the limit wait or are dropped"
    )


class AcceptErrors:
    """Logs accept failures for lack of resources: one line per ``LOG_INTERVAL``; the rest are
    counted and the count logged once the interval is over (``observe.RateLimitedLog``)."""

    __slots__ = ("_flush", "_log")

    def __init__(self) -> None:
        self._log = RateLimitedLog(log, "accept failures", level=logging.ERROR, burst=1, interval=LOG_INTERVAL)
        self._flush: asyncio.TimerHandle | None = None

    def failed(self, loop: asyncio.AbstractEventLoop, err: int) -> None:
        what = _RESOURCE_ERRORS.get(err, "{limit}")
        if not self._log.log("accept failed: %s", what.format(limit=open_files_limit())) and self._flush is None:
            # The count of a flood is written when its window ends, not at the next failure.
            self._flush = loop.call_later(LOG_INTERVAL, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        self._log.flush()

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def handler(self, loop: asyncio.AbstractEventLoop, context: Mapping[str, Any]) -> None:
        """A loop exception handler: accept failures here, anything else to the default handler."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRORS and "accept" in str(context.get("message", "")):
            self.failed(loop, exc.errno)
            return
        loop.default_exception_handler(dict(context))


class FdProbe:
    """uvloop only: once a second, whether a descriptor can still be opened (one dup + close).

    libuv meets EMFILE on accept by closing a spare descriptor, accepting and closing
    every queued connection, and reopening the spare; the loop is never told. A full
    table is what makes that happen, so a full table is logged as an accept failure.
    """

    __slots__ = ("_errors", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, errors: AcceptErrors) -> None:
        self._loop = loop
        self._errors = errors
        self._handle: asyncio.TimerHandle | None = loop.call_later(PROBE_INTERVAL, self._probe)

    def _probe(self) -> None:
        try:
            os.close(os.dup(2))
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRORS:
                self._errors.failed(self._loop, exc.errno)
        self._handle = self._loop.call_later(PROBE_INTERVAL, self._probe)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")
