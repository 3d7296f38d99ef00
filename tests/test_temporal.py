"""Temporal datasets: sequential Fashion-MNIST from small IDX files, and N-MNIST, DVS Gesture and SHD
from event files written in each dataset's own on-disk format (tests/eventfiles.py), read through
the same code path a user's files take (tonic's dataset classes, binning, cache)."""

import json
import socket

import numpy as np
import pytest
import torch

from spikeprop import SpikepropError, events, runs
from spikeprop.cli import build_parser, main, resolve_train_config
from spikeprop.config import TrainConfig
from spikeprop.data import load
from spikeprop.encoders import Encoder
from spikeprop.rules import RULES
from spikeprop.train import build, train
from tests.eventfiles import MAKERS
from tests.test_data import write_idx_set


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Binned frames go to this test's cache, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def no_network(monkeypatch):
    """Any socket is an error: reading event files must never reach for the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def event_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    return {name: make(root / name) for name, make in MAKERS.items()}


# --- sequential Fashion-MNIST -------------------------------------------------------------------


def test_sequential_fashion_mnist_is_the_images_row_by_row_or_pixel_by_pixel(tmp_path):
    arrays = write_idx_set(tmp_path)
    rows = load("sequential-fashion-mnist", tmp_path)
    assert (rows.steps, rows.sample_shape, rows.n_features, len(rows.train_x)) == (28, (28,), 28, 40)
    x = rows.intensities(rows.train_x[:3])
    assert x.shape == (3, 28, 28)
    xin = Encoder("sequence", 28)(x)
    assert xin.shape == (28, 3, 28) and xin.stride(0) != 0
    for t in (0, 13, 27):  # step t is row t of the image, as a current in [0, 1]
        assert torch.equal(xin[t], torch.from_numpy(arrays["train_images"][:3, t, :]).float() / 255)
    pixels = load("sequential-fashion-mnist", tmp_path, sequence="pixels")
    xin = Encoder("sequence", 784)(pixels.intensities(pixels.test_x[:2]))
    assert xin.shape == (784, 2, 1)
    assert torch.equal(xin[:, :, 0].t(), torch.from_numpy(arrays["test_images"][:2].reshape(2, -1)).float() / 255)


def test_steps_come_from_the_sequence_and_may_not_disagree(tmp_path):
    def resolve(*argv):
        return resolve_train_config(build_parser().parse_args(["train", *argv]))

    assert resolve("--dataset", "sequential-fashion-mnist").steps == 28
    config = resolve("--dataset", "sequential-fashion-mnist", "--sequence", "pixels")
    assert (config.steps, config.encoding, config.data_options()["sequence"]) == (784, "sequence", "pixels")
    with pytest.raises(SpikepropError, match="T = 28.*leave --steps out"):
        resolve("--dataset", "sequential-fashion-mnist", "--steps", "10")
    with pytest.raises(SpikepropError, match="never a repeated image; use --encoding sequence"):
        resolve("--dataset", "sequential-fashion-mnist", "--encoding", "direct")
    with pytest.raises(SpikepropError, match="--encoding events.*static"):
        resolve("--encoding", "events")
    with pytest.raises(SpikepropError, match="--bin-us applies to the event datasets"):
        resolve("--bin-us", "1000")
    assert resolve("--dataset", "dvs-gesture").downsample == 4  # 128x128 -> 32x32 by default


# --- event files: format, binning, cache, errors ------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_event_files_are_read_through_tonic_and_binned_into_spike_frames(name, event_roots, no_network):
    ds = load(name, event_roots[name], steps=6)
    spec = events.EVENT_SETS[name]
    assert ds.sample_shape == spec.frame_shape() and ds.n_classes == spec.n_classes and ds.steps == 6
    x = ds.intensities(ds.train_x)
    assert x.shape == (len(ds.train_x), 6, *spec.frame_shape())
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    # every recording has spikes in most of its bins, and the labels cover the classes
    assert (x.flatten(2).sum(2) > 0).float().mean() > 0.8
    assert set(ds.train_y.tolist()) == set(range(spec.n_classes))
    xin = Encoder("events", 6)(x)
    assert xin.shape[:2] == (6, len(x)) and xin.stride(0) != 0


def test_binning_equals_a_hand_computed_count(tmp_path):
    from tonic.datasets import NMNIST
    from tonic.io import make_structured_array

    # t in us; T = 4 bins of w = (700 - 100) // 4 = 150 us from t = 100: [100, 250), [250, 400), [400, 550), [550, 700)
    x, y, t, p = [3, 3, 5, 3, 7, 0], [2, 2, 9, 2, 1, 0], [100, 200, 260, 549, 550, 700], [1, 1, 0, 1, 0, 1]
    ev = make_structured_array(x, y, t, p, dtype=NMNIST.dtype)
    counts = events.bin_events(ev, (34, 34, 2), 4)
    expected = np.zeros((4, 2, 34, 34), np.int16)
    expected[0, 1, 2, 3] = 2  # t = 100 and 200, pixel (3, 2), on
    expected[1, 0, 9, 5] = 1  # t = 260
    expected[2, 1, 2, 3] = 1  # t = 549
    expected[3, 0, 1, 7] = 1  # t = 550; the last event (t = 700 = 100 + 4 w) is in no bin (tonic's rule)
    assert np.array_equal(counts, expected)
    # fixed windows of 200 us from t = 0: [0, 200), [200, 400), [400, 600); t = 700 is past T W
    by_window = events.bin_events(ev, (34, 34, 2), 3, bin_us=200)
    assert by_window[0, 1, 2, 3] == 1 and by_window[1, 1, 2, 3] == 1 and by_window[1, 0, 9, 5] == 1
    assert by_window[2, 1, 2, 3] == 1 and by_window[2, 0, 1, 7] == 1 and by_window.sum() == 5
    # down-sampling by 2: x // 2, y // 2 on a 17x17 sensor
    small = events.bin_events(ev, (34, 34, 2), 4, downsample=2)
    assert small.shape == (4, 2, 17, 17) and small[0, 1, 1, 1] == 2 and small[1, 0, 4, 2] == 1
    # the same recording written as an N-MNIST .bin file and read back by the dataset path: the binarised frames
    events.write_nmnist_bin(tmp_path / "NMNIST" / "Train" / "3" / "a.bin", ev)
    events.write_nmnist_bin(tmp_path / "NMNIST" / "Test" / "3" / "b.bin", ev)
    ds = load("nmnist", tmp_path, steps=4)
    assert torch.equal(ds.intensities(ds.train_x)[0], torch.from_numpy(expected > 0).float())
    assert ds.train_y.tolist() == [3]


def test_a_missing_dataset_says_what_to_fetch_and_where_and_downloads_nothing(tmp_path, no_network):
    for name, url in (("nmnist", "garrickorchard.com"), ("dvs-gesture", "figshare.com"), ("shd", "zenkelab.org")):
        spec = events.EVENT_SETS[name]
        with pytest.raises(SpikepropError, match=f"{url}.*{tmp_path / spec.tonic_class}.*Nothing is downloaded"):
            load(name, tmp_path, steps=4)
    with pytest.raises(SpikepropError, match="not a directory"):
        load("shd", tmp_path / "none", steps=4)


def test_tonics_own_classes_would_download_where_spikeprops_do_not(event_roots, monkeypatch):
    """Why spikeprop reads through subclasses: tonic's NMNIST wants train.zip beside the folder and
    downloads it when absent, even with every recording extracted."""
    import tonic

    asked = []
    monkeypatch.setattr(tonic.datasets.NMNIST, "download", lambda self: asked.append(self.url))
    tonic.datasets.NMNIST(save_to=str(event_roots["nmnist"]), train=True)
    assert asked and "mendeley" in asked[0]
    offline = events._offline(tonic.datasets.NMNIST)
    tds = offline(save_to=str(event_roots["nmnist"]), train=True)
    assert len(tds) == 30 and tds.location_on_system.endswith("NMNIST")
    with pytest.raises(SpikepropError, match="never downloads"):
        tds.download()


def test_frames_are_cached_and_rebinned_when_a_source_changes(tmp_path, monkeypatch, capsys):
    root = MAKERS["shd"](tmp_path / "shd", n_train=20, n_test=20)
    first = load("shd", root, steps=5)
    assert "binning 20 train recordings" in capsys.readouterr().err

    def no_binning(*a, **k):
        raise AssertionError("binned again")

    with monkeypatch.context() as m:
        m.setattr(events, "bin_events", no_binning)
        again = load("shd", root, steps=5)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert load("shd", root, steps=5, downsample=7).sample_shape == (100,)  # other settings, other cache file
    cached = sorted((tmp_path / "cache" / "spikeprop" / "frames").glob("shd-train-*.npz"))
    assert len(cached) == 2
    for path in cached:  # a damaged cache file is binned again
        path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert torch.equal(load("shd", root, steps=5).train_x, first.train_x)
    assert "binning 20 train" in capsys.readouterr().err
    MAKERS["shd"](tmp_path / "shd", n_train=21, n_test=20, seed=5)  # the file changed: binned again
    assert len(load("shd", root, steps=5).train_x) == 21


def test_corrupt_event_files_are_one_line_errors(tmp_path):
    root = MAKERS["nmnist"](tmp_path / "n", n_train=10, n_test=10)
    path = next((root / "NMNIST" / "Train").glob("*/*.bin"))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SpikepropError, match=f"{path}.*corrupt or truncated"):
        load("nmnist", root, steps=4)
    root = MAKERS["shd"](tmp_path / "s", n_train=4, n_test=4)
    h5 = root / "SHD" / "shd_test.h5"
    h5.write_bytes(h5.read_bytes()[:500])
    with pytest.raises(SpikepropError, match="corrupt or truncated"):
        load("shd", root, steps=4)


# --- encodings in time: no shortcut for constant input on real sequences --------------------------


def test_overlay_and_modulation_apply_at_every_step():
    x = torch.rand(3, 5, 2, 4, 4).round()
    label = torch.eye(3) * 7.0
    xin = Encoder("events", 5)(x, overlay=label)
    assert xin.shape == (5, 3, 2, 4, 4)
    assert torch.equal(xin.flatten(2)[:, :, :3], torch.eye(3).expand(5, 3, 3))  # spikes: the label clamped to 1
    assert torch.equal(xin.flatten(2)[:, :, 3:], x.transpose(0, 1).flatten(2)[:, :, 3:])
    graded = Encoder("sequence", 5)(torch.rand(3, 5, 8), overlay=label)
    assert torch.equal(graded[:, :, :3], (torch.eye(3) * 7).expand(5, 3, 3))  # currents as they are
    with pytest.raises(SpikepropError, match="T = 4"):
        Encoder("events", 4)(x)


def test_sigprop_does_not_take_the_constant_input_shortcut_on_a_sequence(tmp_path, monkeypatch, event_roots):
    from spikeprop import eligibility

    config = TrainConfig(dataset="nmnist", data_dir=str(event_roots["nmnist"]), encoding="events", steps=6, hidden=(8,),
                         epochs=1, batch_size=8)
    ds = load("nmnist", config.data_dir, **config.data_options())
    net, rule, encoder = build(config, ds)
    seen = []
    original = eligibility.MembraneTraces.__init__

    def spy(self, net, constant_input=False, first_synapse=None):
        seen.append((constant_input, first_synapse is None))
        original(self, net, constant_input, first_synapse)

    monkeypatch.setattr(eligibility.MembraneTraces, "__init__", spy)
    rule.train_step(ds.intensities(ds.train_x[:8]), ds.train_y[:8])
    assert seen == [(False, True), (True, False)]  # the data stream per step; only the label stream is constant
    # pepita's pass 2 is x[t] - F e at every step
    pep = RULES["pepita"](net, TrainConfig(rule="pepita", dataset="nmnist", encoding="events", steps=6), encoder)
    x = ds.intensities(ds.train_x[:4])
    Fe = torch.randn(4, ds.n_features)
    x2 = pep.modulated_input(x, Fe, encoder(x), None)
    assert x2.shape == (6, 4, *ds.sample_shape)
    for t in (0, 5):
        assert torch.allclose(x2[t].flatten(1), x[:, t].flatten(1) - Fe)


# --- every rule, the CLI and Lava -----------------------------------------------------------------


def tiny(rule, dataset, data_dir, **kw):
    encoding = "sequence" if dataset == "sequential-fashion-mnist" else "events"
    values = {"rule": rule, "dataset": dataset, "data_dir": str(data_dir), "encoding": encoding, "hidden": (12,),
              "epochs": 1, "batch_size": 10, "lr": 3e-3, "vth": 0.5, **kw}
    if dataset == "sequential-fashion-mnist":
        values.setdefault("steps", 28)
    return TrainConfig.from_dict(values)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_trains_on_event_frames(rule, tmp_path, event_roots):
    config = tiny(rule, "nmnist", event_roots["nmnist"], steps=6)
    summary = train(config, tmp_path / "run", progress=False, log=lambda s: None)
    ckpt = runs.load_checkpoint(tmp_path / "run")
    first = build(config, load("nmnist", config.data_dir, **config.data_options()))[0]
    changed = [not torch.equal(ckpt["network"][k], v) for k, v in first.state_dict().items()]
    assert any(changed) and all(torch.isfinite(v).all() for v in ckpt["network"].values())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["encoding"] == "events"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_trains_on_sequential_fashion_mnist_but_ff_refuses(rule, tmp_path):
    write_idx_set(tmp_path, n_train=20, n_test=10)
    config = tiny(rule, "sequential-fashion-mnist", tmp_path)
    if rule == "ff":
        with pytest.raises(SpikepropError, match="every step.*hide image columns"):
            train(config, tmp_path / "run", progress=False, log=lambda s: None)
        return
    summary = train(config, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["steps"] == 28 and summary["firing_rate"][0] > 0


def test_old_config_json_without_the_temporal_fields_still_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--hidden", "8", "--steps", "2", "--epochs", "1", "--no-progress"]) == 0
    raw = json.loads((run / runs.CONFIG).read_text())
    for key in ("sequence", "bin_us", "downsample"):
        raw.pop(key)
    (run / runs.CONFIG).write_text(json.dumps(raw))
    assert main(["evaluate", str(run)]) == 0


@pytest.mark.lava
@pytest.mark.parametrize("dataset", ["nmnist", "sequential-fashion-mnist"])
def test_verify_a_temporal_run_on_lava(dataset, tmp_path, event_roots, capsys):
    if dataset == "nmnist":
        data_dir, extra = event_roots["nmnist"], ["--steps", "6"]
    else:
        data_dir, extra = tmp_path / "idx", []
        data_dir.mkdir()
        write_idx_set(data_dir, n_train=20, n_test=10)
    run = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--data-dir", str(data_dir), "--rule", "bptt", "--hidden", "12",
                 "--epochs", "1", "--batch-size", "10", "--vth", "0.5", "--out", str(run), "--no-progress", *extra]) == 0
    assert runs.read_json(run / runs.SUMMARY)["firing_rate"][0] > 0  # spikes to compare
    assert main(["verify", str(run), "--limit", "5"]) == 0
    report = runs.read_json(run / "verify.json")
    assert report["bit_exact"] and report["identical_spike_trains"]["float_vs_lava_floating_pt"] == [1.0]
    assert report["encoding"] == ("events" if dataset == "nmnist" else "sequence")
