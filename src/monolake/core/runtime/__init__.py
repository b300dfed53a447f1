"""The multi-process runtime: a supervisor forks one pinned worker per core.

``run(cfg, build, source=...)`` is the whole API: ``build`` turns a Config into
one ``ServerApp`` per server, and the runtime binds, serves, drains, restarts,
reloads (SIGHUP, file changes, ``request_reload``) and upgrades (SIGUSR2).
A builder that also implements ``Reloadable`` keeps state across reloads.
``new_event_loop`` is the one place a loop backend is chosen.

From code running in a worker (the admin endpoint), ``await request_reload()``
asks the supervisor to reload and returns the outcome; ``await reload_status()``
returns the last one.
"""

from ._loops import new_event_loop as new_event_loop
from ._reload import ConfigSource as ConfigSource
from ._supervisor import Supervisor as Supervisor
from ._supervisor import cpu_count as cpu_count
from ._supervisor import run as run
from ._worker import AppBuilder as AppBuilder
from ._worker import Prepared as Prepared
from ._worker import Reloadable as Reloadable
from ._worker import ServerApp as ServerApp
from ._worker import reload_status as reload_status
from ._worker import request_reload as request_reload
