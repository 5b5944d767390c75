"""Experiments that re-test the claims of the four weight-sharing papers.

Run one with ``python -m experiments <name> [--quick | --smoke] [--seeds N] [--device cpu|cuda]
[--data-dir DIR] [--out results/]``; see ``python -m experiments --help``. Each run writes
``<out>/<name>/summary.json``, ``table.md`` and PNG figures. The default data set is
scikit-learn's bundled digits (8x8); nothing is ever downloaded.
"""

from __future__ import annotations

#: experiment name -> module (relative to this package) that defines ``CONFIGS`` and ``run``
EXPERIMENTS: dict[str, str] = {
    "shuffled-pixels": ".shuffled_pixels",
    "arbnets": ".arbnets",
    "symmetry": ".symmetry",
    "factorization": ".factorization",
    "compression": ".compression",
}
