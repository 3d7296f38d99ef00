"""Convolutional layers: the --layers syntax, the conv synapse against torch, exact traces against
autograd, SynOps against a brute-force count, and every rule training a conv net on digits."""

import pytest
import torch
from torch.nn import functional as F

from spikeprop import SpikepropError, runs
from spikeprop.cli import main
from spikeprop.eligibility import MembraneTraces
from spikeprop.evaluate import synops
from spikeprop.layers import Conv2d, Dense, describe, parse_layers
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams
from spikeprop.rules import RULES

IMAGE = (1, 8, 8)


def conv_net(gen, spec="4c3s2,6c3,5", du=1.0, dv=0.2, vth=0.5):
    return Network(parse_layers(spec, IMAGE), LIFParams(du=du, dv=dv, vth=vth), generator=gen, gain=2.5,
                   n_classes=3).double()


def test_layer_syntax_and_shapes():
    layers = parse_layers("16c5s2,32c3s2p0,32c3x1p1x0,256", (1, 28, 28))
    assert [s.out_shape for s in layers] == [(16, 14, 14), (32, 6, 6), (32, 6, 6), (256,)]
    assert layers[0] == Conv2d((1, 28, 28), 16, (5, 5), (2, 2), (2, 2)) and isinstance(layers[3], Dense)
    assert layers[3].in_shape == (32, 6, 6) and layers[3].n_in == 32 * 6 * 6
    assert parse_layers(describe(layers), (1, 28, 28)) == layers  # the spec round-trips
    for spec, phrase in [("16c9p0", "larger than its 8x8 input"), ("64,8c3", "after a Dense layer"), ("16x", "not a layer"),
                         ("", "one or more"), ("0c3", "at least one"), ("8c3p3", "more than half the kernel"),
                         ("8c40", "kernels up to")]:
        with pytest.raises(SpikepropError, match=phrase):
            parse_layers(spec, IMAGE)


