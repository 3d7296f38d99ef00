"""Recurrent LIF layers: the time loop against a hand-written recurrence, exact traces of W_rec against
autograd through the unrolled loop, and every rule training a recurrent net."""

import pytest
import torch
from torch.nn import functional as F

from spikeprop import SpikepropError, runs
from spikeprop.cli import main
from spikeprop.eligibility import MembraneTraces
from spikeprop.layers import parse_layers
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams, LIFState, lif_step
from spikeprop.rules import RULES


def rec_net(gen, spec="7r,5r", du=1.0, dv=0.2, vth=0.5):
    net = Network(parse_layers(spec, (6,)), LIFParams(du=du, dv=dv, vth=vth), generator=gen, gain=2.5, n_classes=3)
    return net.double()


def test_the_time_loop_adds_the_previous_steps_own_spikes(gen):
    net = rec_net(gen, du=0.4)
    x = 2 * torch.rand(9, 4, 6, generator=gen, dtype=torch.float64)
    res = simulate(net, x, record=True)
    # hand-written: a[t] = W s_in[t] + W_rec s[t-1], s[-1] = 0, layer by layer in the same clock
    s_in = x
    for layer in range(2):
        w, w_rec, b = net.weights[layer], net.recurrent_weight(layer), net.biases[layer]
        state = LIFState.zeros(4, w.shape[0], dtype=torch.float64)
        prev = torch.zeros(4, w.shape[0], dtype=torch.float64)
        out = []
        for t in range(9):
            step = lif_step(F.linear(s_in[t], w) + F.linear(prev, w_rec), state, net.params[layer], b)
            state, prev = step.state, step.s
            out.append(step.s)
        s_in = torch.stack(out)
        assert torch.equal(s_in, res.spikes[layer]) and 0 < float(s_in.mean()) < 1
    assert net.describe()["layers"] == "7r,5r" and Network.from_description(net.describe()).synapses == net.synapses


def autograd_grads(net, x, loss_fn):
    sums = {}

    def observer(layer, t, s_in, step):
        sums[layer] = step.v_pre if t == 0 else sums[layer] + step.v_pre

    simulate(net, x, reset_grad="constant", observer=observer)
    total = sum(loss_fn(layer, sums[layer] / x.shape[0]) for layer in sums)
    return torch.autograd.grad(total, [*net.weights, *net.biases, *net.recurrent.values()])


def loss(layer, z):
    target = torch.linspace(-1, 1, z.shape[1], dtype=z.dtype)
    return ((torch.tanh(z) - target) ** 2).sum() * (layer + 1)


@pytest.mark.parametrize("du", [1.0, 0.3])
def test_recurrent_traces_equal_autograd_with_the_spikes_held_constant(gen, du):
    # The membrane-only gradient: spikes (the recurrent input included) and reset amounts are
    # constants, so W_rec's trace is the presynaptic trace of the layer's own past spikes.
    net = rec_net(gen, du=du)
    x = 2 * torch.rand(12, 4, 6, generator=gen, dtype=torch.float64)
    assert all(c.sum() > 0 for c in simulate(net, x).counts)
    ref = autograd_grads(net, x, loss)
    tr = MembraneTraces(net)
    with torch.no_grad():
        simulate(net, x, reset_grad="constant", observer=tr)
    gw, gb, gr = [], [], []
    for layer in range(net.n_layers):
        z = tr.mean_v(layer).requires_grad_(True)
        (dz,) = torch.autograd.grad(loss(layer, z), (z,))
        gw.append(tr.weight_grad(layer, dz))
        gb.append(tr.bias_grad(layer, dz))
        gr.append(tr.recurrent_grad(layer, dz))
    for r, g in zip(ref, gw + gb + gr):
        assert torch.allclose(r, g, atol=1e-10), (r - g).abs().max()
    assert float(gr[0].abs().max()) > 0


def test_bptt_reaches_the_recurrent_weights_through_time(gen):
    from snntorch import surrogate

    net = rec_net(gen).float()  # snnTorch's surrogate spikes are float32
    x = torch.rand(6, 3, 6, generator=gen)
    res = simulate(net, x, spike_fn=surrogate.atan())
    F.cross_entropy(res.logits, torch.tensor([0, 1, 2])).backward()
    assert all(float(w.grad.abs().max()) > 0 for w in net.recurrent.values())


def test_recurrence_is_for_dense_layers():
    with pytest.raises(SpikepropError, match="recurrent connections are for Dense layers"):
        parse_layers("8rc3", (1, 8, 8))


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_trains_a_recurrent_net(tmp_path, name):
    out = tmp_path / name
    assert main(["train", "--rule", name, "--layers", "64r", "--epochs", "4", "--steps", "6", "--out", str(out),
                 "--no-progress"]) == 0
    state = runs.load_checkpoint(out)["network"]
    assert "recurrent.0" in state and state["recurrent.0"].shape == (64, 64)
    final = runs.read_json(out / runs.SUMMARY)["test_accuracy"]
    assert final > (0.3 if name in ("shallow", "ff") else 0.6), final
    from spikeprop.data import load
    from spikeprop.train import build_network, read_config

    initial = build_network(read_config(out), load("digits")).recurrent_weight(0)
    trained = not torch.equal(initial, state["recurrent.0"])
    assert trained == (name != "shallow")  # every rule but the read-out-only baseline trains W_rec
