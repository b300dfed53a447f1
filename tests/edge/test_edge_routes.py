"""The edge built-ins on routes (in process): a route's ``rate_limit`` with ``key = "route"``
is that route's own bucket, ``jwt`` guards one route and feeds the ``claim:sub`` limit
listed after it, and routes without them are untouched."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from ._support import EchoOrigin, InProcessProxy, LoopThread

KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"})


def token(sub: str) -> str:
    claims = {"sub": sub, "aud": "api", "exp": int(time.time()) + 300}
    return jwt.encode({"alg": "ES256", "kid": "k1"}, claims, KEY, algorithms=["ES256"])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessProxy]:
    keys = Path(tmp_path_factory.mktemp("keys")) / "jwks.json"
    keys.write_text(json.dumps({"keys": [KEY.as_dict(private=False)]}))
    lt = LoopThread()
    origin = EchoOrigin(lt)
    up = [{"endpoint": origin.url}]
    raw: dict[str, Any] = {
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [
                    {
                        "path": "/limited/",
                        "upstreams": up,
                        "filters": [
                            {"use": "rate_limit", "args": {"requests": 2, "period": 3600, "key": "route", "workers": 1}}
                        ],
                    },
                    {
                        "path": "/private/",
                        "upstreams": up,
                        "filters": [
                            {
                                "use": "jwt",
                                "args": {
                                    "keys": [str(keys)],
                                    "audiences": ["api"],
                                    "claims_to_headers": {"sub": "X-User"},
                                },
                            },
                            {"use": "rate_limit", "args": {"requests": 1, "period": 3600, "key": "claim:sub"}},
                        ],
                    },
                    {"path": "/", "upstreams": up},
                ],
            }
        }
    }
    p = InProcessProxy(lt, raw)
    try:
        yield p
    finally:
        p.close()
        origin.close()
        lt.close()


def test_route_rate_limit_is_the_routes_own(proxy: InProcessProxy) -> None:
    with httpx.Client(trust_env=False, timeout=20) as c:
        assert [c.get(proxy.url + f"/limited/{i}").status_code for i in range(3)] == [200, 200, 429]
        assert [c.get(proxy.url + "/open").status_code for _ in range(3)] == [200] * 3


def test_jwt_on_one_route_feeds_the_claim_limit(proxy: InProcessProxy) -> None:
    with httpx.Client(trust_env=False, timeout=20) as c:
        assert c.get(proxy.url + "/private/x").status_code == 401
        r = c.get(proxy.url + "/private/x", headers={"Authorization": f"Bearer {token('ann')}", "X-User": "eve"})
        assert r.status_code == 200 and r.json()["headers"]["x-user"] == "ann"
        assert c.get(proxy.url + "/private/x", headers={"Authorization": f"Bearer {token('ann')}"}).status_code == 429
        assert c.get(proxy.url + "/private/x", headers={"Authorization": f"Bearer {token('ben')}"}).status_code == 200
        assert c.get(proxy.url + "/public").status_code == 200
