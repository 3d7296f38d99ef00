"""Small event datasets written in each dataset's own on-disk format (no event data can be downloaded).

Events are tonic structured arrays (``tonic.io.make_structured_array`` with the dataset class's
dtype); the writers of ``spikeprop.events`` put them in the layout tonic's classes read, under
``root/<tonic class>/``, so the tests read them through the same code path a user's files take.
Each class has its own place on the sensor (a bar of pixels, a band of channels) and its own
time course (the bar moves), so a network can learn something in an epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikeprop.events import write_dvs_gesture_npy, write_nmnist_bin, write_shd_h5

DURATION_US = 300_000  # N-MNIST's three saccades last about 300 ms


def recording(rng: np.random.Generator, label: int, n_classes: int, width: int, height: int | None, n: int, dtype):
    """One recording of ``n`` events, sorted in time: a bar (or channel band) at a class-dependent
    position that drifts during the recording, with both polarities (``height`` None: 1-D, SHD)."""
    from tonic.io import make_structured_array

    t = np.sort(rng.integers(0, DURATION_US, n))
    centre = (label + 0.5) * width / n_classes
    drift = (t / DURATION_US - 0.5) * width / (2 * n_classes)
    x = np.clip(np.round(centre + drift + rng.normal(0, width / (6 * n_classes), n)), 0, width - 1).astype(int)
    if height is None:
        return make_structured_array(t, x, np.ones(n, int), dtype=dtype)
    y = rng.integers(0, height, n)
    p = rng.integers(0, 2, n)
    fields = {"x": x, "y": y, "t": t, "p": p}
    return make_structured_array(*(fields[name] for name in dtype.names), dtype=dtype)


def make_nmnist(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0, events: int = 200) -> Path:
    """root/NMNIST/{Train,Test}/<digit>/<k>.bin; returns root."""
    from tonic.datasets import NMNIST

    rng = np.random.default_rng(seed)
    for folder, n in (("Train", n_train), ("Test", n_test)):
        for k in range(n):
            label = k % 10
            ev = recording(rng, label, 10, 34, 34, events, NMNIST.dtype)
            write_nmnist_bin(root / "NMNIST" / folder / str(label) / f"{k:05d}.bin", ev)
    return root


def make_dvs_gesture(root: Path, n_train: int = 22, n_test: int = 11, seed: int = 1, events: int = 400) -> Path:
    """root/DVSGesture/ibmGesture{Train,Test}/user<NN>_<lighting>/<label>.npy; returns root."""
    from tonic.datasets import DVSGesture

    rng = np.random.default_rng(seed)
    for folder, n in (("ibmGestureTrain", n_train), ("ibmGestureTest", n_test)):
        for k in range(n):
            label, user = k % 11, 1 + k // 11
            ev = recording(rng, label, 11, 128, 128, events, DVSGesture.dtype)
            write_dvs_gesture_npy(root / "DVSGesture" / folder / f"user{user:02d}_fluorescent" / f"{label}.npy", ev)
    return root


def make_shd(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 2, events: int = 300) -> Path:
    """root/SHD/shd_{train,test}.h5; returns root."""
    from tonic.datasets import SHD

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 20
        recs = [recording(rng, int(c), 20, 700, None, events, SHD.dtype) for c in labels]
        write_shd_h5(root / "SHD" / f"shd_{split}.h5", recs, labels)
    return root


MAKERS = {"nmnist": make_nmnist, "dvs-gesture": make_dvs_gesture, "shd": make_shd}
