"""Event datasets read with tonic from files the user already has, binned into T frames, cached.

``nmnist``, ``dvs-gesture`` and ``shd`` are read by tonic's own dataset classes
(``tonic.datasets.NMNIST``, ``DVSGesture``, ``SHD``) from ``--data-dir DIR``, the directory tonic
calls ``save_to`` (default ``$XDG_CACHE_HOME/spikeprop``, i.e. ``~/.cache/spikeprop``), in the
layout those classes read after their archives are extracted::

    DIR/NMNIST/Train/<digit>/*.bin, DIR/NMNIST/Test/<digit>/*.bin       (Orchard's 40-bit events)
    DIR/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy      (tonic's preprocessed
    DIR/DVSGesture/ibmGestureTest/...                                     DVS Gesture: x, y, p, t in ms)
    DIR/SHD/shd_train.h5, DIR/SHD/shd_test.h5                           (Zenke lab's HDF5)

Nothing is downloaded, ever: spikeprop checks the files itself first and a missing one is a
one-line ``SpikepropError`` saying what to fetch, from where, and where to put it (``EVENT_SETS``);
tonic's classes are used through subclasses whose ``download`` raises and whose ``_check_exists``
does not ask for the archives (tonic's own check wants the ``.zip`` files next to the folders and
downloads them when they are absent).

Binning (``bin_events``): tonic's ``ToFrame`` counts the events of each polarity and pixel (SHD:
channel) per time bin, [T, P, H, W]; each count > 0 becomes a spike (1), so a step's input is a
binary spike frame, what a neuromorphic chip receives from a sensor. Two ways to cut time:

- ``bin_us`` None: ``ToFrame(n_time_bins=T)``, tonic's rule: each recording is cut into T bins of
  ``w = (t_last - t_first) // T`` microseconds from its first event; bin ``k`` holds
  ``t_first + k w <= t < t_first + (k + 1) w`` (so events in the last ``(t_last - t_first) mod T``
  microseconds, the last event among them, fall outside every bin).
- ``bin_us`` W: ``ToFrame(time_window=W, start_time=0, end_time=T W)``: bin ``k`` holds
  ``k W <= t < (k + 1) W`` on the recording's own clock; events after ``T W`` are dropped and a
  shorter recording ends in empty frames.

``downsample`` K divides the sensor's x and y by K (integer division of the coordinates, then
``ceil(size / K)`` cells; tonic's ``Downsample`` multiplies by the float ``1 / K`` instead, which
puts x = 49 into cell 0 for K = 49). The frame of one step is (P, H, W) for the cameras, (700 / K,)
channels for SHD.

Cache: the binned frames of a split are kept as packed bits (``np.packbits``, one bit per
polarity, pixel and step) in ``$XDG_CACHE_HOME/spikeprop/frames/<dataset>-<split>-<key>.npz``,
the key a hash of the binning settings and of every source file's path, size and modification
time, so epochs (and later commands) never re-bin and a changed file is re-binned. A damaged cache
file is re-binned, and a cache directory that cannot be written only costs the re-binning.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikeprop import SpikepropError

CACHE_VERSION = 1  # bump when the binning or the cache layout changes
MAX_BIN_US = 600_000_000  # ten minutes per bin: longer is a typo (recordings last seconds)


@dataclass(frozen=True)
class EventSet:
    """One event dataset: the tonic class that reads it (also its folder under ``--data-dir``),
    tonic's sensor size (x, y, p), the classes, what each split needs on disk, and where to get it."""

    name: str
    tonic_class: str
    sensor_size: tuple[int, int, int]
    n_classes: int
    split_paths: dict[str, str]  # split -> the folder or file, relative to DIR/<tonic_class>
    pattern: str  # what a split folder must hold, as a glob ("" for a file)
    fetch: str  # what to download, from where

    def frame_shape(self, downsample: int = 1) -> tuple[int, ...]:
        """The input of one step: (P, ceil(H / K), ceil(W / K)), or (ceil(X / K),) for a 1-D sensor."""
        x, y, p = self.sensor_size
        if y == 1 and p == 1:
            return (math.ceil(x / downsample),)
        return (p, math.ceil(y / downsample), math.ceil(x / downsample))


