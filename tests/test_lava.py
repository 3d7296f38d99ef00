"""Against Lava's CPU simulator (the oracle): the emulator bit for bit, the float network spike for spike.

Every Lava run happens in a child process (hardware.lava.run); each test costs a few seconds.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware import lava, loihi
from hardware.emulator import _dense, bias_v, emulate, first_spike_steps, gemm_for
from hardware.loihi import FixedLayer, FixedNetwork
from spikeprop import SpikepropError
from spikeprop.cli import main
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams

pytestmark = pytest.mark.lava
RAIL = loihi.UV_LIMIT - 1


def rand_layer(rng, n_in, n_out, e, vth_max=400, bias=300):
    return FixedLayer(2 * rng.integers(-128, 128, size=(n_out, n_in)).astype(np.int32), e, int(rng.integers(0, 4096)),
                 int(rng.integers(0, 4096)), int(rng.integers(1, vth_max)),
                 rng.integers(-bias, bias, size=n_out).astype(np.int32), rng.integers(0, 3, size=n_out).astype(np.int32))


def readout_layer(rng, n_in, n_out, e=0):
    return FixedLayer(2 * rng.integers(-128, 128, size=(n_out, n_in)).astype(np.int32), e, 4095, 0, loihi.VTH_MAX,
                 rng.integers(-50, 50, size=n_out).astype(np.int32), np.zeros(n_out, np.int32))


def edge_layer():
    """Layer 1 of the edge-case network (e = 7, 6 inputs). Neurons:
    0: w = -256 on input 0 -> v falls to the negative rail (saturation) and stays negative;
    1: w = 254 on inputs 1..5 -> a = 1270·2**7, a << 6 > 2**23: u wraps to negative;
    2: w = 2 on input 0, vth = 256 -> v = 64·256 exactly after one step: a tie, no spike;
    3: negative bias with decays (negative voltages that decay toward zero, truncated)."""
    w = np.zeros((4, 6), np.int32)
    w[0, 0], w[1, 1:] = -256, 254
    w[2, 0] = 2
    w[3, 0] = 6
    return FixedLayer(w, 7, 4095, 0, 256, np.array([0, 0, 0, -4000], np.int32), np.array([0, 0, 0, 5], np.int32))


def compare(fnet, payload):
    """Run fnet in Lava fixed_pt and the emulator; assert u, v, spikes and read-out equal; return Lava's result."""
    res = lava.run(fnet, payload.numpy(), record_uv=True, timeout=180)
    emu = emulate(fnet, payload, record=True)
    for i in range(len(fnet.layers)):
        assert np.array_equal(emu.spikes[i].numpy(), res.spikes[i]), f"spikes of layer {i + 1}"
    for i in range(len(fnet.layers) + 1):
        assert np.array_equal(emu.u[i].numpy(), res.u[i]), f"u of layer {i + 1}"
        assert np.array_equal(emu.v[i].numpy(), res.v[i]), f"v of layer {i + 1}"
    assert np.array_equal(emu.v_out.numpy(), res.v_out)
    # the evaluation path (no recording: the closed-form first layer where it applies) too
    assert np.array_equal(emulate(fnet, payload).v_out.numpy(), res.v_out)
    return res


def test_emulator_equals_lava_fixed_pt_on_random_networks():
    rng = np.random.default_rng(7)
    layers = (rand_layer(rng, 12, 9, 2), rand_layer(rng, 9, 7, -1, vth_max=60), rand_layer(rng, 7, 5, 0, vth_max=30))
    fnet = FixedNetwork(layers, readout_layer(rng, 5, 3, 1), 7, "rate", False, 1.0, 0)
    x = torch.as_tensor(rng.random((7, 6, 12)) < 0.4).to(torch.int64)  # T=7, 6 samples back to back
    res = compare(fnet, x)
    for s in res.spikes:
        assert 0 < s.mean() < 1  # every layer is active, not saturated
    assert min(v.min() for v in res.v[:3]) < 0  # negative voltages occurred


