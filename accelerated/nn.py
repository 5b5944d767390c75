"""weightshare.nn: layers whose weights are shared by construction.

``HashedLinear`` and ``HashedConv2d`` (spec page ``hashing``) store only their bucket values.
"""

from __future__ import annotations

from ._hashed_layers import HashedConv2d as HashedConv2d
from ._hashed_layers import HashedLinear as HashedLinear

__all__ = ["HashedConv2d", "HashedLinear"]
