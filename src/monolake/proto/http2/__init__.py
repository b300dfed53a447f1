"""HTTP/2 framing behind one codec interface (see ``_codec``)."""

from ._codec import (
    DATA,
    DRAINED,
    GOAWAY,
    HEADERS,
    PREFACE,
    RESET,
    SETTINGS,
    Codec,
    Event,
    H2ConnectionError,
    HeaderList,
)

__all__ = [
    "DATA",
    "DRAINED",
    "GOAWAY",
    "HEADERS",
    "PREFACE",
    "RESET",
    "SETTINGS",
    "Codec",
    "Event",
    "H2ConnectionError",
    "HeaderList",
]
