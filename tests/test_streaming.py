"""Step-by-step (memory flat in T) versions of what used to materialise [T, B, N] tensors give the
same numbers as the batch-wide computations they replace, written out here as references."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hardware import loihi
from hardware.emulator import emulate
from hardware.loihi import FixedLayer, FixedNetwork, calibrate, time_constant_map, time_constant_view
from spikeprop.analysis import collect
from spikeprop.data import Dataset
from spikeprop.encoders import Encoder
from spikeprop.evaluate import activity, nonzero_inputs, synops
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams


def two_layer_net(dtype=torch.float32, n_in=12):
    net = Network((n_in, 9, 7, 4), [LIFParams(du=1.0, dv=0.15, vth=0.6), LIFParams(du=0.5, dv=0.1, vth=0.4)],
                  generator=torch.Generator().manual_seed(0), gain=3.0).to(dtype)
    with torch.no_grad():
        net.readout.bias.copy_(torch.linspace(-0.3, 0.3, 4, dtype=dtype))
    return net


def inputs(kind: str, T=11, B=6, n_in=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, n_in, generator=g)
    x[x < 0.3] = 0.0  # zero pixels: inputs that cost no synaptic operation
    return Encoder(kind, T, torch.Generator().manual_seed(seed + 1))(x)


@pytest.mark.parametrize("kind", ["direct", "rate", "latency"])
def test_nonzero_inputs_and_synops_equal_the_mask_count(kind):
    xin = inputs(kind)
    if kind == "direct":
        assert xin.stride(0) == 0  # the case counted once and multiplied by T
    mask_count = int((xin != 0).sum())
    assert 0 < mask_count < xin.numel()
    assert nonzero_inputs(xin) == mask_count == nonzero_inputs(xin.contiguous())
    net = two_layer_net()
    counts = simulate(net, xin).counts
    reference = float((xin != 0).sum()) * net.sizes[1] + sum(float(c.sum()) * net.sizes[i + 2] for i, c in enumerate(counts))
    assert synops(net, xin, counts) == reference
    assert nonzero_inputs(xin[:0]) == 0


def tiny_dataset(n=40, n_in=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, n_in, generator=g) * 16).round()
    x[x < 5] = 0
    y = torch.randint(0, 4, (n,), generator=g)
    return Dataset("tiny", x, y, x, y, 4, 16.0)


@pytest.mark.parametrize("kind", ["direct", "rate"])
def test_activity_and_collect_equal_one_recorded_run(kind):
    ds, net = tiny_dataset(), two_layer_net()
    x = ds.intensities(ds.test_x)
    act = activity(net, Encoder(kind, 9, torch.Generator().manual_seed(5)), ds, n=40)
    ref = simulate(net, Encoder(kind, 9, torch.Generator().manual_seed(5))(x), record=True)
    assert act["firing_rate"] == [float(c.mean()) / 9 for c in ref.counts]
    ref_in = Encoder(kind, 9, torch.Generator().manual_seed(5))(x)
    assert act["synops_per_sample"] == synops(net, ref_in, ref.counts) / 40
    # analysis.collect in batches of 16: sample 0's raster recorded step by step, per-sample counts and
    # mean voltages as one whole recorded run gives them
    enc = Encoder(kind, 9, torch.Generator().manual_seed(5))
    data = collect(net, lambda xb, yb: enc(xb), lambda xb: simulate(net, enc(xb)).logits, ds, limit=40, batch_size=16)
    enc.generator.manual_seed(5)
    firsts = []
    for i in range(0, 40, 16):  # per batch, collect draws the drive, then predict draws again
        firsts.append(simulate(net, enc(x[i : i + 16]), record=True))
        enc(x[i : i + 16])
    for layer in range(net.n_layers):
        assert torch.equal(data["raster"][layer], firsts[0].spikes[layer][:, 0])
        assert torch.equal(data["counts"][layer], torch.cat([r.counts[layer] for r in firsts]))
        assert torch.allclose(data["mean_v"][layer], torch.cat([r.v[layer].mean(0) for r in firsts]), atol=1e-6)
    assert data["raster"][0].any() and data["steps"] == 9


@torch.no_grad()
def recorded_calibration(net, x):
    """calibrate() as it was: a recorded run, the read-out's currents on the stacked spikes, a cumsum over T."""
    peak = [0.0] * net.n_layers

    def observer(layer, t, s_in, step):
        peak[layer] = max(peak[layer], float(step.state.u.abs().max()), float(step.v_pre.abs().max()))

    res = simulate(net, x.to(net.readout.weight.dtype), observer=observer, record=True)
    a = F.linear(res.spikes[-1], net.readout.weight)
    partial = torch.cumsum(a + net.readout.bias, dim=0)
    return peak, max(float(a.abs().max()), float(partial.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["direct", "rate"])
def test_calibrate_equals_the_recorded_reference(kind, dtype):
    net = two_layer_net(dtype)
    for T, B in ((11, 6), (40, 33)):
        x = inputs(kind, T=T, B=B)
        cal = calibrate(net, x)
        peak, readout_peak = recorded_calibration(net, x)
        assert cal.peak == peak and cal.readout_peak == readout_peak  # bit for bit
        assert all(p > 0 for p in cal.peak) and cal.readout_peak > 0


def test_time_constant_views_stay_views():
    x = torch.rand(3, 5).unsqueeze(0).expand(7, 3, 5)
    d = time_constant_map(x, torch.Tensor.double)
    assert d.dtype == torch.float64 and d.stride(0) == 0 and torch.equal(d, x.contiguous().double())
    assert time_constant_view(x).shape == (1, 3, 5)
    y = torch.rand(7, 3, 5)
    assert time_constant_view(y) is y and torch.equal(time_constant_map(y, torch.Tensor.double), y.double())


def test_emulate_records_spikes_without_u_and_v():
    rng = np.random.default_rng(4)

    def layer(n_in, n_out, e, vth):
        return FixedLayer(2 * rng.integers(-128, 128, size=(n_out, n_in)).astype(np.int32), e, int(rng.integers(0, 4096)),
                     int(rng.integers(0, 4096)), vth, rng.integers(-300, 300, size=n_out).astype(np.int32),
                     rng.integers(0, 3, size=n_out).astype(np.int32))

    readout = FixedLayer(2 * rng.integers(-128, 128, size=(3, 6)).astype(np.int32), 0, 4095, 0, loihi.VTH_MAX,
                    np.zeros(3, np.int32), np.zeros(3, np.int32))
    fnet = FixedNetwork((layer(10, 8, 1, 300), layer(8, 6, 0, 40)), readout, 9, "rate", False, 1.0, 0)
    x = torch.as_tensor(rng.random((9, 5, 10)) < 0.5).to(torch.int64)
    full, spikes_only = emulate(fnet, x, record=True), emulate(fnet, x, record=True, record_uv=False)
    assert spikes_only.u is None and spikes_only.v is None
    assert torch.equal(full.v_out, spikes_only.v_out)
    for a, b in zip(full.spikes, spikes_only.spikes):
        assert a.dtype == b.dtype == torch.bool and torch.equal(a, b)
    for a, b, s in zip(full.counts, spikes_only.counts, full.spikes):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b) and torch.equal(a, s.sum(0))
    assert 0 < float(full.spikes[0].float().mean()) < 1