def test_emulator_equals_lava_fixed_pt_with_graded_input():
    rng = np.random.default_rng(8)
    layers = (rand_layer(rng, 10, 8, -4, vth_max=3000), rand_layer(rng, 8, 6, 1, vth_max=80))
    fnet = FixedNetwork(layers, readout_layer(rng, 6, 4, -2), 5, "direct", True, 255.0, 8)
    x = torch.as_tensor(rng.integers(0, 256, size=(5, 4, 10)))
    res = compare(fnet, x)
    assert res.spikes[0].any() and res.spikes[1].any()


def test_closed_form_emulator_equals_lava_on_constant_graded_input():
    # Direct encoding with a memoryless current (du = 4095), the recipes' case: the evaluation
    # path computes the first layer's spike trains in closed form (hardware.emulator.first_spike_steps).
    rng = np.random.default_rng(10)
    first = rand_layer(rng, 10, 12, -3, vth_max=2000, bias=2000)
    first = FixedLayer(first.weights, first.weight_exp, 4095, first.dv, first.vth, first.bias_mant, first.bias_exp)
    fnet = FixedNetwork((first, rand_layer(rng, 12, 6, 1, vth_max=80)), readout_layer(rng, 6, 4, -2), 9, "direct", True,
                        255.0, 8)
    x = torch.as_tensor(rng.integers(0, 256, size=(1, 5, 10))).expand(9, 5, 10)
    g = gemm_for(first, 0, 255)
    assert g.int8 and first_spike_steps(_dense(x[0], g), first, bias_v(first), g, 9) is not None
    res = compare(fnet, x)
    counts = res.spikes[0].sum(0)
    assert counts.max() > 1 and (counts == 0).any()  # periodic spikers and silent neurons


def test_emulator_equals_lava_fixed_pt_at_the_edges():
    rng = np.random.default_rng(9)
    layers = (edge_layer(), rand_layer(rng, 4, 3, 3))
    fnet = FixedNetwork(layers, readout_layer(rng, 3, 2), 6, "rate", False, 1.0, 0)
    x = torch.zeros(6, 2, 6, dtype=torch.int64)
    x[:, :, :] = 1
    x[:, 1, 0] = 0  # sample 1: no input on input 0
    x[3:, 1, :] = 0
    res = compare(fnet, x)
    v, u, s = res.v[0], res.u[0], res.spikes[0]
    assert (v[3:, 0, 0] == -RAIL).all()  # saturation at the negative rail (Lava's own values)
    assert (u[:, 0, 1] < 0).all()  # positive input, negative current: the 24-bit wrap
    assert not s[0, 0, 2] and s[1, 0, 2]  # v == 64·vth exactly at step 1: strict '>', spike at step 2
    assert (v[:, 1, 3] < 0).all()  # bias-only neuron with a negative bias


def test_float_network_equals_lava_floating_pt():
    net = Network((8, 10, 6, 3), [LIFParams(du=0.3, dv=0.2, vth=0.5), LIFParams(du=1.0, dv=0.1, vth=0.4)],
                  generator=torch.Generator().manual_seed(0), gain=3.0).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in [*net.biases, net.readout.bias]:
            b.copy_((torch.rand(b.shape, generator=g, dtype=torch.float64) - 0.5) * 0.2)
    T, N = 9, 6
    x = torch.rand(T, N, 8, generator=g, dtype=torch.float64)
    ref = simulate(net, x, record=True)
    flt = lava.floating_pt_network(net, T, graded_input=True, input_bits=8)
    res = lava.run(flt, x.numpy(), timeout=180)
    for i, s in enumerate(ref.spikes):
        assert np.array_equal(s.numpy().astype(bool), res.spikes[i]), f"layer {i + 1}"
        assert 0 < res.spikes[i].mean() < 1
    assert np.allclose(res.v_out, T * ref.logits.detach().numpy(), rtol=1e-9, atol=1e-9)


