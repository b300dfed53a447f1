"""Endpoint health: active checks, passive outlier ejection, their shared state.

Theory of operation. Every endpoint of a cluster that has a ``health_check`` or an
``outlier_detection`` table gets an ``EndpointState`` (per worker, like the rest of
the cluster). An endpoint is *eligible* when the last active checks found it
healthy and it is not ejected. Whenever eligibility changes, the cluster rebuilds
its balancer over the eligible endpoints (``UpstreamCluster._refresh``), so a pick
costs the same whether or not some endpoints are down; nothing is checked per
request. When no endpoint is eligible the cluster balances over all of them
(Envoy's "panic" mode): an error from a real try is more useful than a 503 from us.

``HealthChecker`` runs one task per endpoint on the worker's loop: connect (TCP
check) or ``GET path`` and compare the status (HTTP check), each within ``timeout``,
every ``interval``, through the client (``check_endpoint``): TLS for https endpoints,
HTTP/2 for an h2/h2c cluster, on a connection of the check's own.
``unhealthy_threshold`` failures in a row take an endpoint out, ``healthy_threshold``
passes in a row bring it back. Endpoints start healthy, so a worker serves at once.

``Outliers`` counts outcomes of real requests: ``consecutive_5xx`` 5xx answers or
failed exchanges, or ``consecutive_connect_failures`` failed connects, eject an
endpoint for ``base_ejection_time`` times the number of ejections in a row (capped
by ``max_ejection_time``); a timer brings it back. The multiplier starts over once
an endpoint has gone ``max_ejection_time`` without an ejection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ...core._body import Body
from ...core.client import Client, PoolSettings
from ...core.errors import MonolakeError
from ...core.proto.http1 import Headers, Request
from ..config import Endpoint, HealthCheck, OutlierDetection

log = logging.getLogger("monolake.apps.proxy.health")


class EndpointState:
    """What one worker knows about one endpoint's health."""

    __slots__ = (
        "active_requests",
        "checks_failed",
        "checks_passed",
        "consecutive_5xx",
        "consecutive_connect_failures",
        "ejected_until",
        "ejections",
        "endpoint",
        "healthy",
        "last_unejected",
        "total_ejections",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.healthy = True
        """Last verdict of the active checks (True without them)."""
        self.ejected_until = 0.0
        """Loop time the passive ejection ends; 0.0 when not ejected."""
        self.ejections = 0
        """Ejections in a row (the back-off multiplier)."""
        self.total_ejections = 0
        self.last_unejected = -1e18
        self.consecutive_5xx = 0
        self.consecutive_connect_failures = 0
        self.checks_passed = 0
        """Consecutive passed active checks (reset by a failure)."""
        self.checks_failed = 0
        """Consecutive failed active checks (reset by a pass)."""
        self.active_requests = 0

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.ejected_until

    def statistics(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "ejected_until": self.ejected_until or None,
            "ejections": self.total_ejections,
            "active_requests": self.active_requests,
            "consecutive_5xx": self.consecutive_5xx,
            "consecutive_connect_failures": self.consecutive_connect_failures,
        }


class Outliers:
    """Passive outlier detection over a cluster's endpoint states. Calls ``on_change`` after
    an ejection or its end."""

    def __init__(
        self, cluster: str, cfg: OutlierDetection, states: Sequence[EndpointState], on_change: Callable[[], None]
    ) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.states = states
        self.on_change = on_change
        self._timers: list[asyncio.TimerHandle] = []
        self.max_ejected = 0
        self.resize()

    def resize(self) -> None:
        """The endpoint set changed (discovery): ``max_ejection_percent`` of the new count."""
        pct = self.cfg.max_ejection_percent
        self.max_ejected = 0 if pct == 0 else max(1, len(self.states) * pct // 100)

    def responded(self, st: EndpointState, status: int) -> None:
        st.consecutive_connect_failures = 0
        if status >= 500:
            self.failed(st, f"{status}")
        else:
            st.consecutive_5xx = 0

    def failed(self, st: EndpointState, what: str) -> None:
        """An exchange failed after connecting (a 5xx answer, a reset, a timeout)."""
        st.consecutive_5xx += 1
        n = self.cfg.consecutive_5xx
        if n and st.consecutive_5xx >= n:
            self._eject(st, f"{st.consecutive_5xx} consecutive 5xx/failures (last: {what})")

    def connect_failed(self, st: EndpointState) -> None:
        st.consecutive_connect_failures += 1
        n = self.cfg.consecutive_connect_failures
        if n and st.consecutive_connect_failures >= n:
            self._eject(st, f"{st.consecutive_connect_failures} consecutive connect failures")

    def _eject(self, st: EndpointState, why: str) -> None:
        if st.ejected_until:
            return
        if sum(1 for s in self.states if s.ejected_until) >= self.max_ejected:
            log.info(
                "not ejecting %s from cluster %s (%s): max_ejection_percent reached", st.endpoint, self.cluster, why
            )
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - st.last_unejected > self.cfg.max_ejection_time:
            st.ejections = 0
        st.ejections += 1
        st.total_ejections += 1
        duration = min(self.cfg.base_ejection_time * st.ejections, self.cfg.max_ejection_time)
        st.ejected_until = now + duration
        self._timers.append(loop.call_later(duration, self._uneject, st))
        log.warning(
            "endpoint ejected: cluster=%s endpoint=%s for %gs after %s", self.cluster, st.endpoint, duration, why
        )
        self.on_change()

    def _uneject(self, st: EndpointState) -> None:
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()]
        st.ejected_until = 0.0
        st.consecutive_5xx = 0
        st.consecutive_connect_failures = 0
        st.last_unejected = asyncio.get_running_loop().time()
        log.info("endpoint back from ejection: cluster=%s endpoint=%s", self.cluster, st.endpoint)
        self.on_change()

    def close(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()


async def check_endpoint(ep: Endpoint, hc: HealthCheck, *, http2: bool = False) -> str | None:
    """One active check of ``ep``: None when it passes, else why it failed. Never raises
    (except CancelledError).

    The check goes through the client on a connection of its own, opened for this check
    and closed after it: an https endpoint is checked over TLS with its cluster's TLS
    settings (CA, SNI, client certificate), an HTTP/2 cluster's (``http2``) over HTTP/2.
    A check never takes a connection from the request pool nor leaves one there, so a
    check connection that goes bad cannot poison request traffic, and every check tests
    what a cold pool needs: connect, handshake, protocol.
    """
    client = Client(default=PoolSettings(http2=http2, connect_timeout=hc.timeout, read_timeout=hc.timeout, max_idle=0))
    try:
        async with asyncio.timeout(hc.timeout):
            if hc.type == "tcp":
                conn = await client.pool.connect(ep, connect_timeout=hc.timeout)
                conn.close()
                return None
            host = (hc.host or ep.authority).encode()
            fields = [(b"Host", host), (b"User-Agent", b"monolake-health-check")]
            if not http2:
                fields.append((b"Connection", b"close"))
            resp = await client.send(Request(b"GET", hc.path.encode(), Headers(fields)), ep)
            if isinstance(resp.body, Body):
                resp.body.cancel()  # not needed: its connection closes (HTTP/2: the stream is reset)
            return None if resp.status in hc.expected_status else f"status {resp.status}"
    except TimeoutError:
        return f"no answer within {hc.timeout:g}s"
    except MonolakeError as exc:
        return f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    finally:
        client.close()


class HealthChecker:
    """Active checks of a cluster's endpoints: one task per endpoint on the running loop."""

    def __init__(
        self,
        cluster: str,
        cfg: HealthCheck,
        states: Sequence[EndpointState],
        on_change: Callable[[], None],
        *,
        http2: bool = False,
    ) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.states = states
        self.on_change = on_change
        self.http2 = http2
        """Check over HTTP/2 (the cluster's protocol is h2 or h2c)."""
        self._tasks: dict[int, asyncio.Task[None]] = {}
        """By ``id`` of the state checked."""
        self._started = False

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start checking (needs a running loop). Idempotent."""
        if self._started:
            return
        self._started = True
        self.sync()

    def sync(self) -> None:
        """The endpoint set changed (discovery): check new endpoints from now on (they start
        healthy, like every endpoint), stop checking removed ones. Nothing before ``start``."""
        if not self._started:
            return
        live = {id(st): st for st in self.states}
        for key in [k for k in self._tasks if k not in live]:
            self._tasks.pop(key).cancel()
        loop = asyncio.get_running_loop()
        for key, st in live.items():
            if key not in self._tasks:
                self._tasks[key] = loop.create_task(self._run(st))

    async def _run(self, st: EndpointState) -> None:
        cfg = self.cfg
        while True:
            why = await check_endpoint(st.endpoint, cfg, http2=self.http2)
            self.record(st, why)
            await asyncio.sleep(cfg.interval)

    def record(self, st: EndpointState, why: str | None) -> None:
        """Count one check's result (None: passed) and flip ``healthy`` at a threshold."""
        if why is None:
            st.checks_failed = 0
            st.checks_passed += 1
            if not st.healthy and st.checks_passed >= self.cfg.healthy_threshold:
                st.healthy = True
                log.warning("endpoint healthy: cluster=%s endpoint=%s", self.cluster, st.endpoint)
                self.on_change()
        else:
            st.checks_passed = 0
            st.checks_failed += 1
            if st.healthy and st.checks_failed >= self.cfg.unhealthy_threshold:
                st.healthy = False
                log.warning("endpoint unhealthy: cluster=%s endpoint=%s: %s", self.cluster, st.endpoint, why)
                self.on_change()

    def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        self._tasks.clear()
        self._started = False
