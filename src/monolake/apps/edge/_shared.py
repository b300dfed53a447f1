"""What the edge filters share: the worker count (a limit is divided across workers), plain
answers, settings from keyword arguments, and the outage log line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TypeVar

import msgspec

from ...core._ratelimit import RateLimitedLog
from ...core.proto.http1 import Headers, Response
from ...core.service import ContextSlot
from ._base import ArgError as ArgError

S = TypeVar("S")

_workers = 0


def settings_of(kind: type[S], args: S | None, kwargs: dict[str, Any]) -> S:
    """The filter's settings: ``args`` as the built-in scheme passes them, or keyword
    arguments (a ``"module:Class"`` entry's ``args`` table) converted to ``kind``."""
    if args is not None:
        if kwargs:
            raise TypeError("give the settings object or keyword arguments, not both")
        return args
    try:
        return msgspec.convert(kwargs, kind, str_keys=True)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def set_workers(n: int) -> None:
    """Called by the app builder with ``runtime.workers`` (0: one per core) before filters are built."""
    global _workers
    _workers = n


def workers() -> int:
    """How many workers share a per-worker limit: ``runtime.workers``, or for 0 (one per core) the
    CPUs the supervisor may run on, as it counts them. Read from the supervisor (the parent): a
    worker builds its filters after pinning itself to one core."""
    if _workers > 0:
        return _workers
    if sys.platform == "linux":
        try:
            return max(1, len(os.sched_getaffinity(os.getppid())))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def answer(status: int, text: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
    if extra:
        headers.extend(extra)
    return Response(status, Headers(headers), text)


def outage_log(logger: logging.Logger, what: str) -> RateLimitedLog:
    """One warning per 10 s about a dependency that is down (Redis, a JWKS, an auth service); the
    lines held back are counted in the next one (``RateLimitedLog``)."""
    return RateLimitedLog(logger, what, level=logging.WARNING, burst=1, interval=10.0)


CLAIMS: ContextSlot[dict[str, Any]] = ContextSlot("jwt_claims", dict, "the verified JWT's claims")
"""The claims of the request's verified JWT: set by ``Jwt``, read by ``RateLimit(key="claim:NAME")``."""