def test_trained_digits_network_verifies(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--rule", "sigprop", "--epochs", "2", "--hidden", "64", "--quantize", "loihi",
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["verify", str(run), "--limit", "40"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact: emulator == Lava fixed_pt" in out and "Loihi 2 resources: 2 cores" in out
    report = json.loads((run / "verify.json").read_text())
    assert report["bit_exact"] and report["identical_spike_trains"]["emulator_vs_lava_fixed_pt"] == [1.0]
    assert report["identical_spike_trains"]["float_vs_lava_floating_pt"][0] >= 0.99
    b = report["backends"]
    assert b["emulator"]["accuracy"] == b["lava_fixed_pt"]["accuracy"] > 0.5
    assert abs(b["float"]["accuracy"] - b["lava_floating_pt"]["accuracy"]) <= 0.05
    # the exported file runs the same integers
    out_file = tmp_path / "net.npz"
    assert main(["export", str(run), "--to", "lava", "--out", str(out_file)]) == 0
    fnet = loihi.load(out_file)
    assert fnet.header()["layers"] == report["layers"]
    # verify fails (status 1) when the emulator and Lava disagree: here, one emulated spike flipped
    from hardware import backends

    def flipped(*args, **kwargs):
        res = emulate(*args, **kwargs)
        res.spikes[0][0, 0, 0] = ~res.spikes[0][0, 0, 0]
        return res

    monkeypatch.setattr(backends, "emulate", flipped)
    capsys.readouterr()
    assert main(["verify", str(run), "--limit", "3"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def our_processes(marker: str) -> list[str]:
    """PIDs of live (non-zombie) processes whose command line mentions ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(pid)
    return found


def assert_no_processes_left(marker: str) -> None:
    deadline = time.monotonic() + 5
    while our_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert our_processes(marker) == []


def small_fixed():
    rng = np.random.default_rng(3)
    return FixedNetwork((rand_layer(rng, 4, 3, 0),), readout_layer(rng, 3, 2), 3, "rate", False, 1.0, 0)


def broken_child(run_dir: str, out: str, parent: int, mode: str) -> None:
    """A Lava child that starts a real Lava runtime (its worker processes run) and then fails
    ('raise': an error inside the run) or never returns ('hang': what Lava does after a worker
    error), to test that the parent reports it and leaves no process behind."""
    import os
    import traceback

    from hardware import loihi as lh

    net = lh.load(Path(run_dir) / "network.npz")
    x = np.load(Path(run_dir) / "x.npy")
    built = lava.build(net, x, record_spikes=True, record_uv=False)
    from lava.magma.core.run_configs import Loihi2SimCfg

    built.source.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))  # the workers start
    if mode == "hang":
        time.sleep(3600)
    try:
        raise RuntimeError("a worker error inside the Lava run")
    except RuntimeError:
        traceback.print_exc()
        os._exit(lava.EXIT_WORKER_ERROR)


def child_code(mode: str) -> str:
    return ("import sys; from tests.test_lava import broken_child; "
            f"broken_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), {mode!r})")


def test_an_invalid_network_is_refused_before_lava_starts():
    fnet = small_fixed()
    wrong = FixedNetwork(fnet.layers, readout_layer(np.random.default_rng(0), 5, 2), 3, "rate", False, 1.0, 0)
    with pytest.raises(SpikepropError, match="next layer takes 5 inputs"):
        lava.run(wrong, np.ones((3, 2, 4), np.int32), timeout=120)
    odd = FixedLayer(fnet.layers[0].weights + 1, 0, 4095, 0, 10, fnet.layers[0].bias_mant, fnet.layers[0].bias_exp)
    with pytest.raises(SpikepropError, match="even integers"):
        lava.run(FixedNetwork((odd,), fnet.readout, 3, "rate", False, 1.0, 0), np.ones((3, 2, 4), np.int32))


def test_a_lava_error_is_reported_and_kills_every_process(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(lava, "CHILD_CODE", child_code("raise"))
    with pytest.raises(SpikepropError, match="Lava failed.*a worker error"):
        lava.run(small_fixed(), np.ones((3, 2, 4), np.int32), timeout=120)
    assert_no_processes_left(str(tmp_path))


def test_a_silent_hang_times_out_and_kills_every_process(tmp_path, monkeypatch):
    # Lava hangs without an error after a worker fails (lava#231): the timeout turns it into a SpikepropError.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(lava, "CHILD_CODE", child_code("hang"))
    with pytest.raises(SpikepropError, match="did not finish within"):
        lava.run(small_fixed(), np.ones((3, 2, 4), np.int32), timeout=20)
    assert_no_processes_left(str(tmp_path))
