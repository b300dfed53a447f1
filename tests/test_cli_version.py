"""``monolake version`` and ``monolake --version``: library versions and the native parts in use."""

from __future__ import annotations

import importlib.util
import os
import ssl
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import REPO
from monolake.core import _compiled
from monolake.core.proto.http1 import _parse
from monolake.core.proto.http2 import CODEC_ENV, native_available
from monolake.core.runtime import uring


def run(*args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    full = {**os.environ, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", *args], capture_output=True, text=True, timeout=30, env=full
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines())
    return rows


@pytest.mark.parametrize("form", [["version"], ["--version"]])
def test_version_names_libraries_and_native_parts(form: list[str]) -> None:
    rows = run(*form, env={CODEC_ENV: "", uring.FAIL_ENV: ""})
    assert list(rows) == [
        "monolake",
        "python",
        "uvloop",
        "httptools",
        "h2",
        "msgspec",
        "openssl",
        "rtls",
        "nghttp2",
        "h1req",
        "h1resp",
        "compiled",
        "io_uring",
    ]
    assert rows["monolake"] == version("monolake")
    assert rows["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    for dist in ("uvloop", "httptools", "h2", "msgspec"):
        assert rows[dist] == version(dist)
    assert rows["openssl"].startswith(ssl.OPENSSL_VERSION)
    assert rows["rtls"].startswith(version("rtls"))
    if native_available():
        assert rows["nghttp2"].startswith("native codec active (libnghttp2 1.")
    else:
        assert rows["nghttp2"].startswith("not built (")
    if _parse._SCAN is not None:
        assert rows["h1req"].startswith("native request-head scan active")
    else:
        assert rows["h1req"].startswith("not built (")
    if importlib.util.find_spec("monolake.core.proto.http1._h1resp") is not None:
        assert rows["h1resp"] == "native upstream response heads (_h1resp), llhttp for the rest"
    else:
        assert rows["h1resp"].startswith("not built (")
    if _compiled.COMPILED:
        assert rows["compiled"].startswith(f"{len(_compiled.MODULES)} hot-path modules (mypyc): core._body, ")
    else:
        assert rows["compiled"] == f"none, the hot path runs as pure Python: {_compiled.WHY_PURE}"
    reason = uring.unavailable()
    if reason is None:
        assert rows["io_uring"].startswith("native loop built and usable; kernel ")
    else:
        assert rows["io_uring"].startswith(f"unavailable, loop = io_uring runs uvloop: {reason}")


def test_both_forms_print_the_same() -> None:
    assert run("version") == run("--version")


def test_version_says_when_a_native_part_is_not_in_use(tmp_path: Path) -> None:
    rows = run("--version", env={CODEC_ENV: "h2", uring.FAIL_ENV: "1", _compiled.PURE_ENV: "1"})
    assert rows["compiled"].startswith("none, the hot path runs as pure Python: ")
    assert rows["io_uring"].startswith("unavailable, loop = io_uring runs uvloop: io_uring_setup: ")
    if native_available():
        assert rows["nghttp2"].endswith(f"not used: {CODEC_ENV}=h2")
    # As where the codec was not built: its import fails in the child.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        'import sys\nsys.modules["monolake.core.proto.http2._native"] = None\n'
        'sys.modules["monolake.core.proto.http1._h1req"] = None\n'
        'sys.modules["monolake.core.proto.http1._h1resp"] = None\n'
    )
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    rows = run("version", env={"PYTHONPATH": path, CODEC_ENV: ""})
    assert rows["nghttp2"].startswith("not built (") and rows["nghttp2"].endswith("uses the pure-Python h2 codec")
    assert rows["h1req"].startswith("not built (") and rows["h1req"].endswith("llhttp parses every HTTP/1 request head")
    assert rows["h1resp"].startswith("not built (")
    assert rows["h1resp"].endswith("llhttp parses every upstream response head")
