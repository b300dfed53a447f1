"""Message stream tests: in-process servers on a loop of each kind, and the echo example's messages."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "streams"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # echo_pb2, echo_server
