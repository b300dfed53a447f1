"""The ``EndpointSource`` interface: how a cluster's endpoint set reaches the supervisor.

A source is a small object with one coroutine, ``run(sink)``, that the discovery hub runs
on its own loop (a thread of the supervisor; one source per cluster, however many workers):
it finds the endpoints, calls ``sink.update(records)`` with the *whole* set each time it
changes, calls ``sink.error(why)`` when a lookup fails (the hub keeps the last good set and
counts the error), and runs until cancelled. It never raises except CancelledError: a
source that returns or raises is restarted after a pause, with the error counted.

To add one (Kubernetes EndpointSlices, Consul's health API...): subclass ``EndpointSource``,
build the full set of ``EndpointRecord`` from your watch (EndpointSlices: every ready
address of every slice labelled ``kubernetes.io/service-name=NAME``, port from the slice's
port; Consul: ``/v1/health/service/NAME?passing&index=N``, a blocking query, address and
port of each entry, ``Weights.Passing`` as the weight), call ``sink.update`` after each
change, and register the class in ``SOURCES`` under its ``kind`` (and the kind in the
schema's ``Discovery.kind``).
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Sequence
from typing import Protocol

from ._record import EndpointRecord


class Sink(Protocol):
    """Where a source reports (the hub)."""

    def update(self, records: Sequence[EndpointRecord]) -> None:
        """The whole current set (not a delta). An unchanged set is not sent on."""
        ...

    def error(self, why: str) -> None:
        """A lookup failed; the last good set stays."""
        ...


class EndpointSource(abc.ABC):
    """One cluster's source of endpoints. ``kind`` names it in ``[upstreams.NAME.discovery]``."""

    kind: str = ""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    @abc.abstractmethod
    async def run(self, sink: Sink) -> None:
        """Report the endpoint set to ``sink`` now and on every change, until cancelled."""

    def describe(self) -> str:
        """What it watches, for logs and the admin page."""
        return self.kind


def close_in_child(loop: object) -> None:
    """Close, in a forked child, the descriptors a discovery loop (a thread of the supervisor)
    watches: its sockets to etcd or a resolver, its inotify descriptor, its epoll descriptor.

    A worker is forked from the supervisor and would otherwise hold copies of them for its
    whole life: a connection the supervisor closes would stay open (no FIN while a copy
    lives). Only descriptors are closed: the loop's thread does not exist in the child.
    """
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return
    try:
        fds = [key.fd for key in selector.get_map().values()]
        fds.append(selector.fileno())
    except Exception:
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
