r"""Weight symmetry: store only the free parameters of a symmetric weight (spec page *Symmetry*).

``symmetric(module, name, kind=...)`` is the user verb; ``build``, ``free``, ``project``,
``num_free`` and ``table`` share names and argument order with ``weightshare.reference.symmetry``.
"""

from ._symmetry import KINDS as KINDS
from ._symmetry import Symmetry as Symmetry
from ._symmetry import build as build
from ._symmetry import free as free
from ._symmetry import num_free as num_free
from ._symmetry import project as project
from ._symmetry import symmetric as symmetric
from ._symmetry import table as table

__all__ = ["KINDS", "Symmetry", "build", "free", "num_free", "project", "symmetric", "table"]
