"""Native extensions, all optional, and the examples shipped inside the package.

Each extension is built when its C library is found and skipped otherwise; the
pure-Python path is used in its place at run time (``monolake version`` and the
start-up log say which). Metadata lives in pyproject.toml.

Finding a library, in order: ``pkg-config`` (its include and library dirs go into
the Extension), then the directories in ``CPATH`` and ``C_INCLUDE_PATH``, then
/usr/include and /usr/local/include. A skipped extension prints a notice. pip hides
a build's output unless the build fails (``-v`` shows it), so the notice is also
written to the terminal (/dev/tty) when there is one: that is what a user running
``pip install`` sees at default verbosity.

``MONOLAKE_REQUIRE_NATIVE=1`` turns a missing or failing native module into a
build error (CI and the Dockerfile set it).

``examples/`` at the repository root is the source of the examples; the build
copies it into the wheel as ``monolake/examples/`` (see ``monolake._examples``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


@dataclass(frozen=True)
class Native:
    module: str
    sources: list[str]
    pkg: str  # pkg-config package name
    library: str  # -l name when pkg-config does not know the package
    header: str  # must exist for the extension to be attempted
    apt: str  # the Debian package with the headers, for the notice


NATIVE = [
    Native(
        "monolake.runtime._uring", ["src/monolake/runtime/_uring.c"], "liburing", "uring", "liburing.h", "liburing-dev"
    ),
    Native(
        "monolake.proto.http2._nghttp2",
        ["src/monolake/proto/http2/_nghttp2.c"],
        "libnghttp2",
        "nghttp2",
        "nghttp2/nghttp2.h",
        "libnghttp2-dev",
    ),
]

SYSTEM_INCLUDE = ("/usr/include", "/usr/local/include")


@dataclass
class Found:
    include_dirs: list[str] = field(default_factory=list)
    library_dirs: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)
    via: str = ""


def _pkg_config(pkg: str) -> Found | None:
    """``pkg-config``'s flags for ``pkg``, or None if pkg-config is missing or does not know it."""
    exe = shutil.which(os.environ.get("PKG_CONFIG", "pkg-config"))
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--cflags-only-I", "--libs", pkg], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return Found(
        include_dirs=[f[2:] for f in out if f.startswith("-I")],
        library_dirs=[f[2:] for f in out if f.startswith("-L")],
        libraries=[f[2:] for f in out if f.startswith("-l")],
        via="pkg-config",
    )


def find_native(
    ext: Native,
    *,
    env: Mapping[str, str] = os.environ,
    pkg_config: Callable[[str], Found | None] = _pkg_config,
    system_include: Sequence[str] = SYSTEM_INCLUDE,
) -> Found | None:
    """Where ``ext``'s library is, or None when its header is nowhere to be found.

    pkg-config's include dirs omit the compiler's own (/usr/include), so the header
    is looked for in its dirs and then in the others; its library flags are kept.
    """
    pc = pkg_config(ext.pkg)
    env_dirs = [d for var in ("CPATH", "C_INCLUDE_PATH") for d in env.get(var, "").split(os.pathsep) if d]
    candidates = [*(pc.include_dirs if pc else []), *env_dirs, *system_include]
    for d in candidates:
        if os.path.isfile(os.path.join(d, ext.header)):
            if pc is not None:
                return pc
            via = "CPATH/C_INCLUDE_PATH" if d in env_dirs else d
            # Directories from the environment are searched by the compiler already, but
            # naming them keeps the build independent of how it is invoked.
            return Found(include_dirs=[d] if d in env_dirs else [], libraries=[ext.library], via=via)
    return None


def notice(ext: Native) -> str:
    return (
        f"monolake: NOTICE: {ext.header} not found (pkg-config {ext.pkg}, CPATH, C_INCLUDE_PATH, "
        f"{', '.join(SYSTEM_INCLUDE)}): building without the native module {ext.module}; the pure-Python "
        f"path is used instead. Install {ext.apt} (or set CPATH/PKG_CONFIG_PATH) and reinstall to build it."
    )


def _tell(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    if not sys.stderr.isatty():
        try:  # pip captures stderr; the terminal, if any, still reaches the user
            with open("/dev/tty", "w") as tty:
                tty.write(f"\n{message}\n")  # pip's spinner leaves the cursor mid-line
        except OSError:
            pass


SKIPPED: list[Native] = []
"""Extensions left out of this build; told when the build runs (not when pip only asks for metadata)."""


def _extensions(require: bool = False) -> list[Extension]:
    """The extensions to build. ``require``: a missing library, or one failing to
    compile, fails the build (pip then shows its output) instead of being left out."""
    out = []
    for ext in NATIVE:
        found = find_native(ext)
        if found is None:
            SKIPPED.append(ext)
            continue
        out.append(
            Extension(
                ext.module,
                sources=ext.sources,
                include_dirs=found.include_dirs,
                library_dirs=found.library_dirs,
                libraries=found.libraries,
                extra_compile_args=["-O2", "-Wall"],
                optional=not require,
            )
        )
    if require and SKIPPED:
        lines = [notice(ext) for ext in SKIPPED]
        raise SystemExit("\n".join([*lines, "monolake: MONOLAKE_REQUIRE_NATIVE=1: not building without them"]))
    return out


EXAMPLES = Path(__file__).resolve().parent / "examples"


class BuildPy(build_py):
    """Tells which native modules are skipped, and copies the repository's ``examples/``
    into the built package as ``monolake/examples/``.

    Not in editable mode: there ``monolake._examples`` finds the checkout's own.
    """

    def _examples(self) -> list[tuple[Path, Path]]:
        if self.editable_mode or not EXAMPLES.is_dir():
            return []
        dst = Path(self.build_lib) / "monolake" / "examples"
        files = (p for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        return [(p, dst / p.relative_to(EXAMPLES)) for p in sorted(files)]

    def run(self) -> None:
        for ext in SKIPPED:
            _tell(notice(ext))
        super().run()
        for src, dst in self._examples():
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *(str(dst) for _, dst in self._examples())]


if __name__ == "__main__":
    setup(ext_modules=_extensions(os.environ.get("MONOLAKE_REQUIRE_NATIVE") == "1"), cmdclass={"build_py": BuildPy})
