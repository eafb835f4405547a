"""``python -m pipeline ...`` is the same as the ``cardamage`` console script."""

from pipeline.cli import entry

raise SystemExit(entry())
