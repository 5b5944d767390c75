"""``python -m conformance.gpu_check --out DIR [--dry-run]``: see the package docstring."""

from conformance.gpu_check import main

raise SystemExit(main())
