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
from ._select import CODEC_ENV, codec_kinds, codec_notice, native_available, new_codec

__all__ = [
    "CODEC_ENV",
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
    "codec_kinds",
    "codec_notice",
    "native_available",
    "new_codec",
]
