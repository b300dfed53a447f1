"""The errors a config load has found so far (``_Report``) and key-path helpers."""

from __future__ import annotations

import re

from ...core.errors import ConfigError, ConfigErrors

_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]*)`$")
_SECONDS = re.compile(r"(?:^|[._])(?:timeout|time|interval)$")
"""Keys whose values are seconds (``connect_timeout``, ``base_ejection_time``, ``interval``...)."""


class _Report:
    """The errors found so far, in file order, and the named tables that did not decode."""

    __slots__ = ("bad_servers", "bad_upstreams", "broken", "errors")

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.bad_servers: set[str] = set()
        self.bad_upstreams: set[str] = set()
        self.broken: list[str] = []
        """Key paths of decode errors: a value there was dropped for its default."""

    def add(self, path: str, reason: str) -> None:
        """A semantic error, unless it is about a value already reported as undecodable (or
        a table holding one): that value was replaced by its default, so the check saw
        the default, not what the file says."""
        if any(_related(path, b) for b in self.broken):
            return
        if _SECONDS.search(_last_key(path)) and "second" not in reason:
            reason += " (seconds)"
        self.errors.append(ConfigError(path, reason))

    def undecodable(self, errors: list[ConfigError]) -> None:
        self.errors += errors
        for e in errors:
            field = _FIELD.match(e.reason)  # about one key of the table at e.path
            self.broken.append(_join(e.path, field[1]) if field else e.path)

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def _related(path: str, other: str) -> bool:
    """One key path is the other or inside it."""
    a, b = sorted((path, other), key=len)
    return a == b or b.startswith((a + ".", a + "["))


def _last_key(path: str) -> str:
    return path.rpartition(".")[2].partition("[")[0]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
