"""The loop backend seam."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from monolake.core.errors import ConfigError
from monolake.core.runtime import new_event_loop


@pytest.mark.parametrize(("kind", "cls"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)])
def test_new_event_loop(kind: str, cls: type) -> None:
    loop = new_event_loop(kind)
    try:
        assert isinstance(loop, cls)
        assert not loop.is_running()
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


def test_unknown_loop_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"^runtime\.loop: unknown event loop 'kqueue' \(known: asyncio, auto, io_uring, uvloop\)"
    ):
        new_event_loop("kqueue")
