"""The callback lane: a service that can answer without a task or a future.

A ``Service`` is awaited: the driver runs it in a task, and whatever it waits on
(an upstream's response, say) wakes that task through a future. For a request that
only waits on one I/O event this is two wake-ups (the task for the request, the task
for the answer) and a future each, which is most of what a plain proxied request
costs above its parsing.

A ``LaneService`` also offers ``dispatch(req, replier)``, a plain method that does
one of three things:

- answers at once: it returns the response;
- takes the request: it returns a ``Taken`` and later calls ``replier`` back exactly
  once, with ``reply(req, resp)``, ``reply_error(req, exc)`` or ``reply_later(req,
  rest)`` (``rest`` an awaitable of the response, for a path that must wait after
  all: the driver awaits it in its task);
- cannot go on without waiting: it returns an awaitable of the response (typically a
  coroutine that continues from where ``dispatch`` stopped), which the driver awaits
  in its task as it would ``__call__``.

An exception ``dispatch`` raises is the request's failure, as if ``__call__`` had
raised it. If the driver no longer wants the answer (the client went away), it calls
the ``Taken``'s ``cancel()``; a reply after that is ignored. ``__call__`` stays the
service's meaning: a driver without a lane (or a layer that wraps the service) awaits
it, and the two must answer alike.

A driver resolves the lane once, when a service is installed (``lane_of``), never
per request. A service whose lane depends on how it was built (a layer that passes on
its inner service's) sets ``has_lane = False`` when it has none: the driver then awaits
``__call__`` as for any service, at no cost per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from .._compiled import mypyc_attr

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)
Resp_contra = TypeVar("Resp_contra", contravariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it
class Taken:
    """What ``dispatch`` returns when it took the request: the driver keeps it until the reply,
    and calls ``cancel`` when it no longer wants one. Subclass it to hold what cancelling
    needs (an upstream connection to close); ``TAKEN`` is one for a service with nothing to
    cancel."""

    __slots__ = ()

    def cancel(self) -> None:
        """The answer is not wanted any more (the client went away): stop the work if it can be."""


TAKEN: Final = Taken()
"""A ``Taken`` whose ``cancel`` does nothing."""


class Replier(Protocol[Req_contra, Resp_contra]):
    """The driver's side of the lane: exactly one of these is called for each taken request."""

    def reply(self, req: Req_contra, resp: Resp_contra, /) -> None:
        """``req`` is answered with ``resp``."""

    def reply_error(self, req: Req_contra, exc: BaseException, /) -> None:
        """``req`` failed with ``exc`` (the driver answers it as if ``__call__`` had raised it)."""

    def reply_later(self, req: Req_contra, rest: Awaitable[Resp_contra], /) -> None:
        """``req`` must wait after all: the driver awaits ``rest`` for its answer."""


class LaneService(Protocol[Req, Resp_co]):
    """A ``Service`` that can also answer by callback (see the module docstring)."""

    async def __call__(self, req: Req, /) -> Resp_co: ...

    def dispatch(self, req: Req, replier: Replier[Req, Resp_co], /) -> Resp_co | Awaitable[Resp_co] | Taken: ...


Dispatch = Callable[[Any, Any], Any]
"""A service's bound ``dispatch`` as a driver holds it (drivers type the result themselves)."""


def lane_of(service: object) -> Dispatch | None:
    """``service``'s bound ``dispatch`` if it offers the lane (and does not say ``has_lane =
    False``), else None. Called when a service is installed, not per request."""
    dispatch: Dispatch | None = getattr(service, "dispatch", None)
    if not callable(dispatch) or getattr(service, "has_lane", True) is False:
        return None
    return dispatch
