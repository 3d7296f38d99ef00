"""Representation analysis: hand-computed metrics and the `analyze` command on a tiny trained run."""

import json
import math

import pytest
import torch

from spikeprop import SpikepropError
from spikeprop.analysis import ANALYSIS, FIGURES, ensembles, hoyer, overlaps, summarize
from spikeprop.cli import main
from spikeprop.evaluate import activity, synops
from spikeprop.network import Network
from spikeprop.neurons import LIFParams
from spikeprop.train import load_run


def test_hoyer_known_values():
    x = torch.tensor([[0.0, 3.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    h = hoyer(x)
    assert h[0] == pytest.approx(1.0)  # one active unit
    assert h[1] == pytest.approx(0.0, abs=1e-12)  # uniform activity
    assert h[2] == pytest.approx((2 - math.sqrt(2)) / (2 - 1))  # |x|_1/|x|_2 = sqrt(2), sqrt(n) = 2
    assert math.isnan(h[3])  # no activity: undefined, left out of means
    with pytest.raises(SpikepropError):
        hoyer(torch.ones(3, 1))


def test_ensembles_and_overlaps_by_hand():
    # 3 classes x 4 samples, 30 units: class 0 drives units 0 and 4, class 1 units 1 and 4 (and unit 7
    # in only one of its samples: median 0), class 2 nothing. The 90 % quantile of each class is 0.
    rows, labels = [], []
    for c, units in ((0, (0, 4)), (1, (1, 4)), (2, ())):
        for k in range(4):
            r = torch.zeros(30)
            r[list(units)] = 5.0
            if c == 1 and k == 0:
                r[7] = 9.0
            rows.append(r)
            labels.append(c)
    member = ensembles(torch.stack(rows), torch.tensor(labels), 3)
    assert [torch.nonzero(m).flatten().tolist() for m in member] == [[0, 4], [1, 4], []]
    inter, jac = overlaps(member)
    assert inter.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert jac[0, 1] == pytest.approx(1 / 3) and jac[0, 0] == 1.0 and jac[2, 2] == 0.0


def test_summarize_by_hand():
    counts = torch.tensor([[4.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    mean_v = torch.tensor([[0.9, -0.5, -0.2], [0.0, 0.4, 0.4], [-1.0, -1.0, -1.0], [0.3, 0.3, 0.3]])
    data = {"counts": [counts], "mean_v": [mean_v], "labels": torch.tensor([0, 1, 1, 0]),
            "predictions": torch.tensor([0, 1, 1, 1]), "synops_per_sample": 7.0, "steps": 4}
    s = summarize(data, 2)
    lay = s["layers"][0]
    assert s["correct"] == 3 and s["accuracy"] == 0.75
    assert lay["firing_rate"] == pytest.approx(9 / (12 * 4))
    assert lay["silent_fraction"] == 0.0
    assert lay["negative_voltage_fraction"] == pytest.approx(5 / 12)
    # correct samples 0, 1, 2; sample 2 is silent (excluded); counts: one-hot -> 1, two equal units -> h([0,2,2])
    h2 = (math.sqrt(3) - math.sqrt(2)) / (math.sqrt(3) - 1)
    assert lay["hoyer_counts"] == pytest.approx((1 + h2) / 2)
    assert lay["hoyer_counts_per_class"] == pytest.approx([1.0, h2])
    assert lay["empty_samples"] == {"counts": 1, "voltage": 1}
    # voltages rectified: [0.9, 0, 0] -> 1, [0, .4, .4] -> h2
    assert lay["hoyer_voltage"] == pytest.approx((1 + h2) / 2)


def test_synops_by_hand():
    net = Network([3, 2, 4], LIFParams())
    xin = torch.zeros(5, 1, 3)
    xin[0, 0, :2] = 1.0  # 2 non-zero inputs x fan-out 2
    xin[3, 0, 2] = 0.5  # 1 more
    assert synops(net, xin, [torch.tensor([[3.0, 1.0]])]) == 3 * 2 + 4 * 4


def test_analyze_command_on_a_tiny_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--hidden", "24,12", "--epochs", "1", "--steps", "4", "--no-progress"]) == 0
    assert main(["analyze", str(run), "--limit", "200"]) == 0
    assert "SynOps per sample" in capsys.readouterr().out
    result = json.loads((run / ANALYSIS).read_text())
    assert result["samples"] == 200 and 0 < result["correct"] <= 200
    config, ds, net, rule, encoder = load_run(run)
    act = activity(net, encoder, ds, n=200)
    for lay, rate, silent in zip(result["layers"], act["firing_rate"], act["silent_fraction"]):
        assert lay["firing_rate"] == pytest.approx(rate, rel=1e-5)
        assert lay["silent_fraction"] == pytest.approx(silent)
        assert 0.0 <= lay["negative_voltage_fraction"] <= 1.0
        for key in ("counts", "voltage"):  # null exactly when every correct sample is silent in the layer
            h = lay[f"hoyer_{key}"]
            assert (h is None) == (lay["empty_samples"][key] == result["correct"])
            assert h is None or 0.0 <= h <= 1.0
        for ens in lay["ensembles"].values():
            assert len(ens["sizes"]) == 10 and all(0 <= s <= lay["neurons"] for s in ens["sizes"])
            assert [ens["intersections"][c][c] for c in range(10)] == ens["sizes"]
            assert 0.0 <= ens["jaccard_mean"] <= 1.0
    assert result["synops_per_sample"] == pytest.approx(act["synops_per_sample"], rel=1e-6)
    for name in FIGURES:
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["analyze", str(run), "--limit", "0"]) == 2


def test_rate_encoded_analysis_classifies_the_spikes_it_analyses(tmp_path):
    # Under rate encoding two passes draw different spikes: the "correctly classified" samples
    # must be chosen on the pass whose activity is analysed, not on a second draw.
    from spikeprop.analysis import analyze
    from spikeprop.network import simulate

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--hidden", "32", "--steps", "4", "--encoding", "rate",
                 "--no-progress"]) == 0
    config, ds, net, rule, encoder = load_run(run)
    state = encoder.generator.get_state()
    _, data = analyze(net, rule, ds, limit=200)
    encoder.generator.set_state(state)
    x = ds.intensities(ds.test_x[:200])
    xin = rule.deploy_input(rule.options, x, encoder, ds.n_classes)
    assert torch.equal(data["predictions"], simulate(net, xin).logits.argmax(1))
    assert torch.equal(data["counts"][0], simulate(net, xin).counts[0])  # the same draw
    # a second draw disagrees on some samples: the old two-pass selection was not the same thing
    assert not torch.equal(rule.predict(x).argmax(1), data["predictions"])
