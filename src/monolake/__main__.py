"""``python -m monolake``: the command line (``monolake.product.cli``)."""

from .product.cli import main

raise SystemExit(main())
