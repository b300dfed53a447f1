"""A discovery source of your own: poll a URL that answers a JSON list of endpoint records.

Configured as

    [upstreams.api.discovery]
    kind = "custom"
    source = "examples.discovery.http_poll:HttpPollSource"
    args = { url = "http://127.0.0.1:8500/endpoints", interval = 5.0 }

The supervisor makes one per cluster (``HttpPollSource("api", url=..., interval=...)``) and runs
``run(sink)`` on its discovery loop: report the whole set with ``sink.update``, a failure with
``sink.error`` (the last good set stays), until cancelled. A Kubernetes EndpointSlices or Consul
source has the same shape, with a watch or a blocking query instead of the sleep.
"""

from __future__ import annotations

import asyncio
import json

from monolake.apps.discovery import EndpointSource, Sink
from monolake.apps.discovery._record import parse_records
from monolake.core.address import parse_endpoint
from monolake.core.client import Client
from monolake.core.errors import MonolakeError
from monolake.core.proto.http1 import Headers, Request


class HttpPollSource(EndpointSource):
    kind = "http-poll"

    def __init__(self, cluster: str, *, url: str, interval: float = 5.0) -> None:
        super().__init__(cluster)
        scheme_host, _, path = url.partition("://")[2].partition("/")
        self.endpoint = parse_endpoint(url.split("://")[0] + "://" + scheme_host)
        self.path = "/" + path
        self.interval = interval

    def describe(self) -> str:
        return f"http-poll {self.endpoint}{self.path}"

    async def run(self, sink: Sink) -> None:
        client = Client()
        try:
            while True:
                try:
                    req = Request(b"GET", self.path.encode(), Headers([(b"Host", self.endpoint.authority.encode())]))
                    resp = await client.send(req, self.endpoint)
                    body = resp.body if isinstance(resp.body, bytes) else await resp.body.read_all(1 << 20)
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    sink.update(parse_records(json.loads(body), "endpoints"))
                except (MonolakeError, OSError, ValueError) as exc:
                    sink.error(f"{self.describe()}: {exc}")
                await asyncio.sleep(self.interval)
        finally:
            client.close()
