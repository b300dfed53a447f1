"""monolake: a framework and a proxy for high-performance network services."""

__version__ = "0.1.0"

from ._examples import examples_path as examples_path
