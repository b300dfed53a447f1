"""setup.py's search for the C libraries of the optional native modules.

Order: pkg-config, then CPATH / C_INCLUDE_PATH, then the system include dirs; a
module whose header is nowhere is skipped with a notice naming what to install.
Each step is tested with headers placed in (or hidden from) temporary directories.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monolake_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # not __main__: setup() does not run
    finally:
        del sys.modules[spec.name]
    return module


def nghttp2(setup_py: ModuleType) -> Any:
    return next(n for n in setup_py.NATIVE if n.library == "nghttp2")


def header_in(root: Path) -> Path:
    (root / "nghttp2").mkdir(parents=True)
    (root / "nghttp2" / "nghttp2.h").write_text("/* test */\n")
    return root


def no_pkg_config(pkg: str) -> None:
    return None


def test_not_found_anywhere(setup_py: ModuleType, tmp_path: Path) -> None:
    ext = nghttp2(setup_py)
    found = setup_py.find_native(ext, env={}, pkg_config=no_pkg_config, system_include=[str(tmp_path)])
    assert found is None
    text = setup_py.notice(ext)
    assert "nghttp2/nghttp2.h not found" in text
    assert "monolake.core.proto.http2._nghttp2" in text
    assert "libnghttp2-dev" in text and "pure-Python" in text


@pytest.mark.parametrize("var", ["CPATH", "C_INCLUDE_PATH"])
def test_found_through_environment(setup_py: ModuleType, tmp_path: Path, var: str) -> None:
    inc = header_in(tmp_path / "inc")
    env = {var: f"{tmp_path / 'elsewhere'}:{inc}"}
    found = setup_py.find_native(nghttp2(setup_py), env=env, pkg_config=no_pkg_config, system_include=[])
    assert found is not None
    assert found.include_dirs == [str(inc)]
    assert found.libraries == ["nghttp2"]


def test_found_in_system_dir(setup_py: ModuleType, tmp_path: Path) -> None:
    inc = header_in(tmp_path / "usr-include")
    found = setup_py.find_native(nghttp2(setup_py), env={}, pkg_config=no_pkg_config, system_include=[str(inc)])
    assert found is not None
    assert found.include_dirs == []  # the compiler searches it already
    assert found.libraries == ["nghttp2"]


def test_pkg_config_flags_are_used(setup_py: ModuleType, tmp_path: Path) -> None:
    inc = header_in(tmp_path / "opt" / "include")
    pc = setup_py.Found(
        include_dirs=[str(inc)], library_dirs=[str(tmp_path / "opt" / "lib")], libraries=["nghttp2"], via="pkg-config"
    )
    found = setup_py.find_native(nghttp2(setup_py), env={}, pkg_config=lambda pkg: pc, system_include=[])
    assert found is pc


def test_pkg_config_without_the_header_is_not_enough(setup_py: ModuleType, tmp_path: Path) -> None:
    """A .pc file whose headers are not installed (a runtime-only package): skipped."""
    pc = setup_py.Found(include_dirs=[str(tmp_path)], libraries=["nghttp2"], via="pkg-config")
    found = setup_py.find_native(nghttp2(setup_py), env={}, pkg_config=lambda pkg: pc, system_include=[str(tmp_path)])
    assert found is None


@pytest.mark.skipif(shutil.which("pkg-config") is None, reason="pkg-config is not installed")
def test_real_pkg_config(setup_py: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix known only to pkg-config (a .pc file in PKG_CONFIG_PATH): its dirs reach the Extension."""
    prefix = tmp_path / "prefix"
    header_in(prefix / "include")
    (prefix / "lib" / "pkgconfig").mkdir(parents=True)
    (prefix / "lib" / "pkgconfig" / "monolake-test-nghttp2.pc").write_text(
        f"prefix={prefix}\nName: t\nDescription: t\nVersion: 1\nCflags: -I${{prefix}}/include\n"
        "Libs: -L${prefix}/lib -lnghttp2\n"
    )
    monkeypatch.setenv("PKG_CONFIG_PATH", str(prefix / "lib" / "pkgconfig"))
    ext = setup_py.Native("m", [], "monolake-test-nghttp2", "nghttp2", "nghttp2/nghttp2.h", "libnghttp2-dev")
    found = setup_py.find_native(ext, env={}, system_include=[])
    assert found is not None
    assert found.via == "pkg-config"
    assert found.include_dirs == [str(prefix / "include")]
    assert found.library_dirs == [str(prefix / "lib")]
    assert found.libraries == ["nghttp2"]


def test_skipped_module_is_told_when_building(
    setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Headers hidden: no Extension, and the build step (not the metadata step) prints one notice each."""
    monkeypatch.setattr(setup_py, "find_native", lambda ext: None)
    monkeypatch.setattr(setup_py, "SKIPPED", [])
    assert setup_py._extensions() == []
    assert capsys.readouterr().err == ""  # pip asks for metadata several times; it says nothing then
    for ext in setup_py.SKIPPED:
        setup_py._tell(setup_py.notice(ext))
    err = capsys.readouterr().err
    assert "liburing.h not found" in err and "nghttp2/nghttp2.h not found" in err


def build_without_headers(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``setup.py build_py`` on a copy of the tree with both headers hidden (pkg-config off, no include dirs)."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "examples", tree / "examples")
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    text = (REPO / "setup.py").read_text()
    hidden = text.replace('SYSTEM_INCLUDE = ("/usr/include", "/usr/local/include")', "SYSTEM_INCLUDE = ()")
    assert hidden != text
    (tree / "setup.py").write_text(hidden)
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "build")],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PKG_CONFIG": "false", "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal: the notice goes to stderr only
    )


def test_pure_build_prints_the_notice(tmp_path: Path) -> None:
    out = build_without_headers(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("NOTICE") == 2, out.stderr
    assert (tmp_path / "build" / "monolake" / "examples" / "quickstart.toml").is_file()


def test_required_native_fails_the_build(tmp_path: Path) -> None:
    """MONOLAKE_REQUIRE_NATIVE=1 (CI, the Dockerfile): no silent pure build; pip shows a failed build's output."""
    out = build_without_headers(tmp_path, MONOLAKE_REQUIRE_NATIVE="1")
    assert out.returncode != 0
    assert "liburing.h not found" in out.stderr and "nghttp2/nghttp2.h not found" in out.stderr
    assert "MONOLAKE_REQUIRE_NATIVE=1: not building without them" in out.stderr


def test_an_extension_without_a_library_needs_no_search(setup_py: ModuleType) -> None:
    """``_h1resp`` links nothing: it is built wherever a C compiler is, with no flags and no notice."""
    ext = next(n for n in setup_py.NATIVE if n.module == "monolake.core.proto.http1._h1resp")

    def must_not_ask(pkg: str) -> None:
        raise AssertionError(f"pkg-config asked for {pkg!r}")

    found = setup_py.find_native(ext, env={}, pkg_config=must_not_ask, system_include=[])
    assert found is not None
    assert (found.include_dirs, found.library_dirs, found.libraries) == ([], [], [])