EVENT_SETS: dict[str, EventSet] = {
    "nmnist": EventSet(
        "nmnist", "NMNIST", (34, 34, 2), 10, {"train": "Train", "test": "Test"}, "*/*.bin",
        "download train.zip and test.zip of N-MNIST (https://www.garrickorchard.com/datasets/n-mnist; tonic's "
        "mirror: https://data.mendeley.com/datasets/468j46mzdv) and extract them (Train/0/*.bin ... Test/9/*.bin)"),
    "dvs-gesture": EventSet(
        "dvs-gesture", "DVSGesture", (128, 128, 2), 11, {"train": "ibmGestureTrain", "test": "ibmGestureTest"},
        "user*_*/*.npy",
        "download tonic's preprocessed DVS Gesture, ibmGestureTrain.tar.gz (https://figshare.com/ndownloader/files/38022171) "
        "and ibmGestureTest.tar.gz (https://figshare.com/ndownloader/files/38020584; the original recordings: "
        "https://research.ibm.com/interactive/dvsgesture/) and extract them (ibmGestureTrain/user01_fluorescent/0.npy ...)"),
    "shd": EventSet(
        "shd", "SHD", (700, 1, 1), 20, {"train": "shd_train.h5", "test": "shd_test.h5"}, "",
        "download shd_train.h5.zip and shd_test.h5.zip of the Spiking Heidelberg Digits (https://zenkelab.org/datasets/; "
        "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/) and unzip them"),
}


def default_root() -> Path:
    """tonic's ``save_to`` when no --data-dir is given: ``$XDG_CACHE_HOME/spikeprop``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeprop"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeprop" / "frames"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Reading through tonic, offline


def _tonic():
    try:
        import tonic
    except ImportError as e:
        raise SpikepropError(f"the event datasets are read with tonic, which does not import ({e}); install it with "
                             "scripts/install.sh (or pip install --no-deps tonic importRosbag requests)") from None
    return tonic


def _offline(cls):
    """tonic's dataset class ``cls`` that never downloads: same name (tonic's folder is the class
    name), ``download`` raises, ``_check_exists`` trusts spikeprop's own check of the files."""

    def download(self):
        raise SpikepropError(f"tonic's {cls.__name__} asked to download {getattr(self, 'url', 'its archive')}; "
                             "spikeprop never downloads (put the files in place yourself)")

    return type(cls.__name__, (cls,), {"download": download, "_check_exists": lambda self: True,
                                       "__module__": __name__})


def split_location(spec: EventSet, root: Path, split: str) -> Path:
    return root / spec.tonic_class / spec.split_paths[split]


def check_files(spec: EventSet, root: Path, split: str) -> Path:
    """The split's folder (or file), or a one-line error saying what to fetch and where to put it."""
    where = split_location(spec, root, split)
    if spec.pattern:
        found = where.is_dir() and any(where.glob(spec.pattern))
    else:
        found = where.is_file()
    if not found:
        what = f"{where} holds no {spec.pattern} recordings" if spec.pattern else f"{where} not found"
        raise SpikepropError(f"{spec.name}: {what}; {spec.fetch} into {root / spec.tonic_class}/, or pass --data-dir "
                             f"DIR holding {spec.tonic_class}/. Nothing is downloaded")
    return where


def open_split(spec: EventSet, root: Path, split: str):
    """tonic's dataset object of one split (offline), after ``check_files``."""
    where = check_files(spec, root, split)
    cls = _offline(getattr(_tonic().datasets, spec.tonic_class))
    try:
        return cls(save_to=str(root), train=split == "train")
    except SpikepropError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise SpikepropError(f"{spec.name}: tonic cannot read {where} ({type(e).__name__}: {e}); the file is corrupt "
                             "or truncated, replace it") from None


def source_files(spec: EventSet, root: Path, split: str, tds) -> list[Path]:
    """The files one split is read from (what the cache key fingerprints)."""
    if spec.pattern:
        return [Path(p) for p in tds.data]
    return [split_location(spec, root, split)]


# --------------------------------------------------------------------------------------------
# Binning


