"""Protocol-agnostic middleware."""

from ._catch_panic import CatchPanic as CatchPanic
from ._catch_panic import CatchPanicLayer as CatchPanicLayer
from ._concurrency import ConcurrencyLimit as ConcurrencyLimit
from ._concurrency import ConcurrencyLimitLayer as ConcurrencyLimitLayer
from ._timeout import Timeout as Timeout
from ._timeout import TimeoutLayer as TimeoutLayer

__all__ = ["CatchPanic", "CatchPanicLayer", "ConcurrencyLimit", "ConcurrencyLimitLayer", "Timeout", "TimeoutLayer"]
