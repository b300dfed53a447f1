"""Process logging for the supervisor and its workers.

Configured once in the supervisor before it forks, so workers inherit the same
stderr handler and format; ``%(process)d`` is evaluated per record, so each line
names the process that wrote it. ``monolake ready ...`` on logger ``monolake`` is
the line tools and tests wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import os
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

logger = logging.getLogger("monolake")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LEVEL_NAMES = {v: k for k, v in _LEVELS.items()}

# One byte shared by the supervisor and every worker it forks (an anonymous MAP_SHARED
# mapping made before any fork): the level the admin endpoint set. Workers look at it
# once a second (``watch_level``), never per log call.
_shared = mmap.mmap(-1, 1)
_shared[0] = logging.INFO
_handler: logging.Handler | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message (and exc when there is one).
    Every value is JSON-escaped, so a client-controlled string in a message cannot forge a line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` (a ``log.level`` config value), in FORMAT or as JSON lines
    (``fmt = "json"``, the ``log.format`` config value).

    The root logger gets a handler only if nobody configured one (an embedding
    application or a test harness keeps its own, and its format); the ``monolake``
    logger's level is always set so ``log.level`` holds either way.
    """
    global _handler
    lvl = _LEVELS.get(level, logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
        root.setLevel(lvl)
    if _handler is not None:
        _handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
        root.setLevel(lvl)
    set_level(lvl)


def set_level(level: int) -> None:
    """Set the ``monolake`` loggers' level here and, through the shared byte, in every worker
    (within a second: ``watch_level``)."""
    logger.setLevel(level)
    if _handler is not None:
        logging.getLogger().setLevel(level)
    _shared[0] = level


def shared_level() -> int:
    return _shared[0]


def watch_level(loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> None:
    """In a worker: follow the shared level (the admin endpoint's ``/log_level``) every ``interval`` s."""

    def check() -> None:
        level = _shared[0]
        if level != logger.level:
            logger.setLevel(level)
            if _handler is not None:
                logging.getLogger().setLevel(level)
        loop.call_later(interval, check)

    loop.call_later(interval, check)


def flush_logging() -> None:
    """Flush every handler and the std streams; a forked worker calls this before os._exit."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def describe_status(status: int) -> str:
    """A child's wait status for a log line: ``exited with status 3``, ``was killed by signal 9 (SIGKILL)``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
