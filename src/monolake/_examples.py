"""The example configs, in a wheel and in a checkout, and ``monolake init``.

``examples/`` at the repository root is the source; a wheel carries a copy as
``monolake/examples/`` (setup.py's build step copies it). An editable install or a
checkout on ``PYTHONPATH`` has no copy inside the package, so the root one is used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

_PACKAGE = Path(__file__).resolve().parent

STARTER = "quickstart.toml"
"""The example ``monolake init`` writes."""


def examples_path() -> Path:
    """The directory holding ``quickstart.toml`` and the other examples.

    Raises ``FileNotFoundError`` when neither the packaged copy nor a checkout's
    ``examples/`` exists (a broken install).
    """
    for candidate in (_PACKAGE / "examples", _PACKAGE.parent.parent / "examples"):
        if (candidate / STARTER).is_file():
            return candidate
    raise FileNotFoundError(f"no examples directory next to {_PACKAGE} (a broken install?)")


def starter_config() -> str:
    """The text ``monolake init`` writes: the quickstart with a header saying what to do next."""
    body = (examples_path() / STARTER).read_text()
    header = (
        "# A starter monolake config, written by `monolake init`.\n"
        "# Check it with `monolake check -c FILE` and serve it with `monolake run -c FILE`.\n"
        "# Every key: README.md's Configuration section; more examples: the `examples/`\n"
        f"# directory installed with monolake ({examples_path()}).\n#\n"
    )
    return header + body


def cmd_init(args: argparse.Namespace) -> int:
    """``monolake init [PATH] [--force]``: 0 written, 1 an I/O error, 2 refused (exists)."""
    path = Path(args.path)
    text = starter_config()
    try:
        # O_EXCL: refusing to overwrite is decided by the kernel, not by a check that can race.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        print(f"monolake: {path} exists; use --force to overwrite it", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"monolake: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    print(f"monolake: wrote {path}; start the demo origin with `monolake demo-origin`, then `monolake run -c {path}`")
    return 0


def add_init_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="write a starter config (the quickstart) to PATH")
    p.add_argument("path", nargs="?", default="monolake.toml", help="where to write it (default: ./monolake.toml)")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.set_defaults(func=cmd_init)
