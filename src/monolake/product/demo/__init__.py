"""Demo helpers for the quickstart."""

from ._origin import run_origin as run_origin
from ._origin import serve_origin as serve_origin
