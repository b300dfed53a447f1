"""The supervisor's pid file (``runtime.pid_file``), for ``monolake reload``/``stop`` and init systems.

Written just before the ready line (whoever waits for that line may read it at once),
atomically (a temporary file renamed over it: readers never see half a pid), and
removed on exit only if it still names this process: after an upgrade the new
supervisor has written its own.
"""

from __future__ import annotations

import contextlib
import os

from ._logging import logger as log


class PidFile:
    """``base``: the directory a relative path is taken from (the config file's), or None (cwd)."""

    def __init__(self, base: str | None) -> None:
        self.base = base
        self.path: str | None = None
        """The file written, if any."""

    def write(self, path: str | None) -> None:
        """Write this process's pid to ``path`` (None: no pid file). A failure is logged, not raised."""
        if path is None:
            return
        if self.base is not None:
            path = os.path.join(self.base, path)
        try:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            log.error("cannot write the pid file %s: %s", path, exc.strerror or exc)
            return
        self.path = path

    def remove(self) -> None:
        path, self.path = self.path, None
        if path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            with open(path) as fh:
                if int(fh.read().strip()) != os.getpid():
                    return  # a new supervisor wrote its own
            os.unlink(path)
