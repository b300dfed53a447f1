"""Service core: Service, Layer, Factory, Stack, the typed per-request Context and its slots."""

from ._context import BUILTIN as BUILTIN
from ._context import SLOTS as SLOTS
from ._context import Context as Context
from ._context import ContextSlot as ContextSlot
from ._context import UnsetSlotError as UnsetSlotError
from ._lane import TAKEN as TAKEN
from ._lane import LaneService as LaneService
from ._lane import Replier as Replier
from ._lane import Taken as Taken
from ._lane import lane_of as lane_of
from ._service import Factory as Factory
from ._service import Layer as Layer
from ._service import Service as Service
from ._service import Stack as Stack

__all__ = [
    "BUILTIN",
    "SLOTS",
    "TAKEN",
    "Context",
    "ContextSlot",
    "Factory",
    "LaneService",
    "Layer",
    "Replier",
    "Service",
    "Stack",
    "Taken",
    "UnsetSlotError",
    "lane_of",
]
