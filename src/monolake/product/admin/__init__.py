"""The admin endpoint (metrics, health, config, reload, dashboard), run by the supervisor."""

from ._ops import operations as operations
from ._server import AdminServer as AdminServer
from ._server import AdminState as AdminState
from ._server import redact as redact
