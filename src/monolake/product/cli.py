"""``monolake run | check | reload | upgrade | version | init | rpc | demo-origin``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config (the error
names the key path and the reason, on stderr).

``reload`` and ``upgrade`` signal a running supervisor (SIGHUP, SIGUSR2), found by
``--pid`` or by the ``[runtime] pid_file`` of ``-c FILE``; ``upgrade`` then waits
until the old supervisor has exited.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ..apps.config import Config, load_config
from ..core.errors import ConfigError
from ._examples import add_init_parser

if TYPE_CHECKING:
    from ..core.runtime import Supervisor


def is_etcd_url(text: str) -> bool:
    return text.startswith(("etcd://", "etcds://"))


def _load(path: str) -> Config:
    if is_etcd_url(path):
        from ..apps.discovery._etcd_config import load_etcd_config

        return load_etcd_config(path)
    return load_config(path)


def _cmd_check(args: argparse.Namespace) -> int:
    from ..apps.proxy import build_apps

    cfg = _load(args.config)
    build_apps(cfg)  # imports filters and checks every stack's requirements
    names = ", ".join(cfg.servers)
    print(f"{args.config}: ok ({len(cfg.servers)} server(s): {names}; {len(cfg.upstreams)} cluster(s))")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import msgspec

    from ..apps.proxy import ProxyBuilder
    from ..core.runtime import ConfigSource, run

    def adjust(cfg: Config) -> Config:
        if args.workers is None and args.loop is None:
            return cfg
        rt = cfg.runtime
        rt = msgspec.structs.replace(
            rt,
            workers=args.workers if args.workers is not None else rt.workers,
            loop=args.loop if args.loop is not None else rt.loop,
        )
        return msgspec.structs.replace(cfg, runtime=rt)

    # The command-line overrides hold for every reload too.
    if is_etcd_url(args.config):
        from ..apps.discovery._etcd_config import load_etcd_config

        def adjust_etcd(cfg: Config) -> Config:
            # No config file to be relative to: a relative pid file is in the working directory.
            cfg = adjust(cfg)
            pid_file = cfg.runtime.pid_file
            if pid_file is None or os.path.isabs(pid_file):
                return cfg
            rt = msgspec.structs.replace(cfg.runtime, pid_file=os.path.abspath(pid_file))
            return msgspec.structs.replace(cfg, runtime=rt)

        source = ConfigSource(args.config, load_etcd_config, adjust_etcd)
        ops = functools.partial(_operations, etcd_url=args.config)
        return run(source.load(), ProxyBuilder(), source=source, operations=ops)
    source = ConfigSource(os.path.abspath(args.config), load_config, adjust)
    return run(source.load(), ProxyBuilder(), source=source, operations=_operations)


@contextlib.contextmanager
def _operations(cfg: Config, supervisor: Supervisor, etcd_url: str | None = None) -> Iterator[None]:
    """Held while the proxy serves: the start-up notices, the metrics directory, the admin endpoint,
    and with a config in etcd, the watch of its key (a change reloads, as SIGHUP does)."""
    from ..apps._startup import log_compiled, log_h2_codec
    from .admin import operations

    log_compiled()
    log_h2_codec(cfg)
    with operations(cfg, supervisor) as admin:
        if etcd_url is None:
            yield
            return
        from ..apps.discovery._etcd_config import EtcdConfigWatch

        if admin is not None:
            admin.state.config_url = etcd_url
        watch = EtcdConfigWatch(etcd_url, lambda: supervisor.request_reload("etcd config key changed"))
        watch.start()
        try:
            yield
        finally:
            watch.close()


def _pid_file_of(path: str) -> str | None:
    try:
        pid_file = _load(path).runtime.pid_file
    except ConfigError:
        # The file may be mid-edit; the supervisor is still running the last good one.
        try:
            with open(path, "rb") as fh:
                value = tomllib.load(fh).get("runtime", {}).get("pid_file")
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            value = None
        pid_file = value if isinstance(value, str) else None
    if pid_file is None:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(path)), pid_file)


def _usage(message: str) -> NoReturn:
    print(f"monolake: {message}", file=sys.stderr)
    raise SystemExit(2)


def _target(args: argparse.Namespace) -> int:
    """The supervisor's pid, from --pid or the config's pid file. Exits 2 if there is none."""
    if args.pid is not None:
        return int(args.pid)
    pid_file = _pid_file_of(args.config)
    if pid_file is None:
        _usage(f"{args.config} sets no [runtime] pid_file; give --pid PID")
    try:
        with open(pid_file) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError) as exc:
        _usage(f"cannot read the pid file {pid_file}: {exc}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"  # exited, not yet reaped
    except OSError:
        return True


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        print(f"monolake: no process {pid}", file=sys.stderr)
        return False
    return True


def _cmd_reload(args: argparse.Namespace) -> int:
    pid = _target(args)
    if not _signal(pid, signal.SIGHUP):
        return 1
    print(f"monolake: asked supervisor {pid} to reload (SIGHUP); its log has the outcome")
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    pid = _target(args)
    if not _signal(pid, signal.SIGUSR2):
        return 1
    deadline = time.monotonic() + args.timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            print(
                f"monolake: supervisor {pid} still runs after {args.timeout:g}s: the upgrade failed or is "
                "still draining (see its log)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.1)  # polling another process's exit: there is nothing to wait on
    new = None
    if args.config is not None and (pid_file := _pid_file_of(args.config)) is not None:
        try:
            with open(pid_file) as fh:
                new = int(fh.read().strip())
        except (OSError, ValueError):
            new = None
    if new is not None and new != pid:
        print(f"monolake: upgraded: supervisor {pid} -> {new}")
    else:
        print(f"monolake: supervisor {pid} handed over and exited")
    return 0


def _version_of(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def version_report() -> str:
    """``monolake version``: what this install runs on, one ``name  value`` line each, and
    which native parts are active (each has a pure-Python or uvloop fallback that is slower)."""
    import platform
    import ssl

    from ..core.proto.http2 import CODEC_ENV
    from ..core.runtime import uring

    mine = _version_of("monolake") or getattr(sys.modules["monolake"], "__version__", "unknown")
    rows = [
        ("monolake", mine),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
    ]
    for dist in ("uvloop", "httptools", "h2", "msgspec"):
        rows.append((dist, _version_of(dist) or "not installed"))
    rows.append(("openssl", f"{ssl.OPENSSL_VERSION} (tls backend 'openssl')"))
    rtls = _version_of("rtls")
    rows.append(
        ("rtls", f"{rtls} (tls backend 'rustls')" if rtls else "not installed (tls backend 'rustls' unavailable)")
    )
    try:
        from ..core.proto.http2._native import NGHTTP2_VERSION  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        h2 = f"not built ({exc}): HTTP/2 uses the pure-Python h2 codec"
    else:
        h2 = f"native codec active (libnghttp2 {NGHTTP2_VERSION})"
        if os.environ.get(CODEC_ENV) == "h2":
            h2 = f"native codec built (libnghttp2 {NGHTTP2_VERSION}), not used: {CODEC_ENV}=h2"
    rows.append(("nghttp2", h2))
    try:
        from ..core.proto.http1 import _h1req  # noqa: F401
    except ImportError as exc:
        h1 = f"not built ({exc}): llhttp parses every HTTP/1 request head"
    else:
        h1 = "native request-head scan active (common heads in one pass, llhttp for the rest)"
    rows.append(("h1req", h1))
    try:
        from ..core.proto.http1 import _h1resp  # noqa: F401
    except ImportError as exc:
        h1 = f"not built ({exc}): llhttp parses every upstream response head"
    else:
        h1 = "native upstream response heads (_h1resp), llhttp for the rest"
    rows.append(("h1resp", h1))
    rows.append(("compiled", _compiled_report()))
    reason = uring.unavailable()  # probes: sets up (and closes) a small ring
    ring = f"unavailable, loop = io_uring runs uvloop: {reason}" if reason else "native loop built and usable"
    rows.append(("io_uring", f"{ring}; kernel {platform.release()}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _compiled_report() -> str:
    """The hot-path modules compiled with mypyc, or why they run as pure Python."""
    from ..core import _compiled

    if not _compiled.COMPILED:
        return f"none, the hot path runs as pure Python: {_compiled.WHY_PURE}"
    names = ", ".join(m.removeprefix("monolake.") for m in _compiled.MODULES)
    return f"{len(_compiled.MODULES)} hot-path modules (mypyc): {names}"


def _cmd_version(args: argparse.Namespace) -> int:
    print(version_report())
    return 0


class _VersionAction(argparse.Action):
    """``--version``: the same report as ``monolake version`` (computed only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print versions and native parts, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_report())
        parser.exit()


