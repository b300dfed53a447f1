"""Service core: Service, Layer, Factory, Stack and the typed per-request Context."""

from ._context import SLOTS as SLOTS
from ._context import Context as Context
from ._service import Factory as Factory
from ._service import Layer as Layer
from ._service import Service as Service
from ._service import Stack as Stack
