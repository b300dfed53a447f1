"""The struct codec's guard and the unframed message walk, on bytes alone: any input is decoded or
refused with an error, never read past (thriftpy2's Cython reader trusts length fields)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import thriftpy2
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift_support import write_idl

from monolake.apps.rpc.thrift._codec import StructCodec, decode_struct, encode_struct, message_end
from monolake.core.errors import RemoteProtocolError
from monolake.core.proto.thrift import ThriftProtocol, message_begin

PROTOCOLS = [ThriftProtocol.BINARY, ThriftProtocol.COMPACT]


@pytest.fixture(scope="module")
def mod(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return thriftpy2.load(str(write_idl(tmp_path_factory.mktemp("codec"))), module_name="echo_codec_thrift")


def _item_args(mod: Any) -> Any:
    item = mod.Item(id=-7, name="n" * 40, tags=["a", "bb", ""], scores={"x": 1.5, "y": -2.0})
    return mod.Echo.item_args(it=item)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_round_trip_and_message_end(mod: Any, proto: ThriftProtocol) -> None:
    args = _item_args(mod)
    body = encode_struct(args, proto)
    assert decode_struct(mod.Echo.item_args, body, proto) == args
    msg = message_begin("item", 1, 3, proto) + body
    assert message_end(msg + b"trailing", proto) == len(msg)
    for cut in range(len(msg)):  # every prefix is incomplete, not an error
        assert message_end(msg[:cut], proto) is None


def test_a_length_past_the_end_is_refused(mod: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="truncated struct"):
        decode_struct(mod.Echo.echo_args, bytes.fromhex("0b00017fffffff"), ThriftProtocol.BINARY)
    with pytest.raises(RemoteProtocolError, match="truncated struct"):
        decode_struct(mod.Echo.item_args, bytes.fromhex("0c00010f00030b7fffffff"), ThriftProtocol.BINARY)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_struct_codec_reuses_its_buffers_cleanly(mod: Any, proto: ThriftProtocol) -> None:
    """One codec for every struct of a server or client: a short struct after a long one, and a
    good one after a failed read or write, come out as fresh buffers would make them."""
    codec = StructCodec()
    big, small = _item_args(mod), mod.Echo.echo_args(msg="hi")
    for obj in (big, small, big):
        body = codec.encode(obj, proto)
        assert body == encode_struct(obj, proto)
        assert codec.decode(type(obj), body, proto) == obj
    with pytest.raises(Exception):  # noqa: B017 - thriftpy2's own error for a bad field type
        codec.encode(mod.Echo.echo_args(msg=object()), proto)
    assert codec.encode(small, proto) == encode_struct(small, proto)
    if proto is ThriftProtocol.BINARY:
        with pytest.raises(RemoteProtocolError, match="truncated struct"):
            codec.decode(mod.Echo.echo_args, bytes.fromhex("0b00017fffffff"), proto)
    assert codec.decode(mod.Echo.echo_args, encode_struct(small, proto), proto) == small


_FUZZ: list[Any] = []


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), cut=st.integers(min_value=0, max_value=200))
def test_any_bytes_decode_or_raise(tmp_path_factory: pytest.TempPathFactory, data: bytes, cut: int) -> None:
    if not _FUZZ:  # loaded once: the fixture-free form hypothesis wants
        _FUZZ.append(thriftpy2.load(str(write_idl(tmp_path_factory.mktemp("fz"))), module_name="echo_fuzz_thrift"))
    mod = _FUZZ[0]
    body = encode_struct(_item_args(mod), ThriftProtocol.BINARY)
    for raw in (data, body[:cut] + data):
        with contextlib.suppress(Exception):  # thriftpy2's own errors for bad types: fine, no over-read
            decode_struct(mod.Echo.item_args, raw, ThriftProtocol.BINARY)
        for proto in PROTOCOLS:
            try:
                end = message_end(raw, proto)
            except RemoteProtocolError:
                continue
            assert end is None or 0 < end <= len(raw)
