"""weightshare: weight sharing for neural networks, in PyTorch.

The top-level names are loaded on first use (PEP 562), so ``import weightshare.reference`` (NumPy
and CVXPY only) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "penalty": "._api",
    "prox": "._api",
    "prox_": "._api",
    "prox_many": "._api",
    "clusters": "._api",
    "soft_threshold": "._api",
    "attach": "._attach",
    "Attachment": "._attach",
    "tie": "._tie",
    "untie": "._tie",
    "num_distinct": "._tie",
    "zero_fraction": "._tie",
    "hashed": "._hashed_layers",
    "symmetric": "._symmetry",
    "factorize": "._factorization",
    "collapse": "._factorization",
    "compress": "._compress",
    "save": "._serialize",
    "load": "._serialize",
    "storage": "._storage",
    "Storage": "._storage",
    "bit_width": "._packing",
    "pack_bits": "._packing",
    "unpack_bits": "._packing",
    "huffman_encode": "._coding",
    "huffman_decode": "._coding",
}
_SUBMODULES = ("factorization", "hashing", "nn", "reference", "symmetry")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])

if TYPE_CHECKING:
    from . import factorization as factorization
    from . import hashing as hashing
    from . import nn as nn
    from . import reference as reference
    from . import symmetry as symmetry
    from ._api import clusters as clusters
    from ._api import penalty as penalty
    from ._api import prox as prox
    from ._api import prox_ as prox_
    from ._api import prox_many as prox_many
    from ._api import soft_threshold as soft_threshold
    from ._attach import Attachment as Attachment
    from ._attach import attach as attach
    from ._coding import huffman_decode as huffman_decode
    from ._coding import huffman_encode as huffman_encode
    from ._compress import compress as compress
    from ._factorization import collapse as collapse
    from ._factorization import factorize as factorize
    from ._hashed_layers import hashed as hashed
    from ._packing import bit_width as bit_width
    from ._packing import pack_bits as pack_bits
    from ._packing import unpack_bits as unpack_bits
    from ._serialize import load as load
    from ._serialize import save as save
    from ._storage import Storage as Storage
    from ._storage import storage as storage
    from ._symmetry import symmetric as symmetric
    from ._tie import num_distinct as num_distinct
    from ._tie import tie as tie
    from ._tie import untie as untie
    from ._tie import zero_fraction as zero_fraction


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'weightshare' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
