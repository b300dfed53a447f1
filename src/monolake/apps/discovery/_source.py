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
