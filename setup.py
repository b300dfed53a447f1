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

The hot-path modules (``MODULES`` in src/monolake/core/_compiled.py) are compiled
with mypyc from their ``.py`` source, which ships beside them. Left as pure Python,
with a notice, when mypyc or a C compiler is missing, or with ``MONOLAKE_PURE=1``.
In-place builds (``pip install -e``, ``build_ext --inplace``) leave them pure unless
``MONOLAKE_COMPILE_INPLACE=1``: a compiled file beside its source would shadow every
later edit of it (monolake then runs them from source, and says so, until rebuilt;
``python setup.py clean_compiled`` deletes them).

``examples/`` at the repository root is the source of the examples; the build
copies it into the wheel as ``monolake/examples/`` (see ``monolake.product._examples``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from setuptools import Command, Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


@dataclass(frozen=True)
class Native:
    module: str
    sources: list[str]
    pkg: str = ""  # pkg-config package name
    library: str = ""  # -l name when pkg-config does not know the package
    header: str = ""  # must exist for the extension to be attempted; "" for no library
    apt: str = ""  # the Debian package with the headers, for the notice


NATIVE = [
    Native(
        "monolake.core.runtime._uring",
        ["src/monolake/core/runtime/_uring.c"],
        "liburing",
        "uring",
        "liburing.h",
        "liburing-dev",
    ),
    Native(
        "monolake.core.proto.http2._nghttp2",
        ["src/monolake/core/proto/http2/_nghttp2.c"],
        "libnghttp2",
        "nghttp2",
        "nghttp2/nghttp2.h",
        "libnghttp2-dev",
    ),
    Native("monolake.core.proto.http1._h1req", ["src/monolake/core/proto/http1/_h1req.c"]),
    Native("monolake.core.proto.http1._h1resp", ["src/monolake/core/proto/http1/_h1resp.c"]),
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
    if not ext.header:
        return Found(via="no library")
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


HERE = Path(__file__).resolve().parent
COMPILED_LIST = Path("src/monolake/core/_compiled.py")
PURE_ENV = "MONOLAKE_PURE"
INPLACE_ENV = "MONOLAKE_COMPILE_INPLACE"
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "bdist", "install", "editable_wheel", "develop"}
"""Commands that build extensions; the others (egg_info, sdist, dist_info: pip asking for
metadata) must not pay for running mypyc."""


def compiled_modules(source: Path = HERE / COMPILED_LIST) -> tuple[list[str], str]:
    """``MODULES`` and ``GROUP`` of _compiled.py, read as literals (monolake is not importable
    while it is being built)."""
    import ast

    values: dict[str, object] = {}
    for node in ast.parse(source.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id in ("MODULES", "GROUP"):
            values[target.id] = ast.literal_eval(node.value)  # type: ignore[attr-defined]
    modules, group = values["MODULES"], values["GROUP"]
    assert isinstance(modules, tuple) and isinstance(group, str)
    return [str(m) for m in modules], group


def _inplace(argv: Sequence[str]) -> bool:
    if "editable_wheel" in argv or "develop" in argv:
        return True
    return "build_ext" in argv and ("--inplace" in argv or "-i" in argv)


def _has_compiler() -> bool:
    import sysconfig

    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0]) is not None


def mypyc_plan(
    argv: Sequence[str],
    env: Mapping[str, str] = os.environ,
    has_mypyc: Callable[[], bool] = lambda: importlib.util.find_spec("mypyc") is not None,
    has_compiler: Callable[[], bool] = _has_compiler,
) -> tuple[bool, str, bool]:
    """(compile the hot path?, the notice if not, is not compiling a failure under
    ``MONOLAKE_REQUIRE_NATIVE=1``?). Not compiling because it was asked for (MONOLAKE_PURE,
    an in-place build) is no failure; because something is missing, it is."""
    pure = "the hot-path modules stay pure Python (slower: roughly a third more CPU per request)"
    if not BUILD_COMMANDS.intersection(argv):
        return False, "", False
    if env.get(PURE_ENV) == "1":
        return False, f"monolake: NOTICE: {PURE_ENV}=1: {pure}.", False
    if _inplace(argv) and env.get(INPLACE_ENV) != "1":
        return (
            False,
            (
                f"monolake: NOTICE: in-place/editable build: {pure}; set {INPLACE_ENV}=1 to compile them in "
                "place (then rebuild after editing them, see README 'Development')."
            ),
            False,
        )
    if not has_mypyc():
        return False, f"monolake: NOTICE: mypyc not installed (pip install 'mypy[mypyc]'): {pure}.", True
    if not has_compiler():
        return False, f"monolake: NOTICE: no C compiler found (CC, cc): {pure}.", True
    return True, "", False


def _mypyc_extensions(require: bool) -> list[Extension]:
    """The mypyc extensions (one shared library and a small module per source), or none,
    with the notice told at build time."""
    global MYPYC_NOTICE
    build, MYPYC_NOTICE, failure = mypyc_plan(sys.argv)
    if failure and require:
        raise SystemExit(f"{MYPYC_NOTICE}\nmonolake: MONOLAKE_REQUIRE_NATIVE=1: not building without them")
    if not build:
        return []
    from mypyc.build import mypycify

    modules, group = compiled_modules()
    paths = [str(Path("src", *m.split(".")).with_suffix(".py")) for m in modules]
    exts = mypycify(paths, opt_level="3", group_name=group)
    for ext in exts:
        for c in ext.sources:
            fix_weakref_slots(Path(c))
        ext.optional = not require  # a failed compile leaves them pure (told at start), unless required
    return exts


