"""``monolake run | check | version | demo-origin``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config (the error
names the key path and the reason, on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, load_config
from .errors import ConfigError


def _load(path: str) -> Config:
    return load_config(path)


def _cmd_check(args: argparse.Namespace) -> int:
    from .proxy import build_apps

    cfg = _load(args.config)
    build_apps(cfg)  # imports filters and checks every stack's requirements
    names = ", ".join(cfg.servers)
    print(f"{args.config}: ok ({len(cfg.servers)} server(s): {names}; {len(cfg.upstreams)} cluster(s))")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import msgspec

    from .proxy import build_apps
    from .runtime import run

    cfg = _load(args.config)
    if args.workers is not None or args.loop is not None:
        rt = cfg.runtime
        rt = msgspec.structs.replace(
            rt,
            workers=args.workers if args.workers is not None else rt.workers,
            loop=args.loop if args.loop is not None else rt.loop,
        )
        cfg = msgspec.structs.replace(cfg, runtime=rt)
    return run(cfg, build_apps)


def _cmd_demo_origin(args: argparse.Namespace) -> int:
    from .demo import run_origin

    host, _, port = args.listen.rpartition(":")
    run_origin(host or "127.0.0.1", int(port))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monolake", description="A thread-per-core proxy in Python.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="serve with a config file")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--workers", type=int, help="override [runtime] workers")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], help="override [runtime] loop")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("check", help="validate a config file without serving")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=lambda a: print(f"monolake {__version__}") or 0)
    p = sub.add_parser("demo-origin", help="run the small demo origin used by the quickstart")
    p.add_argument("--listen", default="127.0.0.1:9000")
    p.set_defaults(func=_cmd_demo_origin)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"monolake: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
