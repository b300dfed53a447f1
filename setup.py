"""Native extensions, all optional: each is built when its C library's headers are
present (``.ci/run`` installs them with apt-get) and skipped otherwise, and the
pure-Python path is used in its place. Metadata lives in pyproject.toml.

An extension is one entry in ``NATIVE``: module name, sources, the libraries it
links, and the header that must exist for it to be attempted.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

# (module, sources, libraries, required header)
NATIVE: list[tuple[str, list[str], list[str], str]] = [
    ("monolake.runtime._uring", ["src/monolake/runtime/_uring.c"], ["uring"], "liburing.h"),
    ("monolake.proto.http2._nghttp2", ["src/monolake/proto/http2/_nghttp2.c"], ["nghttp2"], "nghttp2/nghttp2.h"),
]


def _have_header(header: str) -> bool:
    return any(os.path.exists(os.path.join(d, header)) for d in ("/usr/include", "/usr/local/include"))


def _extensions() -> list[Extension]:
    out = []
    for name, sources, libraries, header in NATIVE:
        if not _have_header(header):
            print(f"monolake: {header} not found, skipping native module {name}", file=sys.stderr)
            continue
        out.append(
            Extension(
                name,
                sources=sources,
                libraries=libraries,
                extra_compile_args=["-O2", "-Wall"],
                optional=True,
            )
        )
    return out


setup(ext_modules=_extensions())
