"""A stream service handed to the HTTP server: must fail."""

from __future__ import annotations

from monolake.config import Server
from monolake.server import HttpServerApp


class Echo:
    async def __call__(self, data: bytes) -> None:
        return None


app = HttpServerApp("web", Server(listener="127.0.0.1:0"), Echo())  # E: arg-type
