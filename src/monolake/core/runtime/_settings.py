"""What the runtime reads of a configuration, as read-only protocols.

The runtime knows nothing of TOML: it serves any config object that has a ``runtime`` table, a
``log`` table and named ``servers`` with a listener each, and hands the whole object to the app
builder untouched. The proxy's ``apps.config.Config`` is one; ``monolake.serve`` builds another in
memory. The object must be a msgspec ``Struct``: a reload sends it to the workers as JSON and
decodes it there with its own type. Typing only: nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..address import AddressSpec


class RuntimeSettings(Protocol):
    """Processes, loop and limits. Timeouts are seconds."""

    @property
    def workers(self) -> int:
        """Worker processes; 0: one per CPU core."""
        ...

    @property
    def loop(self) -> str:
        """ "uvloop", "asyncio", "io_uring" or "auto"."""
        ...

    @property
    def uring_entries(self) -> int: ...

    @property
    def sqpoll_idle_ms(self) -> int: ...

    @property
    def cpu_affinity(self) -> bool | None: ...

    @property
    def drain_timeout(self) -> float: ...

    @property
    def pid_file(self) -> str | None: ...

    @property
    def watch_config(self) -> bool: ...

    @property
    def max_open_files(self) -> int | None: ...

    @property
    def trim_interval(self) -> float: ...


class LogSettings(Protocol):
    @property
    def level(self) -> str: ...

    @property
    def format(self) -> str:
        """ "text" or "json" (the error log's lines)."""


class ListenerSettings(Protocol):
    """One server as the runtime sees it: where it listens."""

    @property
    def listener(self) -> str | AddressSpec:
        """ "host:port", "unix:/path" or a ``{type, value}`` table."""
        ...

    @property
    def backlog(self) -> int: ...

    @property
    def max_concurrency(self) -> int | None:
        """Requests in flight per worker, if bounded (sizes the open-files estimate)."""
        ...


class RuntimeConfig(Protocol):
    """A whole configuration, as the runtime sees it."""

    @property
    def runtime(self) -> RuntimeSettings: ...

    @property
    def log(self) -> LogSettings: ...

    @property
    def servers(self) -> Mapping[str, ListenerSettings]: ...
