"""Loihi-2 fixed point without Lava: quantization, file format, capacity check, emulator closed forms.

Bit-exactness against Lava itself is in test_lava.py (it needs Lava's CPU simulator).
"""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware import emulator, loihi
from hardware.deploy import load_deployment, quantize_deployment
from hardware.emulator import emulate, fixed_lif_step
from hardware.loihi import FixedLayer, FixedNetwork, check_fit, quantize
from spikeprop import SpikepropError
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams, LIFState
from spikeprop.quantize import fake_quant_weight, representable_params, weight_mantissa
from spikeprop.rules import RULES


def float_net(sizes=(6, 7, 5, 3), seed=0, gain=2.0, bias=0.05):
    net = Network(sizes, LIFParams(du=1.0, dv=0.15, vth=1.0), generator=torch.Generator().manual_seed(seed), gain=gain)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for b in net.biases:
            b.copy_((torch.rand(b.shape, generator=g) * 2 - 1) * bias)
        net.readout.bias.copy_(torch.rand(net.readout.bias.shape, generator=g) - 0.5)
    return net


def periodic_trains(within: torch.Tensor) -> torch.Tensor:
    """Spike trains [T, B, n] (bool) from ``first_spike_steps``: a spike at step t (1-based)
    wherever the first-spike step k divides t (the closed form's meaning, as an oracle)."""
    T = within.shape[0]
    first = within.clone()
    first[1:] ^= within[:-1]  # exactly at step k
    out = torch.zeros_like(first)
    for k in range(1, T + 1):
        out[k - 1 :: k] |= first[k - 1]
    return out


def int_layer(w, *, e=0, du=4095, dv=0, vth=100, bias=None, bias_exp=None):
    w = np.asarray(w, dtype=np.int32)
    n = w.shape[0]
    bm = np.zeros(n, np.int32) if bias is None else np.asarray(bias, np.int32)
    be = np.zeros(n, np.int32) if bias_exp is None else np.asarray(bias_exp, np.int32)
    return FixedLayer(w, e, du, dv, vth, bm, be)


def one_layer_net(layer, n_classes=2):
    readout = int_layer(np.zeros((n_classes, layer.n_out)), vth=loihi.VTH_MAX)
    return FixedNetwork((layer,), readout, 1, "rate", False, 1.0, 0)


def test_if_neuron_reaches_threshold_at_the_closed_form_step():
    # IF neuron (dv=0, memoryless u): each input spike adds 64·w·2**e to v; the threshold is
    # 64·vth and strict, so the first spike comes at step floor(vth / (w·2**e)) + 1 (1-based).
    w, e, vth, T = 6, 2, 100, 12
    fnet = one_layer_net(int_layer([[w]], e=e, vth=vth))
    res = emulate(fnet, torch.ones(T, 1, 1, dtype=torch.int64), record=True)
    first = math.floor(vth / (w * 2**e)) + 1
    s = res.spikes[0][:, 0, 0]
    assert s.nonzero()[0].item() + 1 == first
    assert res.v[0][first - 2, 0, 0].item() == (first - 1) * 64 * w * 2**e


def test_exact_threshold_does_not_spike():
    # v lands exactly on 64·vth at step 2: strict '>' means the spike comes one step later.
    fnet = one_layer_net(int_layer([[2]], vth=4))
    res = emulate(fnet, torch.ones(4, 1, 1, dtype=torch.int64), record=True)
    assert res.spikes[0][:, 0, 0].tolist() == [False, False, True, False]


def test_decay_truncates_toward_zero_for_both_signs():
    layer = int_layer([[0]], du=4095, dv=1, vth=10**5)
    bias0 = torch.zeros(1, dtype=torch.int64)
    for v0, expected in ((4097, 4095), (-4097, -4095)):  # 4097·4095/4096 = 4095.9998 -> 4095
        state = LIFState(torch.zeros(1, 1, dtype=torch.int64), torch.tensor([[v0]]))
        step = fixed_lif_step(torch.zeros(1, 1, dtype=torch.int64), state, layer, bias0)
        assert step.state.v.item() == expected


