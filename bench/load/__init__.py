"""Load benchmark of monolake against nginx and HAProxy on one origin, DESIGN.md "Measuring".

``python -m bench.load`` (from the repository root; ``--help`` for the options). On a 2-core machine:
an nginx origin (1 worker) and the load generator are pinned to core 0, each proxy under test (1 worker)
to core 1. Primary figure: the proxy's CPU µs per request (user and sys, from /proc/PID/stat) at a fixed
offered load (``h2load --h1 --rps``) with p50/p99 latency; secondary: max req/s from ``wrk``. Proxies are
measured A/B interleaved over several rounds and medians are quoted, with ratios to nginx from the same
run. Results: ``bench/results/<UTC time>.json``, ``.md`` and ``.png``. Only loopback addresses are used;
every process started is stopped by PID.

Modules: ``procs`` (start, pin, stop, CPU accounting), ``configs`` (origin and proxy configs), ``drive``
(h2load and wrk), ``machine`` (tool set-up, machine info), ``report`` (medians, Markdown, plot), ``run``
(the command).
"""
