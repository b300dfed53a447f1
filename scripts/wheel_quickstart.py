"""The README's quickstart against an installed monolake: ``monolake init``, the demo
origin, the proxy on the written config, one curl through it.

    python -I scripts/wheel_quickstart.py PATH/TO/bin/monolake

Run by scripts/wheel-check with the clean venv's python. Ports: the origin and the
proxy listen on port 0 and print the ports they got; every process started here is
stopped by its pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

TIMEOUT = 30.0


def wait_line(stream: IO[str], pattern: str, what: str) -> re.Match[str]:
    """The first line of ``stream`` matching ``pattern``; exits 1 after TIMEOUT seconds."""
    found: list[re.Match[str]] = []
    seen: list[str] = []

    def read() -> None:
        for line in stream:
            seen.append(line)
            if m := re.search(pattern, line):
                found.append(m)
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(TIMEOUT)
    if not found:
        sys.exit(f"wheel-check: {what} did not print {pattern!r} in {TIMEOUT:g}s; it printed:\n{''.join(seen)}")
    return found[0]


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    monolake = sys.argv[1]
    import monolake as pkg  # the venv's: -I keeps the checkout off sys.path

    print(f"wheel-check: monolake imported from {pkg.__file__}")
    assert "site-packages" in pkg.__file__, pkg.__file__
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "monolake.toml"
        subprocess.run([monolake, "init", str(config)], check=True, cwd=tmp)
        procs: list[subprocess.Popen[str]] = []
        try:
            origin = subprocess.Popen(
                [monolake, "demo-origin", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, cwd=tmp
            )
            procs.append(origin)
            assert origin.stdout is not None
            origin_port = wait_line(origin.stdout, r"listening on http://127\.0\.0\.1:(\d+)", "demo origin")[1]
            # The quickstart's fixed ports (8080, 9000) may be taken here: same config, free ports.
            text = config.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{origin_port}")
            config.write_text(text.replace('"127.0.0.1:8080"', '"127.0.0.1:0"'))
            proxy = subprocess.Popen([monolake, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True, cwd=tmp)
            procs.append(proxy)
            assert proxy.stderr is not None
            port = wait_line(proxy.stderr, r"monolake ready servers=\S*127\.0\.0\.1:(\d+)", "proxy")[1]
            out = subprocess.run(
                ["curl", "-sS", "--max-time", str(TIMEOUT), f"http://127.0.0.1:{port}/hello"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            echo = json.loads(out)
            print(f"wheel-check: quickstart ok: GET /hello via :{port} -> :{origin_port}: {out.strip()[:80]}")
            assert "/hello" in json.dumps(echo), echo
        finally:
            for p in reversed(procs):
                stop(p)


if __name__ == "__main__":
    main()
