"""admin._server without a supervisor: redaction, auth, 501 when reload is missing, a bad listen address."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from monolake.admin import AdminServer, AdminState, redact
from monolake.config import parse_config
from monolake.errors import ConfigError

CFG = parse_config(
    {
        "admin": {"listen": "127.0.0.1:0", "token": "t0k"},
        "upstreams": {"api": {"endpoints": [{"endpoint": "http://127.0.0.1:9"}]}},
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [{"path": "/", "upstream": "api"}, {"path": "/x", "upstreams": [{"endpoint": "unix:/s"}]}],
            }
        },
    }
)


def test_redact() -> None:
    assert redact({"admin": {"token": "x", "listen": "a"}, "args": [{"password": "p", "n": 1}], "api_key": None}) == {
        "admin": {"token": "<redacted>", "listen": "a"},
        "args": [{"password": "<redacted>", "n": 1}],
        "api_key": None,
    }


@pytest.fixture
def server() -> Iterator[str]:
    sup = SimpleNamespace(config=CFG)  # no request_reload: a supervisor without reload
    admin = AdminServer("127.0.0.1:0", AdminState(sup, None, "t0k"))
    admin.start()
    try:
        yield "http://{}:{}".format(*admin.address)
    finally:
        admin.close()


def get(url: str, **kw: Any) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as c:
        return c.request(kw.pop("method", "GET"), url, **kw)


def test_without_metrics_and_reload(server: str) -> None:
    h = {"Authorization": "Bearer t0k"}
    assert get(f"{server}/metrics").status_code == 401
    assert get(f"{server}/metrics", headers=h).status_code == 200
    r = get(f"{server}/reload", method="POST", headers=h)
    assert r.status_code == 501 and "not implemented" in r.json()["error"]
    ups = get(f"{server}/upstreams", headers=h).json()
    assert ups["health_checks"] is False
    assert ups["upstreams"]["api"]["endpoints"] == [{"endpoint": "127.0.0.1:9", "healthy": None}]
    assert ups["upstreams"]["web.routes[1]"]["endpoints"][0]["endpoint"] == "unix:/s"
    assert get(f"{server}/nope", headers=h).status_code == 404
    assert get(f"{server}/metrics", method="POST", headers=h).status_code == 405
    assert get(f"{server}/stats.json", headers=h).json()["metrics"] is False


def test_bad_listen() -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        AdminServer("nowhere", AdminState(SimpleNamespace(config=CFG), None, None))
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        AdminServer("unix:/tmp/x", AdminState(SimpleNamespace(config=CFG), None, None))
