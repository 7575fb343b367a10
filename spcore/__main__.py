"""``python -m spcore``: the same as the ``spcore`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