def bin_events(events: np.ndarray, sensor_size: tuple[int, int, int], steps: int, *, bin_us: int | None = None,
               downsample: int = 1) -> np.ndarray:
    """Event counts per time bin, [T, *frame] int16 (frame: (P, H', W'), or (X',) for SHD), with
    tonic's ``ToFrame`` (module docstring: the two ways to cut time, and the down-sampling).

    events: a tonic structured array with fields x, (y), t (microseconds), p.
    """
    from tonic.transforms import ToFrame

    _tonic()
    x, y, p = sensor_size
    has_y = "y" in events.dtype.names
    reduced = (math.ceil(x / downsample), math.ceil(y / downsample) if has_y else 1, p)
    frame = (p, reduced[1], reduced[0]) if has_y else (p * reduced[0],)
    if len(events) == 0:
        return np.zeros((steps, *frame), dtype=np.int16)
    events = events.copy()
    if downsample > 1:
        events["x"] //= downsample
        if has_y:
            events["y"] //= downsample
    if np.any(np.diff(events["t"]) < 0):  # tonic's slicers search the time stamps: they must be sorted
        events = events[np.argsort(events["t"], kind="stable")]
    coords = [("x", reduced[0])] + ([("y", reduced[1])] if has_y else [])
    for name, size in coords:
        if events[name].min() < 0 or events[name].max() >= size:
            raise ValueError(f"event {name} coordinates span {events[name].min()}..{events[name].max()}, outside the "
                             f"sensor's 0..{size - 1}")
    if p > 1 and not np.isin(events["p"], (0, 1)).all():
        raise ValueError("event polarities must be 0 or 1")
    if bin_us is None:
        to_frame = ToFrame(sensor_size=reduced, n_time_bins=steps)
    else:
        to_frame = ToFrame(sensor_size=reduced, time_window=bin_us, start_time=0, end_time=steps * bin_us)
    frames = to_frame(events)
    if frames.shape[0] != steps:
        raise ValueError(f"tonic's ToFrame gave {frames.shape[0]} frames for T = {steps}")
    return frames.reshape(steps, *frame).astype(np.int16)


# --------------------------------------------------------------------------------------------
# One split as packed binary frames, through the cache


