"""A leaf of other types than the stack's layers: must fail."""

from __future__ import annotations

from monolake.proto.http1 import Request, Response
from monolake.service import Factory, Stack
from monolake.service.layers import TimeoutLayer


class Echo:
    async def __call__(self, data: bytes) -> bytes:
        return data


class EchoFactory(Factory[Echo]):
    def make(self, old: Echo | None) -> Echo:
        return Echo()


stack: Stack[Request, Response] = Stack([TimeoutLayer(1.0)], EchoFactory())  # E: arg-type
