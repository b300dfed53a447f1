"""A context slot set or read with the wrong type: must fail."""

from __future__ import annotations

from monolake.service import Context, ContextSlot

USER_ID = ContextSlot("user_id", str)


def handler(ctx: Context) -> int:
    USER_ID.set(ctx, 42)  # E: arg-type
    return USER_ID.get(ctx)  # E: return-value