_WEAKLIST = r"\*\(\(PyObject \*\*\)\(\(char \*\)self \+ sizeof\(PyObject \*\) \+ sizeof\(\w+\)\)\)"
"""The ``__weakref__`` slot of a compiled instance, as mypyc's C names it (right after ``__dict__``)."""


def fix_weakref_slots(path: Path) -> int:
    """Make the generated C of ``path`` handle the ``__weakref__`` slot as CPython requires.

    mypyc (2.4.1, pinned) gives a compiled class with a Python base (``WeakReferable``,
    ``asyncio.Protocol``, asyncio's ``Transport``, an exception) a ``__dict__`` and a
    ``__weakref__`` slot, but treats the weak reference list as an owned reference:
    tp_traverse visits it, tp_clear decrefs it, and tp_dealloc never calls
    ``PyObject_ClearWeakRefs``. An instance that is weakly referenced (a metrics WeakSet, the
    loop's WeakValueDictionary of transports) and dies by its refcount, not by the cyclic GC
    (which clears weak references first), leaves its weak references pointing at freed memory
    and drops a reference it does not own: crashes later, in the GC. Here the slot is neither
    visited nor cleared, and dealloc clears the weak references first, as CPython's
    ``subtype_dealloc`` does. Returns how many classes were fixed; raises SystemExit when the
    C is not shaped as expected (a new mypyc: check whether it still needs this)."""
    import re

    text = path.read_text()
    slots = dict(
        re.findall(r"PyMemberDef (\w+)_members\[\] = \{\n[^\n]*\n[ \t]*\{\"__weakref__\", T_OBJECT_EX, ([^,]+), ", text)
    )
    if not slots:
        return 0
    text = re.sub(rf"\n[ \t]*Py_(?:VISIT|CLEAR)\({_WEAKLIST}\);", "", text)
    fixed = 0
    for prefix, offset in slots.items():
        if not re.search(rf"\n[ \t]*{prefix}_dealloc\(", text):
            continue  # a protocol or trait: no instances of its own layout
        head = re.search(rf"\n[ \t]*{prefix}_dealloc\(\w+ \*self\)", text)
        m = re.compile(r"\n([ \t]*)PyObject_GC_UnTrack\(self\);").search(text, head.end()) if head else None
        end = text.find("\nstatic ", head.end()) if head else -1
        if head is None or m is None or (end != -1 and m.start() > end):
            raise SystemExit(f"monolake: {path}: no dealloc of {prefix} to fix (mypyc changed?)")
        slot = f"*((PyObject **)((char *)self + {offset}))"
        clear = f"\n{m.group(1)}if ({slot} != NULL) PyObject_ClearWeakRefs((PyObject *)self);"
        text = text[: m.end()] + clear + text[m.end() :]
        fixed += 1
    if re.search(_WEAKLIST + r"\);", text):
        raise SystemExit(f"monolake: {path}: a weak reference slot is still visited or cleared (mypyc changed?)")
    path.write_text(text)
    return fixed


MYPYC_NOTICE = ""
_TOLD: set[str] = set()


def _tell_build_notices() -> None:
    for message in [*(notice(ext) for ext in SKIPPED), MYPYC_NOTICE]:
        if message and message not in _TOLD:
            _TOLD.add(message)
            _tell(message)


class BuildExt(build_ext):
    """Tells what is left pure (``build_ext --inplace`` runs without build_py)."""

    def run(self) -> None:
        _tell_build_notices()
        super().run()
        if self.inplace:
            # Up-to-date files are neither rebuilt nor copied anew (copies keep their build
            # time), but the source may have been touched since: stamp them now, so that the
            # run-time check (compiled older than its source = stale) sees this build.
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if ext.name.startswith("monolake") and os.path.isfile(path):
                    os.utime(path)


class CleanCompiled(Command):
    """``python setup.py clean_compiled``: delete the compiled hot-path files of an in-place build."""

    description = "delete the in-place mypyc-compiled files under src/"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        # Every .so under src/ but the C extensions: also those of a module since taken off the list.
        native = {ext.module for ext in NATIVE}
        for f in sorted((HERE / "src").rglob("*.so")):
            name = ".".join(f.relative_to(HERE / "src").with_suffix("").with_suffix("").parts)
            if name not in native:
                print(f"removing {f.relative_to(HERE)}")
                f.unlink()


EXAMPLES = HERE / "examples"


class BuildPy(build_py):
    """Tells which native modules are skipped, and copies the repository's ``examples/``
    into the built package as ``monolake/examples/``.

    Not in editable mode: there ``monolake.product._examples`` finds the checkout's own.
    """

    def _examples(self) -> list[tuple[Path, Path]]:
        if self.editable_mode or not EXAMPLES.is_dir():
            return []
        dst = Path(self.build_lib) / "monolake" / "examples"
        files = (p for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        return [(p, dst / p.relative_to(EXAMPLES)) for p in sorted(files)]

    def run(self) -> None:
        _tell_build_notices()
        super().run()
        for src, dst in self._examples():
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *(str(dst) for _, dst in self._examples())]


if __name__ == "__main__":
    _require = os.environ.get("MONOLAKE_REQUIRE_NATIVE") == "1"
    setup(
        ext_modules=[*_extensions(_require), *_mypyc_extensions(_require)],
        cmdclass={"build_py": BuildPy, "build_ext": BuildExt, "clean_compiled": CleanCompiled},
    )
