"""Benchmarks run on one process: pyproject's ``-n auto`` (for the test suite) would otherwise
spread them over pytest-xdist workers, and pytest-benchmark turns itself off under xdist."""

from __future__ import annotations

import pytest


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return 0
