"""Choosing the HTTP/2 codec: the native one when it is built, else the ``h2`` reference."""

from __future__ import annotations

import os

from ._codec import Codec
from ._h2codec import H2Codec

CODEC_ENV = "MONOLAKE_H2_CODEC"
"""Environment override: "h2" forces the reference codec, "native" requires the native one."""


def native_available() -> bool:
    """True when the libnghttp2 extension is built and imports."""
    try:
        from ._native import NgCodec  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def codec_kinds() -> list[str]:
    """The codecs usable here, reference first (tests run on each)."""
    return ["h2", "native"] if native_available() else ["h2"]


def new_codec(
    client_side: bool,
    *,
    max_concurrent_streams: int = 100,
    initial_window_size: int = 1 << 20,
    max_frame_size: int = 16384,
    max_header_list_size: int = 65536,
    kind: str | None = None,
) -> Codec:
    """A codec for one connection. ``kind``: "native", "h2" or None (the environment's
    ``MONOLAKE_H2_CODEC``, else native when available). Asking for "native" where it is
    not built raises ImportError."""
    kind = kind or os.environ.get(CODEC_ENV) or "auto"
    settings = {
        "max_concurrent_streams": max_concurrent_streams,
        "initial_window_size": initial_window_size,
        "max_frame_size": max_frame_size,
        "max_header_list_size": max_header_list_size,
    }
    if kind != "h2":
        try:
            from ._native import NgCodec  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            if kind == "native":
                raise
        else:
            codec: Codec = NgCodec(client_side, **settings)
            return codec
    return H2Codec(client_side, **settings)


def codec_notice() -> tuple[str, str]:
    """Which codec new connections get in this process and why, as (severity, message) for
    the one line a server logs at start (this module does not log): "debug" for the native
    codec; "info" when ``MONOLAKE_H2_CODEC=h2`` chose the reference; "warning" when the
    native codec is not built (the reference is used instead, which costs CPU) or the
    variable has an unknown value; "error" when ``MONOLAKE_H2_CODEC=native`` asks for a
    codec that is not built (every new HTTP/2 connection then fails)."""
    want = os.environ.get(CODEC_ENV) or "auto"
    if want == "h2":
        return "info", f"HTTP/2 codec: h2 (pure Python), chosen by {CODEC_ENV}=h2"
    try:
        from ._native import NGHTTP2_VERSION  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        if want == "native":
            return "error", f"{CODEC_ENV}=native but the native HTTP/2 codec is unavailable ({exc}): HTTP/2 fails"
        return "warning", f"native HTTP/2 codec unavailable, using h2 (pure Python) instead: {exc}"
    if want not in ("auto", "native"):
        return "warning", f"{CODEC_ENV}={want!r} is not 'h2' or 'native' (ignored); HTTP/2 codec: native"
    return "debug", f"HTTP/2 codec: native (libnghttp2 {NGHTTP2_VERSION})"
