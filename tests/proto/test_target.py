"""proto._target: path normalisation (RFC 3986 §6.2.2, §5.2.4) and absolute-form targets, bytes only."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolake.errors import RemoteProtocolError
from monolake.proto._target import normalize_path, split_absolute


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/big", b"/big"),
        (b"//big", b"/big"),
        (b"/x/../big", b"/big"),
        (b"/./big", b"/big"),
        (b"/%62ig", b"/big"),
        (b"/%2e/big", b"/big"),
        (b"/%2E/big", b"/big"),
        (b"/q/%2e%2E/big", b"/big"),
        (b"/a/b/..", b"/a/"),
        (b"/a/.", b"/a/"),
        (b"/a/..", b"/"),
        (b"/.", b"/"),
        (b"//", b"/"),
        (b"/a//b//", b"/a/b/"),
        (b"/a/b/../../c", b"/c"),
        (b"/.well-known/x", b"/.well-known/x"),
        (b"/a..b/..c/c..", b"/a..b/..c/c.."),
        (b"/%7e%41%5f%2D", b"/~A_-"),
        # Reserved and other escapes stay encoded, with uppercase hex: %2F is one segment.
        (b"/a%2fb", b"/a%2Fb"),
        (b"/a%2Fb/../c", b"/c"),
        (b"/x%20y%c3%a9", b"/x%20y%C3%A9"),
        (b"/%25", b"/%25"),
        (b"/%2541", b"/%2541"),
        (b"/a\\..\\b", b"/a\\..\\b"),  # backslashes are data
    ],
)
def test_normalize(path: bytes, expected: bytes) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(
    "path", [b"/..", b"/../x", b"/demo/../../etc/passwd", b"/%2e%2e/x", b"/a/%2E%2E/%2e%2e", b"//../x"]
)
def test_climbing_above_the_root_is_400(path: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="above the root") as info:
        normalize_path(path)
    assert info.value.status_hint == 400


@pytest.mark.parametrize("path", [b"/%", b"/%4", b"/%zz", b"/a%g1", b"/%%41"])
def test_malformed_escape_is_400(path: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="percent-escape") as info:
        normalize_path(path)
    assert info.value.status_hint == 400


def test_each_setting_alone() -> None:
    assert normalize_path(b"//a/../%62", decode=False, dots=False) == b"/a/../%62"
    assert normalize_path(b"//a/../%62", merge_slashes=False) == b"//b"  # RFC 3986: "" is a segment
    assert normalize_path(b"//a/../%62", decode=False, dots=False, merge_slashes=False) == b"//a/../%62"


@pytest.mark.parametrize(
    ("target", "authority", "rest"),
    [
        (b"http://127.0.0.1:9000/hello", b"127.0.0.1:9000", b"/hello"),
        (b"http://example.com", b"example.com", b"/"),
        (b"HTTP://Example.com?x=1", b"Example.com", b"/?x=1"),
        (b"https://[::1]:8443/a/b?c=d/e", b"[::1]:8443", b"/a/b?c=d/e"),
        (b"http://h:/p", b"h:", b"/p"),
    ],
)
def test_absolute_form(target: bytes, authority: bytes, rest: bytes) -> None:
    assert split_absolute(target) == (authority, rest)


@pytest.mark.parametrize(
    "target",
    [b"ftp://h/x", b"h/x", b"*", b"http:/h/x", b"http:///x", b"http://user@h/x", b"http://h:x/", b"http://[::1/"],
)
def test_bad_absolute_form_is_400(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        split_absolute(target)
    assert info.value.status_hint == 400


# -- properties ----------------------------------------------------------------------

# Paths made of the pieces that matter (slashes, dots, escapes of dots, slashes and
# letters, malformed escapes) and some plain text, so most examples hit a rule.
_PIECES = st.sampled_from(
    [b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%2F", b"%41", b"%7e", b"%", b"%g", b"a", b"bc", b"~", b"%25", b"?"]
)
paths = st.lists(_PIECES, max_size=14).map(lambda parts: b"/" + b"".join(parts))
flags = st.booleans()


@settings(max_examples=600, deadline=None)
@given(paths, flags, flags, flags)
def test_normalize_is_idempotent_or_an_error(path: bytes, decode: bool, dots: bool, merge: bool) -> None:
    try:
        once = normalize_path(path, decode=decode, dots=dots, merge_slashes=merge)
    except RemoteProtocolError as exc:
        assert exc.status_hint == 400
        return
    assert once.startswith(b"/")
    assert normalize_path(once, decode=decode, dots=dots, merge_slashes=merge) == once
    if dots:
        assert b"/./" not in once and b"/../" not in once
        assert not once.endswith((b"/.", b"/.."))
    if dots and decode:
        assert b"%2E" not in once.upper()  # an escaped dot is decoded, then removed
    if merge:
        assert b"//" not in once


def _load_fuzz_target() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_target.py"
    spec = importlib.util.spec_from_file_location("fuzz_target", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz_target()
_PIECES_ABS = st.sampled_from([b"h", b"[::1]", b":", b"80", b"@", b"/", b"?", b"#", b"%2e", b".."])


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 15),
    st.one_of(
        st.binary(max_size=40),
        st.lists(_PIECES, max_size=14).map(b"".join),
        st.lists(_PIECES_ABS, max_size=10).map(b"".join),
    ),
)
def test_fuzz_rule_accepted_or_400(mode: int, body: bytes) -> None:
    """fuzz/fuzz_target.py's rule: accepted (and well-formed) or a 400, never anything else."""
    fuzz.check(bytes([mode]) + body)