def test_voltage_saturates_and_current_wraps():
    # a = -256·2**7 per spike; u = a << 6 = -2 097 152; v falls to the negative 24-bit rail and stays.
    layer = int_layer([[-256]], e=7, du=4095, dv=0, vth=loihi.VTH_MAX)
    res = emulate(one_layer_net(layer), torch.ones(6, 1, 1, dtype=torch.int64), record=True)
    assert res.v[0][:, 0, 0].tolist()[3:] == [-(loihi.UV_LIMIT - 1)] * 3  # -2.1 M, -4.2 M, -6.3 M, then the rail
    # a current beyond +2**23 wraps to negative (one-shot wrap of Lava's model)
    big = int_layer([[254] * 20], e=7, du=4095, dv=0, vth=loihi.VTH_MAX)
    res = emulate(one_layer_net(big), torch.ones(1, 1, 20, dtype=torch.int64), record=True)
    assert res.u[0].item() == 20 * 254 * 2**7 * 64 - 2 * loihi.UV_LIMIT


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.floats(0.0, 1.0))
def test_emulator_invariants(seed, p):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    layer = int_layer(2 * rng.integers(-128, 128, size=(5, 4)), e=int(rng.integers(-3, 4)),
                      du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 4096)), vth=int(rng.integers(1, 500)))
    x = (torch.rand(6, 3, 4, generator=g) < p).to(torch.int64)
    res = emulate(one_layer_net(layer), x, record=True)
    assert res.spikes[0].dtype == torch.bool
    assert (res.v[0] <= layer.vth << loihi.VTH_SHIFT).all()  # after every step, v <= threshold
    assert (res.v[0][res.spikes[0]] == 0).all()
    if p == 0.0:
        assert not res.spikes[0].any()  # no input, no bias: no spikes


def test_quantize_scales_thresholds_and_decays():
    net = float_net()
    x = torch.rand(8, 20, 6, generator=torch.Generator().manual_seed(2))
    fnet = quantize(net, x, encoding="direct", graded_input=True, input_scale=16.0)
    layer = fnet.layers[0]
    m, step = weight_mantissa(net.weights[0])
    assert np.array_equal(layer.weights, (2 * m).numpy().astype(np.int32))
    assert layer.scale == pytest.approx(2.0 ** (layer.weight_exp + 1) * 16.0 / float(step))
    assert layer.vth == round(1.0 * layer.scale)
    assert (layer.du, layer.dv) == (4095, round(0.15 * 4096))
    assert layer.weights.max() <= 254 and layer.weights.min() >= -256 and not np.any(layer.weights % 2)
    assert not check_fit(fnet)
    # the calibrated peak of u and v stays inside half the 24-bit range
    res = emulate(fnet, fnet.payload(x), record=True)
    for u, v in zip(res.u, res.v):
        assert u.abs().max() < loihi.UV_LIMIT / 2 and v.abs().max() < loihi.UV_LIMIT / 2


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), gain=st.floats(0.5, 4.0))
def test_quantize_is_idempotent(seed, gain):
    # Quantizing the fake-quantized network (W -> W_q) gives the same integers again (float64,
    # so that W_q's largest entry gives back the same step Δ to within an ulp).
    net = float_net(seed=seed, gain=gain).double()
    x = (torch.rand(6, 10, 6, generator=torch.Generator().manual_seed(seed)) < 0.4).double()
    a = quantize(net, x, encoding="rate", graded_input=False)
    q = copy.deepcopy(net)
    with torch.no_grad():
        for w in [*q.weights, q.readout.weight]:
            w.copy_(fake_quant_weight(w))
    b = quantize(q, x, encoding="rate", graded_input=False)
    for la, lb in zip([*a.layers, a.readout], [*b.layers, b.readout]):
        assert np.array_equal(la.weights, lb.weights)
        sa, sb = la.scalars(), lb.scalars()
        assert sa.pop("scale") == pytest.approx(sb.pop("scale"), rel=1e-12)
        assert sa == sb
        assert np.array_equal(la.bias_mant, lb.bias_mant) and np.array_equal(la.bias_exp, lb.bias_exp)


