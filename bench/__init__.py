"""Benchmarks: ``bench/micro`` (pytest-benchmark, no sockets) and ``bench/load`` (``python -m bench.load``)."""
