"""The documentation site: it builds with ``mkdocs build --strict``, its code comes
from files under examples/ that tests run, and the configuration reference covers
every key of the schema.

Guides include code with pymdownx.snippets (``--8<-- "examples/..."``) rather than
pasting it, so an example shown on the site is a file; the checks below make sure
each such file exists, lives under examples/ (or docs/), and is named by some test.
CI installs the ``docs`` extra, so there the build test fails instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import msgspec
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SNIPPET = re.compile(r"--8<--(?P<rest>.*)$", re.MULTILINE)
QUOTED = re.compile(r"""^\s*(["'])(?P<path>[^"']+)\1\s*$""")


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _snippets() -> list[tuple[Path, str]]:
    """(page, included path) for every snippet include of every page, line ranges dropped."""
    found = []
    for page in _pages():
        for m in SNIPPET.finditer(page.read_text()):
            q = QUOTED.match(m["rest"])
            assert q, f'{page.relative_to(REPO)}: use the one-line form --8<-- "path", not {m[0]!r}'
            path = q["path"]
            if not (REPO / path).exists():  # "file.py:10:20" or "file.py:section"
                path = path.split(":", 1)[0]
            found.append((page, path))
    return found


def test_site_builds_strict(tmp_path: Path) -> None:
    """Zero warnings: broken links, missing snippets, unresolved API names all fail the build."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed; CI installs it with the test extra (pip install -e '.[test]')")
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    config = (site / "reference" / "config" / "index.html").read_text()
    assert 'id="route"' in config and "max_request_line_bytes" in config  # the hook filled the page in
    service = (site / "reference" / "service" / "index.html").read_text()
    assert 'id="monolake.core.service.Stack"' in service  # re-exported names are documented
    assert not re.search(r'id="monolake\.service\._', service)  # private modules and __all__ are not


def test_snippets_exist_under_examples_or_docs() -> None:
    for page, path in _snippets():
        target = (REPO / path).resolve()
        where = f"{page.relative_to(REPO)} includes {path!r}"
        assert target.is_file(), f"{where}: no such file"
        assert target.is_relative_to(REPO / "examples") or target.is_relative_to(DOCS), (
            f"{where}: code shown in the docs lives under examples/"
        )


def test_included_examples_are_run_by_tests() -> None:
    """A test names each included example by its path, its module name or its file name, or
    by its quoted stem (``"hello_stream"``) in a file that names its directory; the
    examples/*.toml are all served by tests/e2e/test_examples.py, which globs them."""
    tests = [p.read_text() for p in (REPO / "tests").rglob("*.py") if p.name != "test_docs.py"]
    globs_toml = 'glob("*.toml")' in (REPO / "tests" / "e2e" / "test_examples.py").read_text()
    for page, path in _snippets():
        rel = Path(path)
        if rel.parts[0] != "examples":
            continue
        if globs_toml and rel.suffix == ".toml" and len(rel.parts) == 2:
            continue
        names = (path, ".".join(rel.with_suffix("").parts), rel.name)
        dirs = ("/".join(rel.parts[:-1]), " / ".join(f'"{p}"' for p in rel.parts[:-1]))
        assert any(
            any(n in text for n in names) or (f'"{rel.stem}"' in text and any(d in text for d in dirs))
            for text in tests
        ), f"{page.relative_to(REPO)} shows {path}, which no test runs"


FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)


def test_guides_paste_no_code() -> None:
    """Python and TOML in the pages are included from files, never pasted: a code block in
    those languages holds one ``--8<--`` line and nothing else."""
    for page in _pages():
        for m in FENCE.finditer(page.read_text()):
            if m["lang"] in ("python", "py", "toml"):
                body = m["body"].strip()
                assert body.startswith("--8<--") and "\n" not in body, (
                    f"{page.relative_to(REPO)}: a {m['lang']} block pastes code: {body[:60]!r}"
                )


def _generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_config_reference_covers_every_field() -> None:
    """Every Struct of the schema has a section, and every field a row in it."""
    gen = _generator()
    text = gen.generate()
    schema = gen.schema_module()
    sections = dict(re.findall(r"^## [^\n]*\{#(\w+)\}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL))
    classes = gen.structs(schema)
    assert {"Config", "Server", "Route", "Cluster", "Runtime"} <= classes.keys()
    for name, cls in classes.items():
        body = sections.get(name.lower())
        assert body is not None, f"no section for {name}"
        for f in msgspec.structs.fields(cls):
            assert f"| `{f.encode_name}` |" in body, f"{name}.{f.name} is missing from the config reference"
    assert gen.MARKER in (DOCS / gen.PAGE).read_text()


def test_config_reference_shows_types_defaults_and_docs() -> None:
    text = _generator().generate()
    # an enum lists its values, a duration says seconds, a required key says so, docstrings come along
    assert '| `loop` | one of `"uvloop"`, `"asyncio"`, `"io_uring"`, `"auto"` | `"uvloop"` |' in text
    assert "| `drain_timeout` | number (seconds) | `10.0` | Seconds a stopping worker waits" in text
    assert '| `kind` | one of `"static"`, `"dns"`, `"file"`, `"etcd"`, `"admin"`, `"custom"` | **required** |' in text
    assert "## `servers.NAME.routes[].retry` {#retry}" in text
