"""``python -m pipeline ...`` is the same as the ``cardamage`` console script."""

from pipeline.cli import main

raise SystemExit(main())
