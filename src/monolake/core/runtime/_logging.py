"""Process logging for the supervisor and its workers.

Configured once in the supervisor before it forks, so workers inherit the same
stderr handler and format; ``%(process)d`` is evaluated per record, so each line
names the process that wrote it. ``monolake ready ...`` on logger ``monolake`` is
the line tools and tests wait on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

logger = logging.getLogger("monolake")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str) -> None:
    """Log to stderr in FORMAT at ``level`` (a ``log.level`` config value).

    The root logger gets a handler only if nobody configured one (an embedding
    application or a test harness keeps its own); the ``monolake`` logger's level
    is always set so ``log.level`` holds either way.
    """
    lvl = _LEVELS.get(level, logging.INFO)
    logging.basicConfig(format=FORMAT, level=lvl, stream=sys.stderr)
    logger.setLevel(lvl)


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
