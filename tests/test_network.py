"""The time loop: shapes, timing, seeding, and the exact membrane-only gradient."""

import torch
from torch.nn import functional as F

from spikeprop.eligibility import MembraneTraces
from spikeprop.network import Network, global_time, simulate
from spikeprop.neurons import LIFParams


def make_net(sizes=(6, 5, 4, 3), seed=0, **kw):
    return Network(sizes, LIFParams(**kw), generator=torch.Generator().manual_seed(seed), gain=2.0)


def test_simulate_shapes_and_counts(gen):
    net = make_net()
    x = torch.rand(7, 2, 6, generator=gen)
    res = simulate(net, x, record=True)
    assert [s.shape for s in res.spikes] == [(7, 2, 5), (7, 2, 4)]
    for s, c in zip(res.spikes, res.counts):
        assert torch.equal(s.sum(0), c)
    assert torch.allclose(res.logits, net.readout(res.counts[-1] / 7))


def test_layer_two_sees_layer_one_spikes_of_the_same_local_step():
    # One neuron per layer, weight 2 > vth: layer 2 fires at the local step where layer 1 fires.
    net = Network((1, 1, 1, 2), LIFParams(dv=0.0, vth=1.0))
    with torch.no_grad():
        net.weights[0].fill_(0.4)
        net.weights[1].fill_(2.0)
    x = torch.ones(6, 1, 1)
    res = simulate(net, x, record=True)
    s1, s2 = res.spikes[0][:, 0, 0], res.spikes[1][:, 0, 0]
    assert s1.tolist() == [0, 0, 1, 0, 0, 1]
    assert torch.equal(s1, s2)
    # In Lava's clock each Dense adds one step: layer 1 at t+1, layer 2 at t+2.
    g1, g2 = global_time(res.spikes[0], 0, 9), global_time(res.spikes[1], 1, 9)
    assert g1[:, 0, 0].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0]
    assert g2[:, 0, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 0]


def test_same_seed_same_weights_different_seed_different():
    a, b, c = make_net(seed=3), make_net(seed=3), make_net(seed=4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.weights[0], c.weights[0])


def autograd_membrane_grads(net, x, loss_fn):
    """Reference: autograd through the unrolled loop with hard spikes and constant resets."""
    sums = {}

    def observer(layer, t, s_in, step):
        sums[layer] = step.v_pre if t == 0 else sums[layer] + step.v_pre

    simulate(net, x, reset_grad="constant", observer=observer)
    T = x.shape[0]
    total = sum(loss_fn(layer, sums[layer] / T) for layer in sums)
    params = [*net.weights, *net.biases]
    return torch.autograd.grad(total, params)


def trace_membrane_grads(net, x, loss_fn, constant_input=False):
    tr = MembraneTraces(net, constant_input=constant_input)
    with torch.no_grad():
        simulate(net, x, reset_grad="constant", observer=tr)
    gw, gb = [], []
    for layer in range(net.n_layers):
        z = tr.mean_v(layer).requires_grad_(True)
        (dz,) = torch.autograd.grad(loss_fn(layer, z), (z,))
        gw.append(tr.weight_grad(layer, dz))
        gb.append(tr.bias_grad(layer, dz))
    return gw + gb


def quadratic_loss(layer, z):
    target = torch.linspace(-1, 1, z.shape[1], dtype=z.dtype)
    return ((torch.tanh(z) - target) ** 2).sum() * (layer + 1)


def test_eligibility_trace_gradient_equals_autograd(gen):
    # Spiking regime (resets happen): traces must equal autograd with frozen spikes and resets.
    for du in (1.0, 0.3):
        net = make_net(du=du, dv=0.2, vth=0.5).double()
        with torch.no_grad():
            net.weights[1].abs_()  # layer 2 must fire too
        x = 3 * torch.rand(12, 4, 6, generator=gen, dtype=torch.float64)
        res = simulate(net, x)
        assert all(c.sum() > 0 for c in res.counts)
        ref = autograd_membrane_grads(net, x, quadratic_loss)
        got = trace_membrane_grads(net, x, quadratic_loss)
        for r, g in zip(ref, got):
            assert torch.allclose(r, g, atol=1e-10), (r - g).abs().max()


def test_eligibility_trace_gradient_matches_finite_differences(gen):
    # Below threshold the network is smooth in W: central differences are an independent reference.
    net = Network((5, 4, 3), LIFParams(du=0.5, dv=0.1, vth=1e6), generator=gen).double()
    x = torch.rand(9, 3, 5, generator=gen, dtype=torch.float64)

    def loss_of_net():
        tr = MembraneTraces(net)
        with torch.no_grad():
            simulate(net, x, reset_grad="constant", observer=tr)
        return float(quadratic_loss(0, tr.mean_v(0)))

    grads = trace_membrane_grads(net, x, quadratic_loss)
    eps = 1e-6
    for p, g in ((net.weights[0], grads[0]), (net.biases[0], grads[1])):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), 3):
            old = float(flat[i])
            flat[i] = old + eps
            up = loss_of_net()
            flat[i] = old - eps
            down = loss_of_net()
            flat[i] = old
            assert abs((up - down) / (2 * eps) - float(g.view(-1)[i])) < 1e-6


def test_bptt_gradient_flows_through_surrogate(gen):
    from snntorch import surrogate

    net = make_net()
    x = torch.rand(5, 2, 6, generator=gen)
    res = simulate(net, x, spike_fn=surrogate.atan())
    F.cross_entropy(res.logits, torch.tensor([0, 1])).backward()
    assert net.weights[0].grad is not None and net.weights[0].grad.abs().sum() > 0


def test_time_constant_input_fast_path_is_exact(gen):
    # An expanded (stride-0) input takes the computed-once first Dense; a copied one does not.
    net = make_net(vth=0.5)
    x = torch.rand(3, 6, generator=gen)
    expanded = x.unsqueeze(0).expand(9, 3, 6)
    a, b = simulate(net, expanded, record=True), simulate(net, expanded.clone(), record=True)
    assert expanded.stride(0) == 0 and expanded.clone().stride(0) != 0
    for sa, sb in zip(a.spikes, b.spikes):
        assert torch.equal(sa, sb)
    for va, vb in zip(a.v, b.v):
        # equal up to float32 rounding: the per-step GEMMs read rows at other memory offsets, and
        # AVX-512 kernels may then sum in another order (bit-equal on some CPUs, not on all)
        torch.testing.assert_close(va, vb, rtol=1e-6, atol=1e-6)
    assert a.counts[0].sum() > 0


def test_constant_input_trace_shortcut_is_exact(gen):
    net = make_net(du=0.4, dv=0.2, vth=0.5).double()
    x = 3 * torch.rand(4, 6, generator=gen, dtype=torch.float64)
    const = x.unsqueeze(0).expand(10, 4, 6)
    full = trace_membrane_grads(net, const.clone(), quadratic_loss)
    short = trace_membrane_grads(net, const, quadratic_loss, constant_input=True)
    ref = autograd_membrane_grads(net, const.clone(), quadratic_loss)
    for f, s, r in zip(full, short, ref):
        assert torch.allclose(f, s, atol=1e-12) and torch.allclose(r, s, atol=1e-10)
