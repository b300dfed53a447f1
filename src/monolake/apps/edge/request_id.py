"""``request_id``: every request gets an id, forwarded upstream and logged as ``$request_id``.

A client's (or a front proxy's) ``X-Request-Id`` is kept when it looks like an id
(1-200 visible ASCII characters), else replaced by a fresh one: 32 hex digits, like
nginx's ``$request_id``. The id goes upstream in the request header, into the
``REQUEST_ID`` context slot (the access log's ``$request_id``), and, with
``response_header``, back to the client.
"""

from __future__ import annotations

import os

import msgspec

from ...core.proto.http1 import Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter
from ._base import ArgError
from ._slots import REQUEST_ID

__all__ = ["REQUEST_ID", "RequestId", "RequestIdArgs"]


class RequestIdArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    header: str = "X-Request-Id"
    """The request header that carries the id (in and upstream)."""
    trust_incoming: bool = True
    """Keep a well-formed id the client sent; false: always make a new one."""
    response_header: bool = False
    """Also send the id back to the client in ``header``."""


def new_id() -> bytes:
    return os.urandom(16).hex().encode()


def _valid(value: bytes) -> bool:
    return 0 < len(value) <= 200 and value.isascii() and all(33 <= c < 127 for c in value)


class RequestId(HttpFilter):
    """Accepts or generates the request id; see the module docstring."""

    Args = RequestIdArgs

    def __init__(self, args: RequestIdArgs) -> None:
        if not args.header or not all(33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={}' for c in args.header):
            raise ArgError("header", f"not a header name: {args.header!r}")
        self.name = args.header.encode("latin-1")
        self.lname = self.name.lower()
        self.trust = args.trust_incoming
        self.respond = args.response_header

    def request_filter(self, req: Request, ctx: Context) -> None:
        headers = req.headers
        i = headers.index(self.lname)
        if i >= 0:
            value = headers.value_at(i)
            if self.trust and _valid(value):
                REQUEST_ID.set(ctx, value)
                return None
            headers.remove(self.lname)
        rid = new_id()
        headers.add(self.name, rid)
        REQUEST_ID.set(ctx, rid)
        return None

    def response_filter(self, resp: Response, ctx: Context) -> None:
        if self.respond:
            rid = REQUEST_ID.get(ctx, None)
            if rid is not None:
                resp.headers.set(self.name, rid)
