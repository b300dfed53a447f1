"""Endpoint records: what every discovery source produces and what the workers receive.

A record is the JSON object a file, an etcd key or the admin API holds for one endpoint:
``{"address": "10.0.0.5:8080", "weight": 2, "zone": "eu-1a", "tags": ["canary"], "draining": false}``.
Only ``address`` is required; it is spelt as a cluster's ``endpoints`` are ("host:port",
"http://host:port", "https://host", "unix:/path"). Unknown fields are ignored, so a tool that
writes more (a Kubernetes or Consul sync) needs no change here.

A set of records is sent to the workers as plain JSON (``records_to_wire``), and becomes the
cluster's endpoints there (``to_endpoints``): zone and tags ride on ``Endpoint.meta``, a
draining record leaves the balancer but stays listed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from ...core.address import Endpoint, parse_endpoint


class EndpointRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint as a source found it."""

    address: str
    weight: int = 1
    zone: str = ""
    tags: tuple[str, ...] = ()
    draining: bool = False

    def endpoint(self) -> Endpoint:
        """The ``Endpoint`` (with ``meta`` holding zone and tags when set). Raises ValueError."""
        ep = parse_endpoint(self.address, self.weight)
        if self.zone or self.tags:
            ep = dataclasses.replace(ep, meta={"zone": self.zone, "tags": list(self.tags)})
        return ep


_decoder = msgspec.json.Decoder(EndpointRecord)


def parse_records(items: Iterable[Any], where: str) -> list[EndpointRecord]:
    """Records from decoded JSON/TOML objects, each checked (address parses, weight >= 1).

    Raises ValueError naming ``where`` and the record's index. Later records of the same
    address replace earlier ones.
    """
    out: dict[str, EndpointRecord] = {}
    for i, item in enumerate(items):
        try:
            rec = msgspec.convert(item, EndpointRecord)
            key = rec.endpoint().key
        except (msgspec.ValidationError, ValueError) as exc:
            raise ValueError(f"{where}[{i}]: {exc}") from None
        out[str(key)] = rec
    return list(out.values())


def parse_record(data: bytes, where: str) -> EndpointRecord:
    """One record from JSON bytes. Raises ValueError naming ``where``."""
    try:
        rec = _decoder.decode(data)
        rec.endpoint()
    except (msgspec.DecodeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return rec


def records_to_wire(records: Sequence[EndpointRecord]) -> list[dict[str, Any]]:
    """JSON-ready objects (what travels to the workers and what the admin pages show)."""
    return [
        {"address": r.address, "weight": r.weight, "zone": r.zone, "tags": list(r.tags), "draining": r.draining}
        for r in records
    ]


def records_from_wire(items: Iterable[Any]) -> list[EndpointRecord]:
    return [msgspec.convert(item, EndpointRecord) for item in items]


def to_endpoints(records: Sequence[EndpointRecord]) -> tuple[list[Endpoint], list[Endpoint]]:
    """(endpoints to balance over, draining endpoints). Records that do not parse are skipped
    (sources check them before publishing)."""
    active: list[Endpoint] = []
    draining: list[Endpoint] = []
    for rec in records:
        try:
            ep = rec.endpoint()
        except ValueError:
            continue
        (draining if rec.draining else active).append(ep)
    return active, draining
