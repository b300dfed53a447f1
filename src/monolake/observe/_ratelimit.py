"""A log line whose volume a peer cannot choose: ``RateLimitedLog``.

Some log lines are caused by what a client sends (a malformed request, a refused
handshake, a failing accept): one line each would let an attacker decide how much
the proxy writes. A ``RateLimitedLog`` lets ``burst`` lines through per ``interval``
seconds and counts the rest; the count is written as one line ("... N more
suppressed in the last S s") when the window is over, so nothing is lost silently.

Usage: one instance per kind of line, made once (module level or per server),
never per event::

    _bad_request_log = RateLimitedLog(log, "bad requests", level=logging.INFO)
    ...
    _bad_request_log.log("bad request from %s: %d %s", peer, status, reason)

and call ``flush()`` from something periodic (a server's sweep) so the count of a
flood that stopped is written within about a window, not at the next line. Each
call costs a clock read and a comparison; the message is formatted only if it is
written. Not thread-safe: a worker's loop thread is the only caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds to ``logger``; the rest are counted.

    ``what`` names the lines in the suppressed-count line ("bad requests: 190 more
    suppressed in the last 1 s"). ``clock`` is for tests (default ``time.monotonic``).
    """

    __slots__ = ("_clock", "_logger", "_sent", "_start", "burst", "interval", "level", "suppressed", "what")

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.INFO,
        burst: int = 10,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("RateLimitedLog: burst must be >= 1 and interval > 0")
        self._logger = logger
        self.what = what
        self.level = level
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._start = -interval  # the first line opens a window
        self._sent = 0
        self.suppressed = 0
        """Lines dropped in the current window (not yet reported)."""

    def log(self, msg: str, *args: object, level: int | None = None, exc_info: bool = False) -> bool:
        """Log ``msg % args`` (at ``level``, default the instance's; with the traceback of the
        exception being handled if ``exc_info``) unless this window's burst is spent; True if
        it was written."""
        now = self._clock()
        if now - self._start >= self.interval:
            self._roll(now)
        if self._sent >= self.burst:
            self.suppressed += 1
            return False
        self._sent += 1
        self._logger.log(self.level if level is None else level, msg, *args, exc_info=exc_info)
        return True

    def flush(self) -> None:
        """Write the suppressed count if the window it belongs to is over (cheap: call it often)."""
        if self.suppressed:
            now = self._clock()
            if now - self._start >= self.interval:
                self._roll(now)

    def _roll(self, now: float) -> None:
        if self.suppressed:
            self._logger.log(
                self.level,
                "%s: %d more suppressed in the last %.1f s",
                self.what,
                self.suppressed,
                now - self._start,
            )
            self.suppressed = 0
        self._start = now
        self._sent = 0
