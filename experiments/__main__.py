"""``python -m experiments <name> ...``: see :mod:`experiments.cli`."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
