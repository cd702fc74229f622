"""Reference datasets (digits, Fashion-MNIST, synthetic) and a seeded image augmentation.

Every loader returns a ``TensorDataset`` of float32 inputs and int64 targets and is a pure
function of its arguments: the same ``(split, n, seed)`` gives the same tensors. Nothing is
downloaded: digits ships with scikit-learn, Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` (or any folder holding the four IDX files), synthetic is generated.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from gradvar._utils import check_positive
from gradvar.errors import DataNotFoundError, InvalidArgumentError
from gradvar.zoo.specs import is_callable_spec, resolve_callable

__all__ = [
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_DEFAULT_DIR",
    "digits",
    "fashion_mnist",
    "synthetic",
    "DATASETS",
    "load_dataset",
    "augment",
]

FASHION_MNIST_ENV = "GRADVAR_FASHION_MNIST"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DIGITS_SPLIT_SEED = 0  # fixed, so train and test stay disjoint whatever ``seed`` is
_DIGITS_TRAIN = 1500
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise InvalidArgumentError(f"split must be 'train' or 'test', got split={split!r}")


def _subsample(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int) -> TensorDataset:
    """Keep a seeded random subset of ``n`` examples (in their original order)."""
    if n is not None:
        check_positive("n", n)
        if n > len(y):
            raise InvalidArgumentError(f"n={n} exceeds the {len(y)} examples of this split")
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        keep = keep.sort().values
        x, y = x[keep], y[keep]
    return TensorDataset(x.contiguous(), y.contiguous())


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def digits(split: str = "train", n: int | None = None, seed: int = 0) -> TensorDataset:
    """scikit-learn's 8x8 digits scaled to [0, 1]: x [N, 1, 8, 8], 10 classes, 1500/297 split."""
    _check_split(split)
    images, target = _digits_arrays()
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(target))
    rows = order[:_DIGITS_TRAIN] if split == "train" else order[_DIGITS_TRAIN:]
    x = torch.from_numpy(images[rows] / 16.0).float().unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.from_numpy(target[rows]).long()
    return _subsample(x, y, n, seed)


def _fashion_dir() -> Path:
    configured = os.environ.get(FASHION_MNIST_ENV)
    return Path(configured) if configured else FASHION_MNIST_DEFAULT_DIR


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    source = f"${FASHION_MNIST_ENV}={folder}" if os.environ.get(FASHION_MNIST_ENV) else str(folder)
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in {source}. Install the Debian package "
        f"('apt-get install dataset-fashion-mnist', which puts the IDX files in "
        f"{FASHION_MNIST_DEFAULT_DIR}) or set {FASHION_MNIST_ENV} to a folder holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz."
    )


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, mtime_ns: int) -> np.ndarray:
    """Decode one IDX file (optionally gzipped); cached per (path, modification time)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataNotFoundError(f"cannot read IDX file {path!r}: {exc}; re-install it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataNotFoundError(f"{path!r} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise DataNotFoundError(
            f"IDX file {path!r} declares shape {shape} ({expected} bytes) but holds {len(body)} "
            "bytes: it is truncated or corrupt; re-install it"
        )
    array = np.frombuffer(body, dtype=dtype).reshape(shape)
    array.setflags(write=False)
    return array


def fashion_mnist(split: str = "train", n: int | None = None, seed: int = 0) -> TensorDataset:
    """Fashion-MNIST in [0, 1]: x [N, 1, 28, 28] float32, y int64 (60000 train / 10000 test).

    Read from ``$GRADVAR_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``.
    """
    _check_split(split)
    folder = _fashion_dir()
    images_path, labels_path = (_find_idx(folder, stem) for stem in _FASHION_FILES[split])
    images = _read_idx(str(images_path), images_path.stat().st_mtime_ns)
    labels = _read_idx(str(labels_path), labels_path.stat().st_mtime_ns)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataNotFoundError(
            f"Fashion-MNIST files in {folder} disagree: "
            f"images {images.shape}, labels {labels.shape}"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # [N, 1, 28, 28]
    y = torch.from_numpy(labels.astype(np.int64))
    return _subsample(x, y, n, seed)


def synthetic(
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    num_features: int = 32,
    num_classes: int = 4,
    size: int = 1024,
    separation: float = 2.0,
) -> TensorDataset:
    """Gaussian mixture: class means ~ N(0, separation^2/num_features I), unit-variance noise.

    ``seed`` fixes the class means; train and test draw different samples around them.
    ``size`` examples per split (``n`` subsamples further).
    """
    _check_split(split)
    for name, value in (
        ("num_features", num_features),
        ("num_classes", num_classes),
        ("size", size),
    ):
        check_positive(name, value)
    means_gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, num_features, generator=means_gen)
    means *= separation / num_features**0.5
    sample_gen = torch.Generator().manual_seed(seed * 2 + (split == "test") + 1)
    y = torch.randint(num_classes, (size,), generator=sample_gen)
    x = means[y] + torch.randn(size, num_features, generator=sample_gen)  # [N, num_features]
    return _subsample(x, y, n, seed)


DATASETS: dict[str, Callable[..., TensorDataset]] = {
    "digits": digits,
    "fashion-mnist": fashion_mnist,
    "synthetic": synthetic,
}


def load_dataset(
    name: str, *, split: str = "train", n: int | None = None, seed: int = 0, **options: Any
) -> TensorDataset:
    """Load a registry dataset (``DATASETS``) or call ``"module:fn"(split=, n=, seed=, ...)``.

    A custom function may return a Dataset or an ``(inputs, targets)`` pair of tensors.
    """
    if name in DATASETS:
        loader = DATASETS[name]
    elif is_callable_spec(name):
        loader = resolve_callable(name)
    else:
        raise InvalidArgumentError(
            f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or give 'module:function'"
        )
    data = loader(split=split, n=n, seed=seed, **options)
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        data = TensorDataset(*data)
    if not isinstance(data, Dataset):
        raise InvalidArgumentError(
            f"dataset {name!r} returned a {type(data).__name__}; expected a torch Dataset "
            "or an (inputs, targets) pair of tensors"
        )
    return data


def augment(
    x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 2, flip: bool = False
) -> torch.Tensor:
    """Random shift (zero-padded, up to ``max_shift`` pixels) and optional horizontal flip.

    ``x`` is a batch [B, C, H, W]; every random draw comes from ``generator`` (a CPU
    generator), so re-seeding it reproduces the batch exactly: the common random numbers that
    let the current and the snapshot weights see the same augmented inputs.
    """
    if x.dim() != 4:
        raise InvalidArgumentError(
            f"augment expects images [B, C, H, W], got shape {tuple(x.shape)}"
        )
    check_positive("max_shift", max_shift, allow_zero=True)
    b, c, h, w = x.shape
    shifts = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).to(x.device)
    flips = torch.rand(b, generator=generator).to(x.device) < 0.5
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = shifts[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out
