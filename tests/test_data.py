"""Datasets: the embedded digits split and IDX files the tests write themselves."""

import numpy as np
import pytest

from spikeprop import SpikepropError
from spikeprop.data import IDX_FILES, load, read_idx, write_idx


def write_idx_set(root, n_train=40, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(root / f"{stem}{ext}", arrays[key])
    return arrays


def test_digits_split_is_fixed():
    a, b = load("digits"), load("digits")
    assert a.train_x.shape == (1437, 64) and a.test_x.shape == (360, 64)
    assert (a.test_y == b.test_y).all() and (a.test_x == b.test_x).all()
    assert float(a.intensities(a.train_x).max()) == 1.0


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    ds = load("fashion-mnist", tmp_path)
    assert ds.train_x.shape == (40, 784) and ds.test_x.shape == (20, 784)
    assert np.array_equal(ds.train_x.numpy(), arrays["train_images"].reshape(40, -1))
    assert np.array_equal(ds.test_y.numpy(), arrays["test_labels"])
    assert ds.n_features == 784


def test_missing_file_says_what_to_do(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SpikepropError, match="t10k-labels-idx1-ubyte.*--data-dir"):
        load("mnist", tmp_path)
    with pytest.raises(SpikepropError, match="not a directory"):
        load("mnist", tmp_path / "nope")


def test_truncated_and_corrupt_files_are_reported(tmp_path):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SpikepropError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(SpikepropError, match="bad magic"):
        read_idx(path)
    gzpath = tmp_path / "x.gz"
    write_idx(gzpath, np.arange(5000, dtype=np.uint8).reshape(50, 100) % 251)
    gzpath.write_bytes(gzpath.read_bytes()[:-40])
    with pytest.raises(SpikepropError, match="corrupt or truncated"):
        read_idx(gzpath)
    gzpath.write_bytes(b"not gzip at all")
    with pytest.raises(SpikepropError, match="corrupt or truncated"):
        read_idx(gzpath)


def test_label_count_mismatch(tmp_path):
    write_idx_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    with pytest.raises(SpikepropError, match="40 train images but 39 labels"):
        load("fashion-mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(SpikepropError, match="unknown dataset"):
        load("cifar10")


def test_hidden_system_data_makes_fashion_mnist_missing_as_on_a_new_machine(tmp_path, monkeypatch):
    from spikeprop import data

    monkeypatch.setenv(data.HIDE_SYSTEM_DATA, "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.SYSTEM_DATA / "fashion-mnist" not in data.default_dirs("fashion-mnist")
    with pytest.raises(SpikepropError, match="not found"):
        load("fashion-mnist")
    monkeypatch.setenv(data.HIDE_SYSTEM_DATA, "0")
    assert data.default_dirs("fashion-mnist")[0] == data.SYSTEM_DATA / "fashion-mnist"
