"""The multi-process runtime: a supervisor forks one pinned worker per core.

``run(cfg, build)`` is the whole API: ``build`` turns a Config into one
``ServerApp`` per server, and the runtime binds, serves, drains and restarts.
``new_event_loop`` is the one place a loop backend is chosen.
"""

from ._loops import new_event_loop as new_event_loop
from ._supervisor import cpu_count as cpu_count
from ._supervisor import run as run
from ._worker import AppBuilder as AppBuilder
from ._worker import ServerApp as ServerApp
