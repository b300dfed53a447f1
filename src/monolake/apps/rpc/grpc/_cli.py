"""What ``monolake rpc new`` and ``monolake rpc call`` do for ``.proto`` files.

``new_project`` writes a runnable project: the ``.proto``, a servicer module with a stub
for every method of every service (each answers an empty reply until filled in), a
``monolake.toml`` serving it (``[servers.NAME.rpc_grpc]``) and a pytest file that calls
it in-process. ``call`` makes one call with JSON arguments (protobuf's JSON mapping)
and returns the JSON answer.
"""

from __future__ import annotations

import asyncio
import json
import keyword
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ._protos import MethodInfo, Protos, load_protos


def _pyname(name: str) -> str:
    out = re.sub(r"\W", "_", name).strip("_").lower() or "service"
    if out[0].isdigit() or keyword.iskeyword(out):
        out = "svc_" + out
    return out


def _msg_expr(desc: Any, proto_name: str, package: str) -> str:
    """Python that names ``desc``'s class in the generated servicer module."""
    if desc.file.name == proto_name:
        rel = desc.full_name[len(package) + 1 :] if package else desc.full_name
        return f"pb.{rel}"
    return f'PROTOS.message("{desc.full_name}")'


def _stub(info: MethodInfo, proto_name: str, package: str) -> str:
    req = _msg_expr(info.request.DESCRIPTOR, proto_name, package)
    resp = _msg_expr(info.response.DESCRIPTOR, proto_name, package)
    arg = "requests: AsyncIterator[Any]" if info.client_streaming else "request: Any"
    lines = []
    if info.server_streaming:
        lines.append(f"    async def {info.name}(self, {arg}, context: ServicerContext) -> AsyncIterator[Any]:")
        lines.append(f'        """{info.path}: yield {resp} replies (takes {req})."""')
        if info.client_streaming:
            lines.append("        async for _request in requests:")
            lines.append(f"            yield {resp}()  # TODO: answer each request")
        else:
            lines.append(f"        yield {resp}()  # TODO: your replies")
    else:
        lines.append(f"    async def {info.name}(self, {arg}, context: ServicerContext) -> Any:")
        lines.append(f'        """{info.path}: return a {resp} (takes {req})."""')
        if info.client_streaming:
            lines.append("        async for _request in requests:")
            lines.append("            pass  # TODO: read the requests")
        lines.append(f"        return {resp}()  # TODO: your reply")
    return "\n".join(lines)


def new_project(name: str, idl: str | Path, dest: str | Path) -> Path:
    """Create ``dest/NAME``: a runnable gRPC service for ``idl`` (see the module docstring).
    Returns the project's directory. Raises FileExistsError, ConfigError (a bad .proto)."""
    idl = Path(idl)
    root = Path(dest) / name
    if root.exists():
        raise FileExistsError(f"{root} exists")
    protos = load_protos([idl], [idl.parent])
    if not protos.services:
        raise ValueError(f"{idl} defines no service")
    root.mkdir(parents=True)
    shutil.copy(idl, root / idl.name)
    py = _pyname(name)
    module = f"{py}_service"
    fd = protos.files[0]
    package = fd.package
    classes: list[str] = []
    mapping: list[str] = []
    for full, svc in protos.services.items():
        cls = svc.name
        stubs = [_stub(protos.methods[f"/{full}/{m.name}"], fd.name, package) for m in svc.methods]
        classes.append(f'class {cls}:\n    """{full}: one method per RPC."""\n\n' + "\n\n".join(stubs))
        mapping.append(f'    "{full}": {cls},')
    (root / f"{module}.py").write_text(
        f'"""The {name} service: servicers for {idl.name} (monolake rpc new).\n\n'
        f"    monolake run -c monolake.toml\n"
        f'"""\n\n'
        "from __future__ import annotations\n\n"
        "from collections.abc import AsyncIterator\n"
        "from pathlib import Path\n"
        "from typing import Any\n\n"
        "from monolake.apps.rpc.grpc import ServicerContext, load_protos\n\n"
        f'PROTOS = load_protos([Path(__file__).with_name("{idl.name}")], [Path(__file__).parent])\n'
        f'pb = PROTOS.module("{idl.name}")\n\n\n' + "\n\n\n".join(classes) + "\n\n\n"
        "SERVICERS = {\n" + "\n".join(mapping) + "\n}\n"
        '"""Service name -> servicer class (one instance per worker): what monolake.toml serves."""\n'
    )
    (root / "monolake.toml").write_text(
        f"# monolake run -c monolake.toml\n\n[runtime]\nworkers = 1\n\n[servers.{py}]\n"
        f'listener = "127.0.0.1:50051"\n\n[servers.{py}.rpc_grpc]\n'
        f'protos = ["{idl.name}"]\nhandler = "{module}:SERVICERS"\nlog_calls = true\n'
    )
    first = _first_method(protos)
    call = _test_call(first, fd.name, package)
    (root / f"test_{py}.py").write_text(
        f'"""Calls the {name} service in-process: python -m pytest test_{py}.py"""\n\n'
        "from __future__ import annotations\n\n"
        "import asyncio\nimport sys\nfrom pathlib import Path\n\n"
        "sys.path.insert(0, str(Path(__file__).parent))\n\n"
        "from monolake.apps.rpc.grpc import GrpcClient, GrpcServer, serve_local  # noqa: E402\n"
        f"from {module} import PROTOS, SERVICERS, pb  # noqa: E402, F401\n\n\n"
        f"def test_{first.name.lower()}() -> None:\n"
        "    async def main() -> None:\n"
        "        async with serve_local(GrpcServer(PROTOS, SERVICERS)) as address:\n"
        "            client = GrpcClient(PROTOS, [address], timeout=10)\n"
        "            try:\n"
        f"{call}"
        "            finally:\n"
        "                client.close()\n\n"
        "    asyncio.run(main())\n"
    )
    return root


