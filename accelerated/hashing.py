"""weightshare.hashing: ArbNets / HashedNets hash tables, balance and the weight map.

Every table function equals its namesake in :mod:`weightshare.reference.hashing` bit for bit
(spec page ``hashing``); ``hashed`` is the geotorch-style verb that shares a module's weight.
"""

from __future__ import annotations

from ._hashed_layers import Hashed as Hashed
from ._hashed_layers import hashed as hashed
from ._hashing import conv2d as conv2d
from ._hashing import dense as dense
from ._hashing import dirichlet as dirichlet
from ._hashing import entropy as entropy
from ._hashing import materialize as materialize
from ._hashing import materialize_grad as materialize_grad
from ._hashing import neighborhood as neighborhood
from ._hashing import sign as sign
from ._hashing import uniform as uniform

__all__ = [
    "Hashed",
    "conv2d",
    "dense",
    "dirichlet",
    "entropy",
    "hashed",
    "materialize",
    "materialize_grad",
    "neighborhood",
    "sign",
    "uniform",
]
