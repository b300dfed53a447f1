"""RateLimitedLog: a burst per window goes through, the rest is counted and reported once."""

from __future__ import annotations

import logging

import pytest

from monolake.observe import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t.rl"), "bad requests", burst=3, interval=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.rl"):
        written = [rl.log("line %d", i) for i in range(200)]
        assert written.count(True) == 3
        assert rl.suppressed == 197
        rl.flush()  # the window is not over: nothing yet
        assert len(caplog.records) == 3
        clock.now += 1.0
        rl.flush()
        rl.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["line 0", "line 1", "line 2"]
    assert messages[3] == "bad requests: 197 more suppressed in the last 1.0 s"
    assert len(messages) == 4
    assert rl.suppressed == 0


def test_next_window_reports_then_logs(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t.rl2"), "x", level=logging.WARNING, burst=1, interval=2.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.rl2"):
        assert rl.log("a")
        assert not rl.log("b")
        clock.now += 2.5
        assert rl.log("c")
    assert [r.getMessage() for r in caplog.records] == ["a", "x: 1 more suppressed in the last 2.5 s", "c"]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("t"), "x", burst=0)


def test_exc_info_is_passed_on(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimitedLog(logging.getLogger("t.rl3"), "x", level=logging.WARNING)
    with caplog.at_level(logging.INFO, logger="t.rl3"):
        try:
            raise OSError("accept failed")
        except OSError:
            rl.log("accept: %s", "EMFILE", exc_info=True)
    assert caplog.records[0].exc_info is not None
    assert caplog.records[0].getMessage() == "accept: EMFILE"
