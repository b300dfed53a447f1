"""The native HTTP/2 codec: ``NgCodec`` from the C extension over libnghttp2.

Importing this module raises ImportError where the extension is not built (no
libnghttp2 headers at install time); ``_select.new_codec`` then falls back to
the ``h2`` reference codec. The type itself is C (``_nghttp2.c``): every call a
driver makes is one C call, with no Python frame in between.
"""

from __future__ import annotations

from ._nghttp2 import HAS_MAX_CONTINUATIONS, HAS_RESET_RATE_LIMIT, NGHTTP2_VERSION, NgCodec

__all__ = ["HAS_MAX_CONTINUATIONS", "HAS_RESET_RATE_LIMIT", "NGHTTP2_VERSION", "NgCodec"]
