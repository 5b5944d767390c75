"""A restricted unpickler for the CIFAR-10 python batches: data only, never code.

The batches are dicts of bytes keys holding a uint8 NumPy array, lists of ints and bytes. Such a
pickle refers to a handful of globals (NumPy's array reconstruction and, for the bytes of a
protocol-2 pickle written by Python 3, ``_codecs.encode`` with latin-1); ``find_class`` resolves
exactly those, checks their arguments, and refuses every other global, so a hostile file cannot
import a module or call a function (``os.system``, ``builtins.eval``, ...).
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "load"]

_reconstruct: Callable[..., Any] = np.ndarray((0,)).__reduce__()[0]  # type: ignore[assignment]
_frombuffer: Callable[..., Any] = np.ndarray((1,)).__reduce_ex__(5)[0]  # type: ignore[assignment]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle refers to something a data file does not hold."""


def _array_shell(cls: object, shape: object, dtype: object) -> np.ndarray:
    # numpy pickles an array as an empty (0,) shell, then fills it with __setstate__
    if cls is not np.ndarray or shape != (0,):
        raise UnsafePickleError(f"array reconstruction with {cls!r}, {shape!r} is not allowed")
    out: np.ndarray = _reconstruct(np.ndarray, (0,), dtype)
    return out


def _latin1(text: object, encoding: object = "utf-8") -> bytes:
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols 0-2
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _array_shell,
    ("numpy._core.multiarray", "_reconstruct"): _array_shell,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"it refers to {module}.{name}, which a data file does not hold "
                "(only NumPy arrays, dicts, lists, ints and bytes are allowed)"
            ) from None


def load(fh: BinaryIO | io.BytesIO) -> Any:
    """``pickle.load(fh, encoding="bytes")`` limited to NumPy arrays and plain Python data.

    Raises:
        UnsafePickleError: The pickle refers to any other global (nothing of it is called).
    """
    return _Unpickler(fh, encoding="bytes").load()
