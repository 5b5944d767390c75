r"""Deep weight factorization (DWF): ``w = u_1 ⊙ … ⊙ u_D`` (spec page *Factorization (DWF)*).

``factorize(module, name, depth=D)`` and ``collapse(module, name, threshold=t)`` are the user
verbs. ``product``, ``equivalent_penalty``, ``factor_penalty``, ``weight_decay_for``, ``init`` and
``compression_ratio`` share names and argument order with ``weightshare.reference.factorization``;
``collapse`` differs on purpose: here it takes a module, there a sequence of factor arrays.
"""

from ._factorization import INITS as INITS
from ._factorization import Factorization as Factorization
from ._factorization import collapse as collapse
from ._factorization import compression_ratio as compression_ratio
from ._factorization import default_std as default_std
from ._factorization import equivalent_penalty as equivalent_penalty
from ._factorization import factor_penalty as factor_penalty
from ._factorization import factorize as factorize
from ._factorization import factors as factors
from ._factorization import init as init
from ._factorization import product as product
from ._factorization import weight_decay_for as weight_decay_for

__all__ = [
    "INITS",
    "Factorization",
    "collapse",
    "compression_ratio",
    "default_std",
    "equivalent_penalty",
    "factor_penalty",
    "factorize",
    "factors",
    "init",
    "product",
    "weight_decay_for",
]
