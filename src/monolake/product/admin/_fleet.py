"""The admin endpoint's fleet pages: discovered endpoints, their admin API, and ``/ready``.

``/endpoints`` shows each discovering cluster's source, its current records, update and
error counts, the last error and the time of the last successful lookup (the hub's view, in
the supervisor). The admin API edits a cluster's set (any cluster with a
``[upstreams.NAME.discovery]`` table; for a dns, file or etcd source until its next update):

- ``PUT /upstreams/NAME/endpoints/ADDRESS`` with an optional JSON body
  ``{"weight": 2, "zone": "a", "tags": [...], "draining": false}``: add or replace;
- ``DELETE /upstreams/NAME/endpoints/ADDRESS``: remove (requests in flight finish);
- ``POST /upstreams/NAME/endpoints/ADDRESS/drain`` (``/undrain``): no new requests.

ADDRESS is written as in the config ("10.0.0.5:8080", "https://h:443", "unix:/p" with the
slashes percent-encoded).

``/ready`` is for orchestrators (Kubernetes' readinessProbe, a load balancer's check): 503
while the supervisor starts (not every worker serves yet) or drains (stopping), and while a
cluster named in ``[admin] ready_upstreams`` has fewer than ``ready_min_healthy`` healthy
endpoints in some worker (from the workers' ``monolake_upstream_endpoints`` metric, sampled
each second); 200 otherwise, with the reasons in the JSON body either way. ``/healthz``
stays a liveness check: it answers 200 whenever the supervisor runs.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import msgspec

from ...apps.discovery import EndpointRecord

PREFIX = "/upstreams/"


def readiness(state: str, cfg: Any, families: list[Any]) -> tuple[bool, dict[str, Any]]:
    """(ready, details) for the supervisor ``state`` and the merged worker metric ``families``."""
    reasons: list[str] = []
    if state == "starting":
        reasons.append("starting: not every worker serves yet")
    elif state == "stopping":
        reasons.append("draining: the supervisor is stopping")
    admin = getattr(cfg, "admin", None)
    wanted = list(getattr(admin, "ready_upstreams", []) or [])
    need = int(getattr(admin, "ready_min_healthy", 1) or 1)
    healthy: dict[str, float] = {}
    for fam in families:
        for s in fam.samples:
            if s.name == "monolake_upstream_endpoints" and s.labels.get("state") == "healthy":
                name = s.labels["upstream"]
                healthy[name] = min(s.value, healthy.get(name, s.value))  # the worker that has the fewest
    counts: dict[str, float | None] = {}
    for name in wanted:
        n = healthy.get(name)
        counts[name] = n
        if n is None:
            reasons.append(f"upstream {name}: no worker reported its endpoints yet")
        elif n < need:
            reasons.append(f"upstream {name}: {int(n)} healthy endpoint(s), {need} needed")
    return not reasons, {"state": state, "reasons": reasons, "healthy_endpoints": counts}


def endpoint_call(hub: Any, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """One admin API call on ``/upstreams/NAME/endpoints/ADDRESS[/drain|/undrain]``."""
    rest = path[len(PREFIX) :]
    cluster, sep, tail = rest.partition("/endpoints/")
    if not sep or not cluster or not tail:
        return 404, {"error": "expected /upstreams/NAME/endpoints/ADDRESS"}
    action = ""
    for suffix in ("/drain", "/undrain"):
        if tail.endswith(suffix):
            tail, action = tail[: -len(suffix)], suffix[1:]
    address = urllib.parse.unquote(tail)
    if hub is None:
        return 404, {"error": f"upstream {cluster} has no [discovery] table"}
    try:
        EndpointRecord(address=address).endpoint()
    except ValueError as exc:
        return 400, {"error": f"bad endpoint address {address!r}: {exc}"}
    if method == "PUT" and not action:
        fields: dict[str, Any] = {}
        if body.strip():
            try:
                fields = json.loads(body)
                if not isinstance(fields, dict):
                    raise ValueError("expected a JSON object")
                record = msgspec.convert({**fields, "address": address}, EndpointRecord)
                record.endpoint()
            except (ValueError, msgspec.ValidationError) as exc:
                return 400, {"error": f"bad endpoint record: {exc}"}
        else:
            record = EndpointRecord(address=address)
        if not hub.put(cluster, record):
            return 404, {"error": f"upstream {cluster} has no [discovery] table"}
        return 200, {"ok": True, "upstream": cluster, "endpoints": _listed(hub, cluster)}
    if method == "DELETE" and not action:
        found = hub.delete(cluster, address)
    elif method == "POST" and action:
        found = hub.drain(cluster, address, action == "drain")
    else:
        return 405, {"error": "method not allowed"}
    if found is None:
        return 404, {"error": f"upstream {cluster} has no [discovery] table"}
    if not found:
        return 404, {"error": f"upstream {cluster} has no endpoint {address}"}
    return 200, {"ok": True, "upstream": cluster, "endpoints": _listed(hub, cluster)}


def _listed(hub: Any, cluster: str) -> list[dict[str, Any]]:
    from ...apps.discovery._record import records_to_wire

    return records_to_wire(hub.current(cluster) or [])
