"""L4 relay benchmark: monolake ``proxy_type = "tcp"`` against nginx ``stream`` and HAProxy ``mode tcp``.

``python -m bench.l4`` (from the repository root; ``--help`` for the options; ``--quick`` for a smoke run).
On a 2-core machine the upstream peers (``peers``: a byte sink, a byte source and an echo server) and the
client (``client``) are pinned to core 0, each proxy under test (1 worker / 1 thread) to core 1. Measured,
for each proxy, interleaved over several rounds (medians, ratios to nginx from the same run):

- bulk: one connection moving 4 GiB client -> proxy -> sink (upload) and source -> proxy -> client
  (download): MB/s, and the proxy's CPU seconds per GB (user and sys from /proc/PID/stat);
- short connections: 10000 connections, each sending 1 KiB and reading its echo: connections/s and the
  proxy's CPU µs per connection.

A "direct" row (client to peers, no proxy) shows the ceiling of core 0. Process start/stop, CPU accounting
and machine info come from ``bench.load``. Results: ``bench/results/l4-<UTC time>.json`` and ``.md``.
Loopback only; every process started is stopped by PID.
"""
