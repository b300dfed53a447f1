"""Generated modules are named after their .proto file: a clash is refused, not served silently."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from monolake.apps.rpc.grpc import load_protos
from monolake.core.errors import ConfigError


def test_a_module_of_the_same_name_already_imported_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proto = tmp_path / "clashing_name.proto"
    proto.write_text('syntax = "proto3";\npackage clash;\nmessage M { string s = 1; }\n')
    other = types.ModuleType("clashing_name_pb2")
    other.__file__ = str(tmp_path / "elsewhere" / "clashing_name_pb2.py")
    monkeypatch.setitem(sys.modules, "clashing_name_pb2", other)
    with pytest.raises(ConfigError, match=r"clashing_name_pb2 is already the module .*elsewhere.*rename the \.proto"):
        load_protos([proto], [tmp_path])
