r"""The tables of a hashed weight, regenerated from their recipe (spec HASH-14, STORE-3).

A hashed layer or parametrization keeps its index table $H$ (int32, int64 only when
$K > 2^{31}$) and sign table $\xi$ (int8) as **non-persistent** buffers built once from the
recipe (hash, seed, shape, $K$, signed, hash arguments), with the table's bucket rows
(``_bucket_sum.bucket_rows``: an int32 layout below $2^{31}$ entries, and its levels) that the
bucket gradient reads off the CPU. The recipe is the module's extra state,
so ``state_dict()`` holds the $K$ values and a few hundred bytes of recipe, and loading a state
rebuilds the tables from the saved recipe. A callable hash cannot be rebuilt from its name: its
table is saved too, bit-packed at $\lceil\log_2 K\rceil$ bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._bucket_sum import Levels, bucket_rows, gather
from ._hashing import HashFn, make_table
from ._hashing import sign as _sign_table
from ._packing import bit_width, index_dtype, pack_bits, unpack_bits
from .reference._args import check_buckets, check_seed

#: The version of the recipe dict (``get_extra_state``); a newer one is refused.
RECIPE_VERSION = 1


def hash_name(hash: str | HashFn) -> str:
    """The name recorded for a hash: the string itself, or the callable's ``__name__``."""
    return hash if isinstance(hash, str) else getattr(hash, "__name__", type(hash).__name__)


class HashTables(nn.Module):
    """Base of the hashed modules: the ``index``/``sign`` buffers and their recipe."""

    index: Tensor
    sign: Tensor | None
    bucket_layout: Tensor
    bucket_levels: Levels

    def _make_tables(
        self,
        shape: tuple[int, ...],
        num_buckets: int,
        hash: str | HashFn,
        seed: int,
        signed: bool,
        device: Any,
        hash_kwargs: dict[str, Any],
    ) -> None:
        """Check ``num_buckets`` and ``seed``, then build and register the tables."""
        num_buckets, seed = check_buckets(num_buckets), check_seed(seed)
        index = make_table(shape, num_buckets, hash, seed, device, hash_kwargs)
        self.table_shape = tuple(shape)
        self.num_buckets, self.seed, self.signed = num_buckets, seed, bool(signed)
        self.hash, self.hash_kwargs = hash_name(hash), dict(hash_kwargs)
        self.hash_is_callable = callable(hash)
        self.register_buffer("index", index.to(index_dtype(num_buckets)), persistent=False)
        sign = _sign_table(shape, seed=seed, device=device) if self.signed else None
        self.register_buffer("sign", sign, persistent=False)
        layout, self.bucket_levels = bucket_rows(self.index, num_buckets)
        self.register_buffer("bucket_layout", layout, persistent=False)

    def _weight_map(self, values: Tensor) -> Tensor:
        r"""$\xi \odot w[H]$, differentiable in ``values`` by the bucket sum (HASH-10, HASH-19)."""
        return gather(values, self.index, self.sign, self.bucket_layout, self.bucket_levels)

    def recipe(self) -> dict[str, Any]:
        """The JSON-able recipe of the tables (no tensors)."""
        return {
            "shape": list(self.table_shape),
            "num_buckets": self.num_buckets,
            "hash": self.hash,
            "seed": self.seed,
            "signed": self.signed,
            "hash_kwargs": dict(self.hash_kwargs),
            "callable": self.hash_is_callable,
        }

    def packed_index(self) -> Tensor:
        """The index table bit-packed at ``bit_width(K)`` bits (stored for a callable hash)."""
        return pack_bits(self.index, bit_width(self.num_buckets))

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"version": RECIPE_VERSION, **self.recipe()}
        if self.hash_is_callable:
            state["index"] = self.packed_index().cpu()
        return state

    def set_extra_state(self, state: Any) -> None:
        self.load_recipe(state, state.get("index") if isinstance(state, dict) else None)

    @torch.no_grad()
    def load_recipe(self, recipe: Any, packed_index: Tensor | None = None) -> None:
        """Rebuild the tables from a saved recipe (and table, for a callable hash).

        Raises ``ValueError`` (nothing changed) when the recipe is malformed, newer, or for
        another shape or number of buckets.
        """
        self.install(recipe, *self.tables_from(recipe, packed_index))

    def install(self, recipe: dict[str, Any], index: Tensor, sign: Tensor | None) -> None:
        """Take checked tables (from :meth:`tables_from`) and their recipe; cannot fail."""
        self.index, self.sign = index, sign
        self.bucket_layout, self.bucket_levels = bucket_rows(index, self.num_buckets)
        self.seed, self.signed = recipe["seed"], recipe["signed"]
        self.hash, self.hash_kwargs = recipe["hash"], dict(recipe["hash_kwargs"])
        self.hash_is_callable = bool(recipe["callable"])

    def tables_from(self, recipe: Any, packed_index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The tables of a saved recipe for this module, checked; nothing is changed."""
        what = f"the hash recipe of {type(self).__name__}"
        need = ("shape", "num_buckets", "hash", "seed", "signed", "hash_kwargs", "callable")
        if not isinstance(recipe, dict) or any(k not in recipe for k in need):
            raise ValueError(f"{what} must be a dict with the keys {need}, got {recipe!r}")
        if recipe.get("version", RECIPE_VERSION) > RECIPE_VERSION:
            raise ValueError(
                f"{what} has version {recipe['version']}, newer than this weightshare's "
                f"{RECIPE_VERSION}: upgrade weightshare to load it"
            )
        shape, k = tuple(recipe["shape"]), recipe["num_buckets"]
        if shape != self.table_shape or k != self.num_buckets:
            raise ValueError(
                f"{what} is for shape {shape} with {k} buckets, this module has shape "
                f"{self.table_shape} with {self.num_buckets} buckets"
            )
        device = self.index.device
        if recipe["callable"]:
            if not isinstance(packed_index, Tensor):
                raise ValueError(f"{what} names the callable hash {recipe['hash']!r} but no table")
            index = unpack_bits(
                packed_index.to(device), bit_width(k), math.prod(shape), dtype=index_dtype(k)
            )
            bad = int((index >= k).sum())
            if bad:
                raise ValueError(f"the saved index table has {bad} entries outside [0, {k})")
            index = index.reshape(shape)
        else:
            index = make_table(
                shape, k, recipe["hash"], recipe["seed"], device, recipe["hash_kwargs"]
            ).to(index_dtype(k))
        sign = _sign_table(shape, seed=recipe["seed"], device=device) if recipe["signed"] else None
        return index, sign
