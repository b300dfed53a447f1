"""The mypyc-compiled hot path: which build runs, and how setup.py decides to build it.

``core/_compiled.py`` decides once per process, from the files beside the sources:
compiled only when every listed module and their shared library are built, not
``MONOLAKE_PURE=1``, and (in a checkout) none is older than its ``.py``; otherwise every
listed module is imported from source. Decisions are checked on package trees built in
a temporary directory (empty files named as the build names them); the import hook on
this install, in a child process.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from monolake.core import _compiled
from monolake.core._compiled import GROUP, MODULES, PURE_ENV, decide

REPO = Path(__file__).resolve().parents[1]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def tree(root: Path, *, built: tuple[str, ...] = MODULES, lib: bool = True, checkout: bool = True) -> Path:
    """A ``monolake`` package dir under ``root`` with every listed ``.py`` and the compiled
    files of ``built``; under ``root/src`` beside a pyproject.toml when ``checkout``."""
    pkg = (root / "src" / "monolake") if checkout else (root / "site-packages" / "monolake")
    for name in MODULES:
        base = pkg.joinpath(*name.split(".")[1:])
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".py").write_text("")
    if checkout:
        (root / "pyproject.toml").write_text("")
    for name in [*built, *([f"{GROUP}__mypyc"] if lib else [])]:
        so = pkg.joinpath(*name.split(".")[1:]).parent / (name.rpartition(".")[2] + SUFFIX)
        so.parent.mkdir(parents=True, exist_ok=True)
        so.write_bytes(b"")
    return pkg


def age(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_all_built_and_fresh_runs_compiled(tmp_path: Path) -> None:
    assert decide(str(tree(tmp_path)), env={}) == (True, "")


def test_nothing_built_is_pure(tmp_path: Path) -> None:
    compiled, why = decide(str(tree(tmp_path, built=(), lib=False)), env={})
    assert not compiled and why.startswith("not built")


def test_pure_env_wins_over_a_full_build(tmp_path: Path) -> None:
    assert decide(str(tree(tmp_path)), env={PURE_ENV: "1"}) == (False, f"{PURE_ENV}=1")


def test_a_partial_build_runs_all_from_source(tmp_path: Path) -> None:
    compiled, why = decide(str(tree(tmp_path, built=MODULES[1:])), env={})
    assert not compiled and why == f"only partly built (missing: {MODULES[0]})"
    compiled, why = decide(str(tree(tmp_path / "nolib", lib=False)), env={})
    assert not compiled and why == f"only partly built (missing: {GROUP}__mypyc)"


def test_a_source_edited_after_an_in_place_build_runs_all_from_source(tmp_path: Path) -> None:
    pkg = tree(tmp_path)
    for so in pkg.rglob(f"*{SUFFIX}"):
        age(so, 60)  # built a minute before the last edit
    compiled, why = decide(str(pkg), env={})
    assert not compiled
    assert why.startswith("compiled files older than their source: " + ", ".join(MODULES))
    assert "MONOLAKE_COMPILE_INPLACE=1 python setup.py build_ext --inplace" in why


def test_file_times_of_an_installed_wheel_are_not_compared(tmp_path: Path) -> None:
    # pip writes a wheel's files in its own order: a .py newer than its .so means nothing there.
    pkg = tree(tmp_path, checkout=False)
    for so in pkg.rglob(f"*{SUFFIX}"):
        age(so, 60)
    assert decide(str(pkg), env={}) == (True, "")


def test_notice_says_which_build_runs() -> None:
    severity, message = _compiled.notice()
    if _compiled.COMPILED:
        assert (severity, message) == ("info", f"hot path: {len(MODULES)} modules compiled with mypyc")
    else:
        assert severity == "warning"
        assert message.startswith(f"hot path: running as pure Python, {_compiled.WHY_PURE}; ")


def _child(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


IMPORT_ALL = (
    "import importlib, monolake.core._compiled as c\n"
    "for m in c.MODULES: importlib.import_module(m)\n"
    "print(c.COMPILED, sorted(c.active()) == sorted(c.MODULES), len(c.active()))\n"
)


def test_this_install_imports_all_compiled_or_all_from_source() -> None:
    out = _child(IMPORT_ALL, **{PURE_ENV: ""}).split()
    assert out in (["True", "True", str(len(MODULES))], ["False", "False", "0"])
    assert out[0] == str(decide(env={})[0])  # as this process would without MONOLAKE_PURE


def test_pure_env_imports_every_listed_module_from_its_source() -> None:
    # On a compiled install this is the import hook at work; on a pure one, the plain import.
    code = IMPORT_ALL + "import sys; print(all(sys.modules[m].__file__.endswith('.py') for m in c.MODULES))\n"
    assert _child(code, **{PURE_ENV: "1"}).split() == ["False", "False", "0", "True"]


# -- setup.py ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monolake_setup_mypyc", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # not __main__: setup() does not run
    finally:
        del sys.modules[spec.name]
    return module


def test_setup_reads_the_same_list(setup_py: ModuleType) -> None:
    assert setup_py.compiled_modules() == (list(MODULES), GROUP)
    for name in MODULES:  # each listed module is a source file of the package
        assert REPO.joinpath("src", *name.split(".")).with_suffix(".py").is_file()


Plan = tuple[bool, str, bool]


def plan(setup_py: ModuleType, argv: list[str], env: dict[str, str] | None = None, **kw: bool) -> Plan:
    mypyc, compiler = kw.get("mypyc", True), kw.get("compiler", True)
    result: Plan = setup_py.mypyc_plan(argv, env or {}, lambda: mypyc, lambda: compiler)
    return result


@pytest.mark.parametrize("argv", [["bdist_wheel"], ["build_ext"], ["install"]])
def test_setup_compiles_a_release_build(setup_py: ModuleType, argv: list[str]) -> None:
    assert plan(setup_py, ["setup.py", *argv]) == (True, "", False)


@pytest.mark.parametrize("argv", [["egg_info"], ["sdist"], ["dist_info"]])
def test_setup_does_not_run_mypyc_to_tell_metadata(setup_py: ModuleType, argv: list[str]) -> None:
    assert plan(setup_py, ["setup.py", *argv]) == (False, "", False)


@pytest.mark.parametrize("argv", [["editable_wheel"], ["develop"], ["build_ext", "--inplace"], ["build_ext", "-i"]])
def test_setup_in_place_builds_stay_pure_unless_asked(setup_py: ModuleType, argv: list[str]) -> None:
    build, message, failure = plan(setup_py, ["setup.py", *argv])
    assert (build, failure) == (False, False)
    assert "in-place/editable build" in message and "MONOLAKE_COMPILE_INPLACE=1" in message
    assert plan(setup_py, ["setup.py", *argv], {"MONOLAKE_COMPILE_INPLACE": "1"}) == (True, "", False)


def test_setup_pure_env_is_a_choice_not_a_failure(setup_py: ModuleType) -> None:
    build, message, failure = plan(setup_py, ["setup.py", "bdist_wheel"], {PURE_ENV: "1"})
    assert (build, failure) == (False, False) and message.startswith(f"monolake: NOTICE: {PURE_ENV}=1: ")


def test_setup_missing_mypyc_or_compiler_is_told_and_a_failure(setup_py: ModuleType) -> None:
    build, message, failure = plan(setup_py, ["setup.py", "bdist_wheel"], mypyc=False)
    assert (build, failure) == (False, True) and "mypyc not installed" in message
    build, message, failure = plan(setup_py, ["setup.py", "bdist_wheel"], compiler=False)
    assert (build, failure) == (False, True) and "no C compiler found" in message


# -- what compiled code does differently ------------------------------------------------


def test_slices_that_would_end_before_they_start_are_guarded() -> None:
    """Compiled, ``b[i:j]`` with j < i raises SystemError instead of giving b"": the readers
    guard theirs (a status line without a reason is covered by the response reader tests)."""
    from monolake.core.proto.http1._parse import _cut_hop_by_hop, _reason

    assert _cut_hop_by_hop(b"\nA: b\r\nConnection:\nX: y\r\n") == (b"A: b\r\nX: y\r\n", [(b"connection", b"")])
    assert _reason(b"HTTP/1.1 200\r\n", 0, 12) == b""
    assert _reason(b"HTTP/1.1 200 OK\r\n", 0, 15) == b"OK"


def test_docstrings_of_compiled_classes_are_read_back_from_source() -> None:
    """mypyc keeps no docstrings; the public API's classes get theirs back (``monolake.Body``)."""
    import ast
    import inspect

    import monolake

    for name in ("Body", "Headers", "Request", "Response"):
        cls = getattr(monolake, name)
        tree = ast.parse(REPO.joinpath("src", *cls.__module__.split(".")).with_suffix(".py").read_text())
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        assert cls.__doc__ == ast.get_docstring(node, clean=False), name
        assert inspect.getdoc(cls), name
