"""Datasets, offline first.

- ``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download),
  1797 images scaled to [0, 1], with a fixed stratified split of 1437 train / 360 test.
- ``fashion-mnist`` and ``mnist``: the four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw
  or ``.gz``) from ``--data-dir`` or the default directories: Debian's ``dataset-fashion-mnist``
  installs Fashion-MNIST in /usr/share/datasets/fashion-mnist; the user cache is
  ``$XDG_CACHE_HOME/spikeprop/<name>`` (default ``~/.cache/spikeprop/<name>``).

Nothing is downloaded. A missing or corrupt file raises ``SpikepropError`` saying what to do.

``SPIKEPROP_HIDE_SYSTEM_DATA=1`` leaves /usr/share/datasets out of the default directories, so
that a machine with Debian's package behaves as a new user's machine without it (CI runs the
test suite once that way, with an empty ``XDG_CACHE_HOME``).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spikeprop import SpikepropError

DATASETS = ("digits", "fashion-mnist", "mnist")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only type (Fashion-)MNIST uses
DIGITS_TEST_SIZE = 360  # 20 % of the 1797 digits, split once with a fixed seed
DIGITS_SPLIT_SEED = 0
DIGITS_MAX = 16.0  # digits pixels are counts 0..16


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays: images stored flat as uint8 or float [n, features], labels int64 [n].

    shape: the shape of one sample (C, H, W) (digits 1x8x8, (Fashion-)MNIST 1x28x28);
    ``intensities`` gives samples in it.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    scale: float  # divide the stored values by this to get intensities in [0, 1]
    shape: tuple[int, ...] | None = None

    @property
    def n_features(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape if self.shape is not None else (self.n_features,)

    def intensities(self, x: torch.Tensor) -> torch.Tensor:
        """Stored rows [B, features] -> intensities in [0, 1], [B, *sample_shape] (images keep their shape)."""
        return (x.to(torch.float32) / self.scale).view(x.shape[0], *self.sample_shape)


SYSTEM_DATA = Path("/usr/share/datasets")
HIDE_SYSTEM_DATA = "SPIKEPROP_HIDE_SYSTEM_DATA"


def default_dirs(name: str) -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeprop" / name
    dirs = [cache]
    if name == "fashion-mnist" and os.environ.get(HIDE_SYSTEM_DATA, "") in ("", "0"):
        dirs.insert(0, SYSTEM_DATA / "fashion-mnist")
    return dirs


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load dataset ``name`` (one of DATASETS)."""
    if name == "digits":
        return _load_digits()
    if name in ("fashion-mnist", "mnist"):
        return _load_idx_dataset(name, data_dir)
    raise SpikepropError(f"unknown dataset '{name}' (choose from: {', '.join(DATASETS)})")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return Dataset(
        "digits", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
        10, DIGITS_MAX, (1, 8, 8),
    )


def _install_hint(name: str) -> str:
    if name == "fashion-mnist":
        return ("install Debian's package (apt-get install dataset-fashion-mnist, or scripts/install.sh "
                "--fashion-mnist) or pass --data-dir DIR holding the four IDX files")
    return "put the four MNIST IDX files (raw or .gz) in ~/.cache/spikeprop/mnist or pass --data-dir DIR"


def _find(name: str, stem: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_dataset(name: str, data_dir) -> Dataset:
    dirs = [Path(data_dir)] if data_dir is not None else default_dirs(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SpikepropError(f"--data-dir {data_dir} is not a directory")
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find(name, stem, dirs)
        if path is None:
            where = ", ".join(str(d) for d in dirs)
            raise SpikepropError(f"{name}: {stem}[.gz] not found in {where}; {_install_hint(name)}")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        xi, yi = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if xi.ndim != 3 or yi.ndim != 1:
            raise SpikepropError(f"{name}: the {split} images must be 3-D and labels 1-D IDX arrays; "
                                 f"got {xi.ndim}-D and {yi.ndim}-D")
        if len(xi) != len(yi):
            raise SpikepropError(f"{name}: {len(xi)} {split} images but {len(yi)} labels")
        if len(xi) == 0 or xi.shape[1] * xi.shape[2] == 0:
            raise SpikepropError(f"{name}: the {split} split holds no samples (image array {xi.shape}); replace its files")
        if yi.max() > 9:
            raise SpikepropError(f"{name}: {split} labels go up to {yi.max()}, expected 0..9")
    train_shape, test_shape = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train_shape != test_shape:
        raise SpikepropError(f"{name}: the train images are {train_shape[0]}x{train_shape[1]} but the test images are "
                             f"{test_shape[0]}x{test_shape[1]}; the four files must come from one dataset")
    flat = lambda a: torch.from_numpy(a.reshape(len(a), -1).copy())  # noqa: E731
    return Dataset(
        name,
        flat(arrays["train_images"]), torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        flat(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        10, 255.0, (1, *train_shape),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes; raise SpikepropError if it is corrupt."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SpikepropError(f"cannot read {path}: {e}; the file is corrupt or truncated, replace it") from None
    if len(data) < 4:
        raise SpikepropError(f"{path} is not an IDX file (only {len(data)} bytes); replace it")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != IDX_UBYTE or not 1 <= ndim <= 4:
        raise SpikepropError(f"{path} is not an unsigned-byte IDX file (bad magic number); replace it")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SpikepropError(f"{path} is truncated inside its header; replace it")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape)  # Python ints: np.prod would overflow int64 on a corrupt header
    if len(data) - header != expected:
        raise SpikepropError(f"{path} holds {len(data) - header} bytes of data but its header says "
                             f"{expected} (shape {shape}); the file is truncated or corrupt, replace it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzip if the name ends in .gz). Used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
