r"""Weight symmetry: store only the free parameters of a symmetric weight (spec page *Symmetry*).

``symmetric(module, name, kind=...)`` is the user verb; ``build``, ``free``, ``project``,
``num_free`` and ``table`` share names and argument order with ``weightshare.reference.symmetry``.
Index tables are cached per process, up to ``TABLE_CACHE_BYTES`` and ``TABLE_CACHE_ENTRIES``
(``cache_bytes``, ``clear_cache``).
"""

from ._symmetry import KINDS as KINDS
from ._symmetry import TABLE_CACHE_BYTES as TABLE_CACHE_BYTES
from ._symmetry import TABLE_CACHE_ENTRIES as TABLE_CACHE_ENTRIES
from ._symmetry import Symmetry as Symmetry
from ._symmetry import build as build
from ._symmetry import cache_bytes as cache_bytes
from ._symmetry import clear_cache as clear_cache
from ._symmetry import free as free
from ._symmetry import num_free as num_free
from ._symmetry import project as project
from ._symmetry import symmetric as symmetric
from ._symmetry import table as table

__all__ = [
    "KINDS",
    "TABLE_CACHE_BYTES",
    "TABLE_CACHE_ENTRIES",
    "Symmetry",
    "build",
    "cache_bytes",
    "clear_cache",
    "free",
    "num_free",
    "project",
    "symmetric",
    "table",
]
