"""``.proto`` files to message classes and method tables, at load time.

``load_protos`` runs protoc (from grpcio-tools, the ``rpc`` extra) once per set of
files into a cache directory keyed by the files' contents, imports the generated
``*_pb2`` modules (their messages live in protobuf's default pool, so a handler can
import the same modules) and lists every service's methods. Already imported
``*_pb2`` modules can be given instead of paths (no protoc then).

A changed ``.proto`` needs a new process (``monolake upgrade`` or a restart): the
default pool refuses a second, different file of one name, as grpcio's does.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from ....core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """One RPC method: its ``/package.Service/Method`` path, message classes and kind."""

    path: str
    service: str
    name: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


class Protos:
    """The services of a set of ``.proto`` files (see the module docstring)."""

    def __init__(self, files: Iterable[FileDescriptor], modules: Sequence[ModuleType] = ()) -> None:
        self.files = list(files)
        self.modules = list(modules)
        self.services: dict[str, ServiceDescriptor] = {}
        self.methods: dict[str, MethodInfo] = {}
        for fd in self.files:
            for svc in fd.services_by_name.values():
                self.add_service(svc)

    def add_service(self, svc: ServiceDescriptor) -> None:
        self.services[svc.full_name] = svc
        for m in svc.methods:
            path = f"/{svc.full_name}/{m.name}"
            self.methods[path] = MethodInfo(
                path,
                svc.full_name,
                m.name,
                message_factory.GetMessageClass(m.input_type),
                message_factory.GetMessageClass(m.output_type),
                bool(m.client_streaming),
                bool(m.server_streaming),
            )

    def module(self, name: str) -> ModuleType:
        """The generated module of a loaded file, by file name ("helloworld.proto") or module name."""
        for mod in self.modules:
            if mod.__name__ == name or mod.DESCRIPTOR.name == name:
                return mod
        raise KeyError(name)

    def message(self, full_name: str) -> type[Message]:
        """A message class by full name ("helloworld.HelloRequest")."""
        for fd in self.files:
            pool = fd.pool
            try:
                return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
            except KeyError:
                continue
        raise KeyError(full_name)

    def method(self, name: str) -> MethodInfo:
        """A method by "Service.Method", "package.Service.Method" or "/package.Service/Method"."""
        if name in self.methods:
            return self.methods[name]
        svc, _, meth = name.strip("/").replace("/", ".").rpartition(".")
        for info in self.methods.values():
            if info.name == meth and (info.service == svc or info.service.rpartition(".")[2] == svc):
                return info
        raise KeyError(name)


def cache_root() -> Path:
    """Where compiled ``.proto`` files are kept: $MONOLAKE_CACHE_DIR/grpc, else the user's cache."""
    own = os.environ.get("MONOLAKE_CACHE_DIR")
    if own:
        return Path(own) / "grpc"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monolake" / "grpc"


def _well_known_include() -> str:
    return str(Path(importlib.import_module("grpc_tools").__file__ or "").parent / "_proto")


def _relative(proto: Path, paths: Sequence[Path]) -> tuple[Path, str]:
    """(import path, name relative to it) of a .proto file: the first import path holding it."""
    full = proto.resolve()
    for p in paths:
        try:
            return p, full.relative_to(p.resolve()).as_posix()
        except ValueError:
            continue
    return full.parent, full.name


