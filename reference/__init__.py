"""weightshare.reference: the specification, executable.

NumPy and CVXPY only, slow and obviously correct; never imports torch. Every function here has a
namesake in :mod:`weightshare` with the same arguments in the same order.
"""

from __future__ import annotations

from . import factorization as factorization
from . import hashing as hashing
from . import symmetry as symmetry
from ._packing import bit_width as bit_width
from ._packing import pack_bits as pack_bits
from ._packing import unpack_bits as unpack_bits
from ._penalty import penalty as penalty
from ._prox import clusters as clusters
from ._prox import isotonic as isotonic
from ._prox import pava as pava
from ._prox import prox as prox
from ._prox import prox_particles as prox_particles
from ._prox import prox_pava as prox_pava
from ._prox import soft_threshold as soft_threshold

__all__ = [
    "bit_width",
    "clusters",
    "factorization",
    "hashing",
    "isotonic",
    "pack_bits",
    "pava",
    "penalty",
    "prox",
    "prox_particles",
    "prox_pava",
    "soft_threshold",
    "symmetry",
    "unpack_bits",
]
