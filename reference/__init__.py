"""weightshare.reference: the specification, executable.

NumPy and CVXPY only, slow and obviously correct; never imports torch. Every function here has a
namesake in :mod:`weightshare` with the same arguments in the same order. The names are loaded on
first use (PEP 562), so importing one module (``weightshare.reference._args``, the argument checks
the torch package shares) loads that module only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "bit_width": "._packing",
    "clusters": "._prox",
    "code_lengths": "._coding",
    "huffman_decode": "._coding",
    "huffman_encode": "._coding",
    "isotonic": "._prox",
    "pack_bits": "._packing",
    "pava": "._prox",
    "penalty": "._penalty",
    "prox": "._prox",
    "prox_particles": "._prox",
    "prox_pava": "._prox",
    "soft_threshold": "._prox",
    "unpack_bits": "._packing",
}
_SUBMODULES = ("factorization", "hashing", "symmetry")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])

if TYPE_CHECKING:
    from . import factorization as factorization
    from . import hashing as hashing
    from . import symmetry as symmetry
    from ._coding import code_lengths as code_lengths
    from ._coding import huffman_decode as huffman_decode
    from ._coding import huffman_encode as huffman_encode
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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'weightshare.reference' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