def _first_method(protos: Protos) -> MethodInfo:
    infos = list(protos.methods.values())
    for info in infos:
        if not info.client_streaming and not info.server_streaming:
            return info
    return infos[0]


def _test_call(info: MethodInfo, proto_name: str, package: str) -> str:
    req = _msg_expr(info.request.DESCRIPTOR, proto_name, package)
    resp = _msg_expr(info.response.DESCRIPTOR, proto_name, package)
    name = f"{info.service}.{info.name}"
    pad = " " * 16
    if info.server_streaming:
        source = f"[{req}()]" if info.client_streaming else f"{req}()"
        kind = "bidi" if info.client_streaming else "server_stream"
        return (
            f'{pad}replies = [r async for r in client.{kind}("{name}", {source})]\n'
            f"{pad}assert all(isinstance(r, {resp}) for r in replies)\n"
        )
    if info.client_streaming:
        return f'{pad}reply = await client.client_stream("{name}", [{req}()])\n{pad}assert isinstance(reply, {resp})\n'
    return f'{pad}reply = await client.unary("{name}", {req}())\n{pad}assert isinstance(reply, {resp})\n'


def call(
    address: str,
    idl: str | Path,
    method: str,
    json_args: str,
    *,
    timeout: float = 30.0,
    metadata: Sequence[tuple[str, str]] = (),
    import_paths: Sequence[str | Path] = (),
) -> str:
    """Call ``method`` ("Service.Method" or "package.Service.Method") on ``address`` with the
    request in JSON; the reply in JSON. A client-streaming call takes a JSON array of requests;
    a server-streaming one answers a JSON array. Raises RpcError, ValueError (bad JSON, no such
    method), ConfigError (a .proto protoc refuses)."""
    idl = Path(idl)
    paths = [Path(p) for p in import_paths] or [idl.parent]
    protos = load_protos([idl], paths)
    try:
        info = protos.method(method)
    except KeyError:
        known = ", ".join(f"{i.service}.{i.name}" for i in protos.methods.values())
        raise ValueError(f"{idl} has no method {method!r} (it has: {known})") from None

    def parse(value: Any) -> Any:
        return json_format.ParseDict(value, info.request())

    data = json.loads(json_args or "{}")
    if info.client_streaming:
        request: Any = [parse(v) for v in (data if isinstance(data, list) else [data])]
    else:
        request = parse(data)

    async def run() -> Any:
        from ._client import GrpcClient

        client = GrpcClient(protos, [address], timeout=timeout, attempts=1)
        try:
            reply = await client.call(method, request, metadata=list(metadata))
            if reply.messages is not None:
                return [json_format.MessageToDict(m) async for m in reply.messages]
            return json_format.MessageToDict(reply.message)
        finally:
            client.close()

    return json.dumps(asyncio.run(run()), indent=2)