def compile_protos(
    protos: Sequence[str | os.PathLike[str]], import_paths: Sequence[str | os.PathLike[str]] = (), where: str = "protos"
) -> tuple[Path, list[str]]:
    """Run protoc over ``protos`` into the cache (once per content): (directory, module names).
    Raises ConfigError naming ``where``."""
    try:
        protoc: Any = importlib.import_module("grpc_tools.protoc")
    except ImportError:
        raise ConfigError(where, "compiling .proto files needs grpcio-tools: pip install 'monolake[rpc]'") from None
    paths = [Path(p) for p in import_paths]
    names: list[str] = []
    includes: list[Path] = []
    h = hashlib.sha256()
    for proto in protos:
        p = Path(proto)
        if not p.is_file():
            raise ConfigError(where, f"{str(proto)!r}: no such file")
        inc, rel = _relative(p, paths)
        names.append(rel)
        if inc not in includes:
            includes.append(inc)
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    for inc in paths:
        if inc not in includes:
            includes.append(inc)
    import google.protobuf

    h.update(google.protobuf.__version__.encode())
    for inc in includes:
        h.update(str(inc.resolve()).encode() + b"\0")
    out = cache_root() / h.hexdigest()[:24]
    if not (out / ".done").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
        args = ["protoc", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        args += [f"-I{inc}" for inc in includes] + [f"-I{_well_known_include()}"] + names
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = protoc.main(args)
        if rc != 0:
            raise ConfigError(where, f"protoc failed: {err.getvalue().strip() or f'exit {rc}'}")
        (tmp / ".done").write_text("")
        try:
            os.rename(tmp, out)  # another worker may have won the race: its copy is the same
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out, [n[: -len(".proto")].replace("/", ".") + "_pb2" for n in names]


def load_protos(
    protos: Sequence[str | os.PathLike[str] | ModuleType],
    import_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    where: str = "protos",
) -> Protos:
    """A ``Protos`` of ``.proto`` files (compiled once, see the module docstring) and/or
    generated ``*_pb2`` modules. Raises ConfigError naming ``where``."""
    modules: list[ModuleType] = [p for p in protos if isinstance(p, ModuleType)]
    files = [p for p in protos if not isinstance(p, ModuleType)]
    if files:
        out, names = compile_protos(files, import_paths, where)
        if str(out) not in sys.path:
            sys.path.append(str(out))
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                raise ConfigError(where, f"cannot import the code protoc made for {name}: {exc}") from None
            found = getattr(module, "__file__", None)
            if found is None or not Path(found).resolve().is_relative_to(Path(out).resolve()):
                # Generated modules (and protobuf's descriptor pool) are named after the .proto file:
                # another ``NAME_pb2`` imported first, or earlier on sys.path, would be used silently.
                raise ConfigError(
                    where, f"{name} is already the module {found}: rename the .proto (one name per process)"
                )
            modules.append(module)
    return Protos([m.DESCRIPTOR for m in modules], modules)


# -- built-in services: their descriptors, in a pool of their own ------------------------------

_HEALTH = """
name: "grpc/health/v1/health.proto" package: "grpc.health.v1" syntax: "proto3"
message_type { name: "HealthCheckRequest" field { name: "service" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING } }
message_type {
  name: "HealthCheckResponse"
  field { name: "status" number: 1 label: LABEL_OPTIONAL type: TYPE_ENUM
          type_name: ".grpc.health.v1.HealthCheckResponse.ServingStatus" }
  enum_type { name: "ServingStatus" value { name: "UNKNOWN" number: 0 } value { name: "SERVING" number: 1 }
              value { name: "NOT_SERVING" number: 2 } value { name: "SERVICE_UNKNOWN" number: 3 } }
}
service {
  name: "Health"
  method { name: "Check" input_type: ".grpc.health.v1.HealthCheckRequest"
           output_type: ".grpc.health.v1.HealthCheckResponse" }
  method { name: "Watch" input_type: ".grpc.health.v1.HealthCheckRequest"
           output_type: ".grpc.health.v1.HealthCheckResponse" server_streaming: true }
}
"""

_REFLECTION = """
name: "grpc/reflection/{v}/reflection.proto" package: "grpc.reflection.{v}" syntax: "proto3"
message_type {
  name: "ServerReflectionRequest"
  field { name: "host" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "file_by_filename" number: 3 label: LABEL_OPTIONAL type: TYPE_STRING oneof_index: 0 }
  field { name: "file_containing_symbol" number: 4 label: LABEL_OPTIONAL type: TYPE_STRING oneof_index: 0 }
  field { name: "file_containing_extension" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.ExtensionRequest" oneof_index: 0 }
  field { name: "all_extension_numbers_of_type" number: 6 label: LABEL_OPTIONAL type: TYPE_STRING oneof_index: 0 }
  field { name: "list_services" number: 7 label: LABEL_OPTIONAL type: TYPE_STRING oneof_index: 0 }
  oneof_decl { name: "message_request" }
}
message_type {
  name: "ExtensionRequest"
  field { name: "containing_type" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "extension_number" number: 2 label: LABEL_OPTIONAL type: TYPE_INT32 }
}
message_type {
  name: "ServerReflectionResponse"
  field { name: "valid_host" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "original_request" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.ServerReflectionRequest" }
  field { name: "file_descriptor_response" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.FileDescriptorResponse" oneof_index: 0 }
  field { name: "all_extension_numbers_response" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.ExtensionNumberResponse" oneof_index: 0 }
  field { name: "list_services_response" number: 6 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.ListServiceResponse" oneof_index: 0 }
  field { name: "error_response" number: 7 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.ErrorResponse" oneof_index: 0 }
  oneof_decl { name: "message_response" }
}
message_type { name: "FileDescriptorResponse"
  field { name: "file_descriptor_proto" number: 1 label: LABEL_REPEATED type: TYPE_BYTES } }
message_type {
  name: "ExtensionNumberResponse"
  field { name: "base_type_name" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "extension_number" number: 2 label: LABEL_REPEATED type: TYPE_INT32 }
}
message_type { name: "ListServiceResponse"
  field { name: "service" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".grpc.reflection.{v}.ServiceResponse" } }
message_type { name: "ServiceResponse" field { name: "name" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING } }
message_type {
  name: "ErrorResponse"
  field { name: "error_code" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "error_message" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
}
service {
  name: "ServerReflection"
  method { name: "ServerReflectionInfo" input_type: ".grpc.reflection.{v}.ServerReflectionRequest"
           output_type: ".grpc.reflection.{v}.ServerReflectionResponse" client_streaming: true server_streaming: true }
}
"""

_builtin: Protos | None = None


def builtin_protos() -> Protos:
    """The health (grpc.health.v1) and reflection (v1, v1alpha) services, in a private pool
    (so they never clash with grpcio's own modules of the same files in the default one)."""
    global _builtin
    if _builtin is None:
        pool = descriptor_pool.DescriptorPool()
        files: list[Any] = []
        for text in (_HEALTH, _REFLECTION.replace("{v}", "v1"), _REFLECTION.replace("{v}", "v1alpha")):
            fdp = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
            pool.Add(fdp)
            files.append(pool.FindFileByName(fdp.name))
        _builtin = Protos(files)
    return _builtin
