"""Discovery: endpoint sets that change at run time (static, dns, file, etcd, admin API).

See ``_source`` for the ``EndpointSource`` interface, ``_hub`` for how one source per
cluster in the supervisor reaches every worker, and docs/fleet.md.
"""

from ._hub import DiscoveryHub as DiscoveryHub
from ._record import EndpointRecord as EndpointRecord
from ._record import to_endpoints as to_endpoints
from ._source import EndpointSource as EndpointSource
from ._source import Sink as Sink
