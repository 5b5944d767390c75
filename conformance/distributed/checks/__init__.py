"""Every DTensor / FSDP2 check, registered on import in the same order on every rank.

``placements``: the API on every layout, local and gathered (DIST-1..3); ``sort_path``: the
distributed path for split vectors (DIST-4); ``errors``: bad inputs (DIST-8); ``training``: FSDP2
and TP training against unsharded twins (``twins``), state dicts and ties (DIST-5..7).
"""

from __future__ import annotations

from conformance.distributed.checks import errors, placements, sort_path, training
from conformance.distributed.registry import CHECKS

__all__ = ["CHECKS", "errors", "placements", "sort_path", "training"]
