"""examples/services/context_slots.py, shown by the docs' "Writing a Layer" guide: a layer
sets a typed context slot that the service reads, and without the layer the stack is
refused (naming the factory and the slot) before anything is bound."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from test_user_services import EXAMPLES, Served, served  # noqa: F401 (served is a fixture)

from conftest import TIMEOUT

pytestmark = pytest.mark.e2e


def test_the_layer_sets_what_the_service_reads(served: list[Served], loop_kind: str) -> None:  # noqa: F811
    s = Served("context_slots", loop_kind)
    served.append(s)
    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
        r = c.get("/", headers={"X-Tenant": "acme"})
        assert (r.status_code, r.text) == (200, "hello, acme\n")
        r = c.get("/")  # the layer answers itself: the service never runs without its slot
        assert (r.status_code, r.text) == (400, "X-Tenant required\n")


def test_without_the_providing_layer_nothing_serves() -> None:
    cmd = [sys.executable, str(EXAMPLES / "context_slots.py"), "--listen", "127.0.0.1:0", "--without-layer"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "GreeterFactory: requires context slot 'tenant', which nothing outside it provides" in r.stderr
    assert "monolake ready" not in r.stderr