def _fingerprint(files: list[Path], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        try:
            st = f.stat()
        except OSError as e:
            raise SpikepropError(f"cannot read {f}: {e.strerror}") from None
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _read_cache(path: Path, n_bytes: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:  # np.load of a path leaves the file open when the zip is damaged: open it here
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            frames, labels = z["frames"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if frames.dtype != np.uint8 or frames.ndim != 2 or frames.shape[1] != n_bytes or labels.shape != (len(frames),):
        return None
    return frames, labels.astype(np.int64)


def _write_cache(path: Path, frames: np.ndarray, labels: np.ndarray, log: Callable[[str], None]) -> None:
    from spikeprop.files import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, frames=frames, labels=labels)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except SpikepropError as e:  # the cache only saves time: binning again next time is the cost
        log(f"note: binned frames not cached ({e})")


def load_split(name: str, data_dir: str | os.PathLike | None, split: str, *, steps: int, bin_us: int | None = None,
               downsample: int = 1, log: Callable[[str], None] = _stderr) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """One split of event dataset ``name``: (frames packed bits uint8 [n, ceil(T * F / 8)], labels int64 [n],
    the frame shape of one step). Binned once, then read from the cache."""
    spec = EVENT_SETS[name]
    root = Path(data_dir) if data_dir is not None else default_root()
    if data_dir is not None and not root.is_dir():
        raise SpikepropError(f"--data-dir {data_dir} is not a directory")
    tds = open_split(spec, root, split)
    frame = spec.frame_shape(downsample)
    n_bytes = math.ceil(steps * math.prod(frame) / 8)
    settings = {"version": CACHE_VERSION, "dataset": name, "split": split, "steps": steps, "bin_us": bin_us,
                "downsample": downsample}
    files = source_files(spec, root, split, tds)
    cached = cache_dir() / f"{name}-{split}-{_fingerprint(files, settings)}.npz"
    hit = _read_cache(cached, n_bytes) if cached.is_file() else None
    if hit is not None:
        frames, labels = hit
    else:
        frames, labels = _bin_split(spec, tds, root, split, steps, bin_us, downsample, n_bytes, log)
        _write_cache(cached, frames, labels, log)
    if len(labels) == 0:
        raise SpikepropError(f"{name}: the {split} split holds no recordings ({split_location(spec, root, split)})")
    if labels.min() < 0 or labels.max() >= spec.n_classes:
        raise SpikepropError(f"{name}: {split} labels span {labels.min()}..{labels.max()}, expected 0..{spec.n_classes - 1}; "
                             "replace the files")
    return frames, labels, frame


def _bin_split(spec: EventSet, tds, root: Path, split: str, steps: int, bin_us: int | None, downsample: int,
               n_bytes: int, log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    n = len(tds)
    how = f"{bin_us} us bins" if bin_us is not None else "T bins per recording"
    log(f"{spec.name}: binning {n} {split} recordings into T={steps} frames ({how}, downsample {downsample}); "
        "once, then cached")
    frames = np.zeros((n, n_bytes), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        source = tds.data[i] if spec.pattern else split_location(spec, root, split)
        try:
            events, target = tds[i]
            counts = bin_events(events, spec.sensor_size, steps, bin_us=bin_us, downsample=downsample)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise SpikepropError(f"{spec.name}: cannot read recording {i} of {source} ({type(e).__name__}: {e}); "
                                 "the file is corrupt or truncated, replace it") from None
        frames[i] = np.packbits(counts.reshape(-1) > 0)
        labels[i] = int(np.asarray(target).reshape(-1)[0])
    return frames, labels


def unpack(packed, steps: int, frame: tuple[int, ...]):
    """Packed rows (torch uint8 [B, n_bytes]) -> float32 0/1 spikes [B, T, *frame]."""
    import torch

    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    n = steps * math.prod(frame)
    return bits.flatten(1)[:, :n].to(torch.float32).view(packed.shape[0], steps, *frame)


# --------------------------------------------------------------------------------------------
# Writers of each dataset's own on-disk format (tests and tools: no event data can be downloaded here)

NMNIST_TIME_BITS = 23  # the 40-bit format: x (8), y (8), p (1), t (23 bits of microseconds)
NMNIST_OVERFLOW_Y = 240  # a y of 240 marks a time-overflow record in the format, never an event


def write_nmnist_bin(path: str | os.PathLike, events: np.ndarray) -> None:
    """Events (fields x, y, t in us, p) as one N-MNIST ``.bin`` recording (Orchard's 40-bit records)."""
    x, y, t, p = (np.asarray(events[k], dtype=np.int64) for k in ("x", "y", "t", "p"))
    if len(x) and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255 or (y == NMNIST_OVERFLOW_Y).any()
                   or t.min() < 0 or t.max() >= 2**NMNIST_TIME_BITS or not np.isin(p, (0, 1)).all()):
        raise ValueError("N-MNIST records hold x, y in 0..255 (y != 240), p in {0, 1}, t < 2**23 us")
    raw = np.zeros((len(x), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = (p << 7) | ((t >> 16) & 0x7F)
    raw[:, 3], raw[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(raw.tobytes())


def write_dvs_gesture_npy(path: str | os.PathLike, events: np.ndarray) -> None:
    """Events (fields x, y, p, t in us) as one recording of tonic's preprocessed DVS Gesture: an
    [N, 4] array of x, y, p, t in milliseconds (tonic multiplies t by 1000 when it reads it)."""
    arr = np.stack([np.asarray(events[k], dtype=np.int64) for k in ("x", "y", "p")]
                   + [np.asarray(events["t"], dtype=np.int64) // 1000], axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def write_shd_h5(path: str | os.PathLike, recordings: list[np.ndarray], labels, speakers=None) -> None:
    """Recordings (fields t in us, x the channel) as one SHD HDF5 file: ``spikes/times`` (seconds) and
    ``spikes/units`` as ragged arrays, ``labels``, ``extra/keys`` and ``extra/speaker`` (what tonic's
    SHD reads)."""
    import h5py

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = len(recordings)
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float64))
        units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
        for i, ev in enumerate(recordings):
            times[i] = np.asarray(ev["t"], dtype=np.float64) / 1e6
            units[i] = np.asarray(ev["x"], dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        f.create_dataset("extra/keys", data=np.array([f"class-{c}".encode() for c in range(20)]))
        f.create_dataset("extra/speaker", data=np.asarray(speakers if speakers is not None else np.zeros(n), np.uint16))
