"""The per-request context: typed slots, not a dict.

Slots are attributes of a ``__slots__`` class so reading one is an attribute load.
Which stage fills which slot is declared by layers (``requires``/``provides``) and
checked when a stack is built (see ``_service.Stack.check``).
"""

from __future__ import annotations

from typing import Any

SLOTS = frozenset({"peer", "server", "start", "route", "cluster", "endpoint", "tls", "user"})
"""Every slot name a layer may require or provide."""


class Context:
    """Per-request state shared by the stages of one request.

    peer: client address ("ip" or "unix"); server: server name; start: loop time the
    request head completed; route: the matched route; cluster: its upstream cluster;
    endpoint: the chosen upstream endpoint; tls: TLS info or None; user: free for filters.
    """

    __slots__ = ("cluster", "endpoint", "peer", "route", "server", "start", "tls", "user")

    def __init__(self, peer: str, server: str, start: float) -> None:
        self.peer = peer
        self.server = server
        self.start = start
        self.route: Any = None
        self.cluster: Any = None
        self.endpoint: Any = None
        self.tls: Any = None
        self.user: dict[str, Any] | None = None
