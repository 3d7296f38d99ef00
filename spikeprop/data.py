"""Datasets, offline first.

- ``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download),
  1797 images scaled to [0, 1], with a fixed stratified split of 1437 train / 360 test.
- ``fashion-mnist`` and ``mnist``: the four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw
  or ``.gz``) from ``--data-dir`` or the default directories: Debian's ``dataset-fashion-mnist``
  installs Fashion-MNIST in /usr/share/datasets/fashion-mnist; the user cache is
  ``$XDG_CACHE_HOME/spikeprop/<name>`` (default ``~/.cache/spikeprop/<name>``).

Temporal datasets (``TEMPORAL``: a sample is a sequence of T steps; ``Dataset.steps`` is T and
``intensities`` gives [B, T, *frame], sample-major as stored; the ``sequence`` or ``events``
encoding turns it time-major, ``spikeprop.encoders``):

- ``sequential-fashion-mnist``: the Fashion-MNIST IDX files above, each image fed row by row
  (``sequence="rows"``: T = 28 steps of the 28 pixels of a row) or pixel by pixel in raster order
  (``"pixels"``: T = 784 steps of one pixel), the intensities as input currents.
- ``nmnist``, ``dvs-gesture``, ``shd``: event recordings read with tonic from the user's files and
  binned into T binary spike frames (``spikeprop.events``: layout, sources, binning, cache).

Nothing is downloaded. A missing or corrupt file raises ``SpikepropError`` saying what to do.

``SPIKEPROP_HIDE_SYSTEM_DATA=1`` leaves /usr/share/datasets out of the default directories, so
that a machine with Debian's package behaves as a new user's machine without it (CI runs the
test suite once that way, with an empty ``XDG_CACHE_HOME``).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spikeprop import SpikepropError

STATIC_DATASETS = ("digits", "fashion-mnist", "mnist")
EVENT_DATASETS = ("nmnist", "dvs-gesture", "shd")
# A temporal dataset -> the one encoding that feeds its steps (spikeprop.encoders).
TEMPORAL = {"sequential-fashion-mnist": "sequence", **{name: "events" for name in EVENT_DATASETS}}
DATASETS = (*STATIC_DATASETS, *TEMPORAL)
SEQUENCES = {"rows": 28, "pixels": 784}  # sequential-fashion-mnist: --sequence -> T

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
    """Train and test arrays: samples stored flat as uint8 or float [n, features], labels int64 [n].

    shape: the shape of one sample (C, H, W) (digits 1x8x8, (Fashion-)MNIST 1x28x28), or of one
    step's frame for a temporal dataset; ``intensities`` gives samples in it.
    steps: T of a temporal dataset (a stored row holds its T frames, step-major), None for images.
    packed: the rows are ``np.packbits`` of 0/1 frames (event datasets: one bit per input per step).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    scale: float  # divide the stored values by this to get intensities in [0, 1]
    shape: tuple[int, ...] | None = None
    steps: int | None = None
    packed: bool = False

    @property
    def n_features(self) -> int:
        """Inputs of the network: features of an image, or of one step's frame."""
        return math.prod(self.shape) if self.shape is not None else int(self.train_x.shape[1])

    @property
    def temporal(self) -> bool:
        return self.steps is not None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape if self.shape is not None else (self.n_features,)

    def intensities(self, x: torch.Tensor) -> torch.Tensor:
        """Stored rows [B, features] -> intensities in [0, 1], [B, *sample_shape] (images keep their
        shape); a temporal dataset's [B, T, *sample_shape] (event frames: 0/1 spikes)."""
        if self.packed:
            from spikeprop.events import unpack

            return unpack(x, self.steps, self.sample_shape)
        values = x.to(torch.float32) / self.scale
        if self.steps is not None:
            return values.view(x.shape[0], self.steps, *self.sample_shape)
        return values.view(x.shape[0], *self.sample_shape)


SYSTEM_DATA = Path("/usr/share/datasets")
HIDE_SYSTEM_DATA = "SPIKEPROP_HIDE_SYSTEM_DATA"


def default_dirs(name: str) -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeprop" / name
    dirs = [cache]
    if name == "fashion-mnist" and os.environ.get(HIDE_SYSTEM_DATA, "") in ("", "0"):
        dirs.insert(0, SYSTEM_DATA / "fashion-mnist")
    return dirs


def fixed_steps(name: str, sequence: object = "rows") -> int | None:
    """T of a dataset whose steps are fixed by its data (sequential-fashion-mnist: 28 or 784), else None."""
    if name == "sequential-fashion-mnist":
        return SEQUENCES.get(sequence) if isinstance(sequence, str) else None
    return None


def load(name: str, data_dir: str | os.PathLike | None = None, *, sequence: str = "rows", steps: int | None = None,
         bin_us: int | None = None, downsample: int = 1) -> Dataset:
    """Load dataset ``name`` (one of DATASETS).

    sequence: rows | pixels (sequential-fashion-mnist). steps, bin_us, downsample: an event
    dataset's T, bin width in microseconds (None: T bins per recording) and spatial down-sampling
    factor (``spikeprop.events``). Static datasets take none of them.
    """
    if name == "digits":
        return _load_digits()
    if name in ("fashion-mnist", "mnist"):
        return _load_idx_dataset(name, data_dir)
    if name == "sequential-fashion-mnist":
        if sequence not in SEQUENCES:
            raise SpikepropError(f"--sequence must be one of {', '.join(SEQUENCES)}; got {sequence!r}")
        images = _load_idx_dataset("fashion-mnist", data_dir)
        T = SEQUENCES[sequence]
        return dataclasses.replace(images, name=name, shape=(784 // T,), steps=T)
    if name in EVENT_DATASETS:
        return _load_events(name, data_dir, steps, bin_us, downsample)
    raise SpikepropError(f"unknown dataset '{name}' (choose from: {', '.join(DATASETS)})")


def _load_events(name: str, data_dir, steps: int | None, bin_us: int | None, downsample: int) -> Dataset:
    from spikeprop import events

    if steps is None:
        raise SpikepropError(f"{name}: give the number of time bins T (--steps)")
    splits = {split: events.load_split(name, data_dir, split, steps=steps, bin_us=bin_us, downsample=downsample)
              for split in ("train", "test")}
    (trx, trl, frame), (tex, tel, _) = splits["train"], splits["test"]
    return Dataset(name, torch.from_numpy(trx), torch.from_numpy(trl), torch.from_numpy(tex), torch.from_numpy(tel),
                   events.EVENT_SETS[name].n_classes, 1.0, frame, steps=steps, packed=True)


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