def test_emulator_tracks_the_fake_quantized_float_network():
    # With the weights and decays the hardware uses (--quantize loihi), the float and the
    # integer networks differ only by threshold/bias rounding and truncated decays.
    net = float_net(sizes=(20, 40, 30, 4), gain=3.0)
    net.weight_transform = fake_quant_weight
    net.params = tuple(representable_params(p) for p in net.params)
    x = (torch.rand(10, 200, 20, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    fnet = quantize(net, x, encoding="rate", graded_input=False)
    ref = simulate(net, x, record=True)
    emu = emulate(fnet, fnet.payload(x), record=True)
    for s_float, s_int in zip(ref.spikes, emu.spikes):
        assert (s_float.bool() == s_int).float().mean() > 0.995
    assert (ref.logits.argmax(1) == emu.logits.argmax(1)).float().mean() > 0.97
    assert torch.allclose(emu.logits.float(), ref.logits.detach(), atol=0.05 * ref.logits.abs().max().item())


def test_save_load_round_trip(tmp_path):
    net = float_net()
    x = torch.rand(8, 10, 6, generator=torch.Generator().manual_seed(3))
    fnet = quantize(net, x, encoding="direct", graded_input=True, input_scale=255.0, source={"run": "r"})
    path = tmp_path / "net.npz"
    loihi.save(fnet, path)
    back = loihi.load(path)
    assert back.header() == fnet.header()
    for la, lb in zip([*fnet.layers, fnet.readout], [*back.layers, back.readout]):
        assert np.array_equal(la.weights, lb.weights) and np.array_equal(la.bias_mant, lb.bias_mant)
    assert torch.equal(emulate(fnet, fnet.payload(x)).v_out, emulate(back, back.payload(x)).v_out)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SpikepropError, match="not a readable"):
        loihi.load(tmp_path / "bad.npz")


def test_check_fit_names_what_does_not_fit():
    ok = int_layer(np.full((3, 4), 2), vth=10)
    assert not check_fit(one_layer_net(ok))
    cases = {
        "weights must be even": int_layer([[3, 2]]),
        "weight_exp 9": int_layer([[2]], e=9),
        "du = -1": int_layer([[2]], du=-1),
        "vth = 200000": int_layer([[2]], vth=200_000),
        "bias_exp = 9": int_layer([[2]], bias=[5], bias_exp=[9]),
        "inputs needs more synapses than a core": int_layer(np.zeros((1, loihi.SYNAPSES_PER_CORE + 1))),
    }
    for phrase, layer in cases.items():
        problems = check_fit(one_layer_net(layer))
        assert any(phrase in p for p in problems), (phrase, problems)


def test_resources_split_layers_over_cores():
    layer = int_layer(np.zeros((10_000, 100)))  # 10 000 neurons > 8192 per core; 1 M synapses > 937 500
    res = loihi.resources(one_layer_net(layer))
    row = res["layers"][0]
    assert (row["neurons"], row["synapses"], row["cores"]) == (10_000, 1_000_000, 2)
    assert res["cores"] == 3 and res["chips"] == 1


def test_bias_mantissa_and_exponent_stay_in_range():
    b = np.array([0.0, 1e-4, -0.3, 2.0, -7.5])
    mant, exp = loihi._bias(b, 64 * 5000.0)
    assert (mant <= loihi.BIAS_MANT_MAX).all() and (mant >= loihi.BIAS_MANT_MIN).all()
    assert np.allclose(mant * 2.0**exp, np.round(b * 64 * 5000.0), rtol=2.0**-11)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from spikeprop.cli import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--epochs", "2", "--hidden", "32", "--quantize", "loihi", "--out", str(run), "--no-progress"]) == 0
    return run


def test_evaluate_backend_loihi_matches_the_float_network(tiny_run, capsys):
    from spikeprop.cli import main

    assert main(["evaluate", str(tiny_run)]) == 0
    assert main(["evaluate", str(tiny_run), "--backend", "loihi"]) == 0
    out = capsys.readouterr().out.splitlines()
    float_acc, loihi_acc = (float(line.split()[2]) for line in out[-2:])
    assert "backend: loihi" in out[-1] and loihi_acc > 0.5
    assert abs(float_acc - loihi_acc) <= 0.01


def test_export_refuses_a_network_that_does_not_fit(tiny_run, tmp_path, capsys):
    import shutil

    from spikeprop import runs
    from spikeprop.cli import main

    run = tmp_path / "big-bias"
    shutil.copytree(tiny_run, run)
    ckpt = runs.load_checkpoint(run)
    ckpt["network"]["biases.0"][3] = 50.0  # 50 thresholds: more than bias_mant << 7 can hold
    runs.save_checkpoint(run, {k: v for k, v in ckpt.items() if k != "format"})
    assert main(["export", str(run), "--to", "lava", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "does not fit Loihi 2" in err and "neuron 3's bias needs bias_exp" in err
    assert not (tmp_path / "x.npz").exists()
    assert main(["export", str(tiny_run), "--to", "lava", "--out", str(tmp_path / "ok.npz")]) == 0
    assert loihi.load(tmp_path / "ok.npz").layers[0].n_out == 32


def _constant_drive_net(rng, n_in, sizes, graded_max, *, dv=None, vth=None, bias_scale=4096):
    """A random FixedNetwork whose first layer qualifies for the closed form (du = 4095)."""
    layers, fan_in = [], n_in
    for k, n in enumerate(sizes):
        layers.append(int_layer(2 * rng.integers(-128, 128, size=(n, fan_in)), e=int(rng.integers(-7, 1 if graded_max > 16 else 3)),
                                du=4095 if k == 0 else int(rng.integers(0, 4096)),
                                dv=int(rng.integers(0, 4096)) if dv is None else dv,
                                vth=int(rng.integers(1, 3000)) if vth is None else vth,
                                bias=rng.integers(-bias_scale, bias_scale, size=n), bias_exp=rng.integers(0, 8, size=n)))
        fan_in = n
    readout = int_layer(2 * rng.integers(-128, 128, size=(3, fan_in)), dv=0, vth=loihi.VTH_MAX)
    return FixedNetwork(tuple(layers), readout, 1, "direct", True, 1.0, graded_max.bit_length() + 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), depth=st.integers(1, 2), T=st.integers(1, 12), graded_max=st.sampled_from([1, 16, 255]),
       dv=st.sampled_from([None, 0, 4095]), vth=st.sampled_from([None, 1, loihi.VTH_MAX]))
def test_closed_form_first_layer_equals_the_step_loop(seed, depth, T, graded_max, dv, vth):
    # The evaluation path (record=False) replaces the first layer's T steps by its closed-form
    # spike trains; the recorded path (the one tests/test_lava.py checks against Lava) steps.
    rng = np.random.default_rng(seed)
    fnet = _constant_drive_net(rng, 6, [9, 7][:depth], graded_max, dv=dv, vth=vth)
    x = torch.as_tensor(rng.integers(-graded_max, graded_max + 1, size=(1, 5, 6))).expand(T, 5, 6)
    stepped = emulate(fnet, x, record=True)
    g = emulator.gemm_for(fnet.layers[0], int(x.min()), int(x.max()))
    a, bias = emulator._dense(x[0], g), emulator.bias_v(fnet.layers[0])
    first = emulator.first_spike_steps(a, fnet.layers[0], bias, g, T)
    fits = bool((a.abs() * 64 < loihi.UV_LIMIT).all() and (bias.abs() < loihi.UV_LIMIT).all()) and not g.may_wrap
    assert (first is not None) == fits  # where u would wrap, the step loop runs instead
    if first is not None:
        assert torch.equal(periodic_trains(first), stepped.spikes[0])
    assert torch.equal(emulate(fnet, x).v_out, stepped.v_out)


def test_closed_form_at_exact_threshold_ties_and_the_voltage_rail():
    # Drives around each crossing value C_k (ties: v lands exactly on 64·vth), the largest drives
    # (v clipped at the rail) and the most negative ones: the first spike step of the closed form
    # equals the step loop's for every one of them.
    layer = int_layer(np.ones((1, 1)), du=4095, dv=700, vth=900)
    T = 10
    drives = [c for c in emulator.crossing_drives(layer, T) if math.isfinite(c)]
    assert drives == sorted(drives, reverse=True) and len(drives) == T
    c = torch.tensor(sorted({d + k for d in drives for k in (-1, 0, 1)} | {2**23 - 1, -(2**23) + 1, 0}), dtype=torch.float64)
    n = len(c)  # one neuron per drive, the drive as its bias, no input
    state = LIFState.zeros(1, n, dtype=torch.float64)
    steps = []
    for _ in range(T):
        step = fixed_lif_step(torch.zeros(1, n, dtype=torch.float64), state, layer, c)
        steps.append(step.s[0].bool())
        state = step.state
    g = emulator.gemm_for(layer, 0, 0)
    first = emulator.first_spike_steps(torch.zeros(1, n, dtype=torch.float64), layer, c, g, T)
    assert torch.equal(periodic_trains(first)[:, 0], torch.stack(steps))
    assert len({tuple(col) for col in torch.stack(steps).t().tolist()}) > T  # many distinct trains


def test_ff_deploys_with_the_neutral_label(tmp_path):
    # FF's read-out path sees the image with the neutral label (label_scale / C) in its first C
    # inputs; the deployed network must get the same input, here with label_scale 20 (a current
    # of 2 per label feature: more payload bits than the pixels need).
    from spikeprop.cli import main
    from spikeprop.train import load_run

    run = tmp_path / "ff"
    assert main(["train", "--rule", "ff", "--epochs", "1", "--hidden", "32", "--ff-label-scale", "20", "--out", str(run),
                 "--no-progress"]) == 0
    dep = load_deployment(run)
    ds, net = dep.dataset, dep.net
    fnet, _ = quantize_deployment(dep)
    x = ds.intensities(ds.test_x[:200])
    xin = dep.encode(x)
    flat = xin.flatten(2)  # the label features: the first C of the flattened image
    assert torch.allclose(flat[:, :, :10], torch.full_like(flat[:, :, :10], 2.0))
    payload = fnet.payload(xin)
    assert int(payload[0, 0, 0]) == 32 and fnet.input_bits >= 6  # 2.0 x the digits' scale 16
    _, _, _, rule, _ = load_run(run)
    float_pred = simulate(net, rule.deploy_input(rule.options, x, rule.encoder, net.sizes[-1])).logits.argmax(1)
    emu_pred = emulate(fnet, payload).logits.argmax(1)
    assert (float_pred == emu_pred).float().mean() >= 0.95


def test_a_layer_whose_exponent_is_clamped_reports_its_margin():
    # 300 bright pixels through equal weights: the calibrated peak needs weight_exp < -8 to keep the
    # 1-bit headroom (the Fashion-MNIST case); at -8 the layer keeps less and export says so.
    net = Network((784, 4, 2), LIFParams(du=1.0, dv=0.15, vth=1.0))
    with torch.no_grad():
        net.weights[0].fill_(0.01)
        net.readout.weight.fill_(0.1)
    x = torch.zeros(1, 8, 784)
    x[..., :300] = 1.0
    x = x.expand(6, 8, 784)
    fnet = quantize(net, x, encoding="direct", graded_input=True, input_scale=255.0)
    cal = loihi.calibrate(loihi.deployed(net), x)
    assert fnet.layers[0].weight_exp == loihi.WEIGHT_EXP_MIN
    (m,) = loihi.margins(fnet, cal)
    assert not m["kept"] and 0 < m["headroom_bits"] < loihi.HEADROOM_BITS
    assert m["peak"] == pytest.approx(cal.peak[0] * 64 * fnet.layers[0].scale)
    warnings = loihi.margin_warnings(fnet, cal)
    assert len(warnings) == 1 and warnings[0].startswith("layer 1:")
    # dimmer pixels need no clamp: the margin is kept and nothing is reported
    dim = x * 0.1
    fnet = quantize(net, dim, encoding="direct", graded_input=True, input_scale=255.0)
    cal = loihi.calibrate(loihi.deployed(net), dim)
    assert fnet.layers[0].weight_exp > loihi.WEIGHT_EXP_MIN and loihi.margin_warnings(fnet, cal) == []
    assert loihi.margins(fnet, cal)[0]["headroom_bits"] >= loihi.HEADROOM_BITS


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_every_rule_deploys_to_the_fixed_point_network(tmp_path, rule_name):
    """A network trained by any registered rule quantizes, fits Loihi 2, and the emulator predicts
    what the float network predicts on the input its read-out path sees."""
    from spikeprop.cli import main

    run = tmp_path / rule_name
    assert main(["train", "--rule", rule_name, "--epochs", "1", "--hidden", "24", "--steps", "4", "--quantize", "loihi",
                 "--out", str(run), "--no-progress"]) == 0
    dep = load_deployment(run)
    ds, net = dep.dataset, dep.net
    fnet, cal = quantize_deployment(dep)
    assert check_fit(fnet, cal) == []
    xin = dep.encode(ds.intensities(ds.test_x))
    float_pred = simulate(net, xin).logits.argmax(1)
    emu_pred = emulate(fnet, fnet.payload(xin)).logits.argmax(1)
    assert (float_pred == emu_pred).float().mean() >= 0.95