def test_conv_synapse_is_torch_cross_correlation_and_its_weight_gradient(gen):
    syn = Conv2d((3, 9, 7), 4, (3, 2), (2, 1), (1, 0))
    w = torch.randn(*syn.weight_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.rand(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    a = syn.current(s, w)
    ref = torch.nn.Conv2d(3, 4, (3, 2), (2, 1), (1, 0), bias=False).double()
    with torch.no_grad():
        ref.weight.copy_(w)
    assert a.shape == (2, *syn.out_shape) and torch.allclose(a, ref(s))
    dz = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad((a * dz).sum(), w)
    assert torch.allclose(syn.weight_grad(dz, s), g)


def autograd_grads(net, x, loss_fn):
    sums = {}

    def observer(layer, t, s_in, step):
        sums[layer] = step.v_pre if t == 0 else sums[layer] + step.v_pre

    simulate(net, x, reset_grad="constant", observer=observer)
    total = sum(loss_fn(layer, sums[layer] / x.shape[0]) for layer in sums)
    return torch.autograd.grad(total, [*net.weights, *net.biases])


def loss(layer, z):
    target = torch.linspace(-1, 1, z[0].numel(), dtype=z.dtype).view(z.shape[1:])
    return ((torch.tanh(z) - target) ** 2).sum() * (layer + 1)


@pytest.mark.parametrize("du", [1.0, 0.3])
@pytest.mark.parametrize("constant", [False, True])
def test_conv_eligibility_traces_equal_autograd(gen, du, constant):
    net = conv_net(gen, du=du)
    x = 2 * torch.rand(1 if constant else 10, 3, *IMAGE, generator=gen, dtype=torch.float64)
    x = x.expand(10, *x.shape[1:]) if constant else x
    res = simulate(net, x)
    assert all(c.sum() > 0 for c in res.counts), "every layer must spike (resets happen)"
    ref = autograd_grads(net, x, loss)
    tr = MembraneTraces(net, constant_input=constant)
    with torch.no_grad():
        simulate(net, x, reset_grad="constant", observer=tr)
    got_w, got_b = [], []
    for layer in range(net.n_layers):
        z = tr.mean_v(layer).requires_grad_(True)
        (dz,) = torch.autograd.grad(loss(layer, z), (z,))
        got_w.append(tr.weight_grad(layer, dz))
        got_b.append(tr.bias_grad(layer, dz))
    for r, g in zip(ref, got_w + got_b):
        assert r.shape == g.shape and torch.allclose(r, g, atol=1e-10), (r - g).abs().max()


def test_conv_synops_equal_a_brute_force_count(gen):
    net = conv_net(gen)
    x = (torch.rand(6, 2, *IMAGE, generator=gen) < 0.3).double()
    res = simulate(net, x, record=True)
    # brute force: every event at an input position adds into each output neuron whose window covers it
    expected = 0.0
    inputs = [x, *res.spikes]
    for syn, s in zip([*net.synapses, Dense((net.sizes[-2],), 3)], inputs):
        for t in range(x.shape[0]):
            st = s[t].reshape(2, *syn.in_shape)
            if isinstance(syn, Conv2d):
                for o in range(syn.out_channels):
                    w = torch.zeros(syn.weight_shape, dtype=torch.float64)
                    w[o] = 1.0
                    expected += float(F.conv2d((st != 0).double(), w, stride=syn.stride, padding=syn.padding).sum())
            else:
                expected += float((st != 0).sum()) * syn.n_out
    assert synops(net, x, res.counts) == expected


def test_network_description_round_trips(gen):
    net = conv_net(gen)
    back = Network.from_description(net.describe())
    assert back.synapses == net.synapses and back.sizes == net.sizes


def test_pepita_weight_mirroring_refuses_conv_layers(tmp_path, capsys):
    assert main(["train", "--model", "conv", "--rule", "pepita", "--pepita-wm", "on", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "convolutional layer has no dense matrix" in capsys.readouterr().err


def test_layers_and_hidden_are_exclusive_and_shapes_must_chain(tmp_path, capsys):
    assert main(["train", "--layers", "8c3", "--hidden", "8", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["train", "--layers", "8c11p0", "--out", str(tmp_path / "x")]) == 2
    assert "larger than its 8x8 input" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_trains_a_conv_net_on_digits(tmp_path, name):
    out = tmp_path / name
    assert main(["train", "--model", "conv", "--rule", name, "--epochs", "5", "--out", str(out), "--no-progress"]) == 0
    config = runs.read_json(out / runs.CONFIG)
    assert config["model"] == "conv" and config["layers"] == "16c3s2,64"
    final = runs.read_json(out / runs.SUMMARY)["test_accuracy"]
    # shallow trains only its read-out on random conv and Dense layers: above chance is its bar
    assert final > (0.15 if name == "shallow" else 0.45), final


def test_analysis_of_a_conv_run_reports_feature_maps_per_channel(tmp_path):
    import json

    run = tmp_path / "run"
    assert main(["train", "--model", "conv", "--epochs", "2", "--out", str(run), "--no-progress"]) == 0
    assert main(["analyze", str(run), "--limit", "60"]) == 0
    a = json.loads((run / "analysis.json").read_text())
    conv, dense = a["layers"]
    assert conv["shape"] == [16, 4, 4] and conv["neurons"] == 256 and "channels" not in dense
    rates = conv["channels"]["firing_rate"]
    assert len(rates) == 16 and abs(sum(rates) / 16 - conv["firing_rate"]) < 1e-9  # equal positions per channel
    assert conv["synops_per_sample"] + dense["synops_per_sample"] < a["synops_per_sample"]  # plus the input's


def test_ff_label_planes_add_input_channels(tmp_path, gen):
    from spikeprop.encoders import Encoder
    from spikeprop.rules.ff import ForwardForward

    opts = {"label": "planes", "label_scale": 2.0}
    assert ForwardForward.input_shape(opts, (1, 8, 8), 10) == (11, 8, 8)
    assert ForwardForward.input_shape({}, (1, 8, 8), 10) == (1, 8, 8)  # features: the image as it is
    x = torch.rand(3, 1, 8, 8, generator=gen)
    xin = ForwardForward.deploy_input(opts, x, Encoder("direct", 4), 10)
    assert xin.shape == (4, 3, 11, 8, 8) and torch.allclose(xin[:, :, :10], torch.full((4, 3, 10, 8, 8), 0.2))
    assert torch.equal(xin[0, :, 10:], x)
    with pytest.raises(SpikepropError, match="adds label channels to an image"):
        ForwardForward.input_shape(opts, (64,), 10)
    run = tmp_path / "run"
    assert main(["train", "--model", "conv", "--rule", "ff", "--ff-label", "planes", "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 0
    assert runs.load_checkpoint(run)["network"]["weights.0"].shape == (16, 11, 3, 3)