def _cmd_demo_origin(args: argparse.Namespace) -> int:
    from .demo import run_origin

    host, _, port = args.listen.rpartition(":")
    run_origin(host or "127.0.0.1", int(port))
    return 0


def _rpc_cli(idl: str) -> Any:
    """The ``_cli`` module of the RPC framework an IDL file's extension names."""
    if idl.endswith(".thrift"):
        from ..apps.rpc.thrift import _cli as thrift_cli

        return thrift_cli
    if idl.endswith(".proto"):
        import importlib

        try:  # written by the gRPC half of monolake.rpc; absent until it lands
            return importlib.import_module("monolake.apps.rpc.grpc._cli")
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("monolake.apps.rpc.grpc"):
                raise
            raise ConfigError("--idl", ".proto is not supported yet (no monolake.apps.rpc.grpc)") from None
    raise ConfigError("--idl", f"{idl!r}: expected a .thrift or .proto file")


def _cmd_rpc_new(args: argparse.Namespace) -> int:
    where = _rpc_cli(args.idl).new_project(args.name, args.idl, args.dest)
    print(f"created {where}: cd {where} && monolake run -c monolake.toml")
    return 0


def _cmd_rpc_call(args: argparse.Namespace) -> int:
    try:
        print(_rpc_cli(args.idl).call(args.address, args.idl, args.method, args.json))
    except ConfigError:
        raise
    except Exception as exc:
        print(f"monolake: rpc call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_rpc_parser(sub: Any) -> None:
    rpc = sub.add_parser("rpc", help="Thrift/gRPC: create a service project from IDL, call a method")
    rsub = rpc.add_subparsers(dest="rpc_cmd", required=True)
    p = rsub.add_parser("new", help="create a runnable project: handler stub, config, a test")
    p.add_argument("name", help="project directory and handler module name")
    p.add_argument("--idl", required=True, help="the .thrift (or .proto) file")
    p.add_argument("--dest", default=".", help="where to create the project directory")
    p.set_defaults(func=_cmd_rpc_new)
    p = rsub.add_parser("call", help="call a method with JSON arguments; prints the JSON answer")
    p.add_argument("address", help="host:port")
    p.add_argument("method", help="Service.method")
    p.add_argument("json", nargs="?", default="{}", help="arguments: a JSON object by name, or an array")
    p.add_argument("--idl", required=True, help="the .thrift (or .proto) file")
    p.set_defaults(func=_cmd_rpc_call)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monolake", description="A thread-per-core proxy in Python.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="serve with a config file")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--workers", type=int, help="override [runtime] workers")
    p.add_argument("--loop", choices=["uvloop", "asyncio", "io_uring", "auto"], help="override [runtime] loop")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("check", help="validate a config file without serving")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=_cmd_check)
    for name, func, text in (
        ("reload", _cmd_reload, "reload a running supervisor's config (SIGHUP)"),
        ("upgrade", _cmd_upgrade, "replace a running supervisor with the installed code, no downtime (SIGUSR2)"),
    ):
        p = sub.add_parser(name, help=text)
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("-c", "--config", help="its config file (for [runtime] pid_file)")
        who.add_argument("--pid", type=int, help="the supervisor's pid")
        if name == "upgrade":
            p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the old one to exit")
        p.set_defaults(func=func)
    p = sub.add_parser("version", help="print the versions of monolake, Python, its libraries and native parts")
    p.set_defaults(func=_cmd_version)
    add_init_parser(sub)
    _add_rpc_parser(sub)
    p = sub.add_parser("demo-origin", help="run the small demo origin used by the quickstart")
    p.add_argument("--listen", default="127.0.0.1:9000")
    p.set_defaults(func=_cmd_demo_origin)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for each in getattr(exc, "errors", [exc]):  # ConfigErrors: one line each
            print(f"monolake: config error: {each}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
