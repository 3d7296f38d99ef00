"""NIR export and import: round trips, hand-built graphs against NIR's own equations, errors."""

import math

import nir
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hardware.nir import DEFAULT_DT, export_nir, from_nir, import_nir, load_nir, to_continuous, to_discrete, to_nir
from spikeprop import SpikepropError, runs
from spikeprop.cli import main
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams

KINDS = {
    "LIF": LIFParams(du=1.0, dv=0.15, vth=1.0),
    "IF": LIFParams(du=1.0, dv=0.0, vth=0.7),
    "CubaLIF": LIFParams(du=0.3, dv=0.2, vth=1.2),
}


def random_net(params, gen, sizes=(6, 9, 7, 4)):
    net = Network(sizes, params, generator=gen)
    with torch.no_grad():
        for b in net.biases:
            b.uniform_(-0.3, 0.3, generator=gen)
        net.readout.bias.uniform_(-0.3, 0.3, generator=gen)
    return net


def vec(*values):
    return np.array(values, dtype=np.float64)


def chain(*nodes, metadata=None):
    names = [f"n{i}" for i in range(len(nodes))]
    return nir.NIRGraph(nodes=dict(zip(names, nodes)), edges=list(zip(names[:-1], names[1:])),
                        metadata=metadata or {})


def io(n_in, n_out):
    return nir.Input(input_type={"input": np.array([n_in])}), nir.Output(output_type={"output": np.array([n_out])})


@pytest.mark.parametrize("kind", KINDS)
def test_write_read_returns_same_network_and_spikes(tmp_path, gen, kind):
    net = random_net(KINDS[kind], gen)
    graph = export_nir(net, tmp_path / "net.nir", steps=8)
    assert type(graph.nodes["lif1"]).__name__ == kind
    back = import_nir(tmp_path / "net.nir")
    assert back.sizes == net.sizes and back.params == net.params
    for key, value in net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.rand(12, 5, 6, generator=gen) * 1.5
    a, b = simulate(net, x, record=True), simulate(back, x, record=True)
    assert sum(float(s.sum()) for s in a.spikes) > 0
    for sa, sb in zip(a.spikes, b.spikes):
        assert torch.equal(sa, sb)
    assert torch.equal(a.logits, b.logits)


def test_file_states_conventions_and_per_neuron_arrays(tmp_path, gen):
    net = random_net(KINDS["CubaLIF"], gen)
    export_nir(net, tmp_path / "net.nir", dt=1e-3, steps=8)
    graph = load_nir(tmp_path / "net.nir")
    meta = graph.metadata
    assert float(meta["dt"]) == 1e-3 and int(meta["dense_delay_steps"]) == 0 and int(meta["steps"]) == 8
    assert "zero" in meta["reset"] and "Euler" in meta["discretisation"]
    lif = graph.nodes["lif1"]
    for field in ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"):
        assert getattr(lif, field).shape == (9,), field
    # forward Euler: du = dt/tau_syn, dv = dt/tau_mem, exactly
    assert np.all(1e-3 / lif.tau_syn == 0.3) and np.all(1e-3 / lif.tau_mem == 0.2)
    assert np.allclose(lif.w_in, 1 / 0.3) and np.allclose(lif.r, 1 / 0.2)
    assert np.allclose(lif.v_leak * 0.2, net.biases[0].detach().numpy())
    assert isinstance(graph.nodes["integrator"], nir.I)


def test_hand_built_lif_fires_when_its_closed_form_says(gen):
    # tau dv/dt = -v + r I, forward Euler with dt: v[t] = beta v[t-1] + g c, beta = 1 - dt/tau, g = r dt/tau.
    dt, tau, r, c = 1e-4, 1e-3, 5.0, 0.5  # steady state g c / (1 - beta) = 2.5
    theta = vec(1.0, 2.0)  # different thresholds per neuron are folded into the weights
    beta, g = 1 - dt / tau, r * dt / tau
    lif = nir.LIF(tau=vec(tau, tau), r=vec(r, r), v_leak=vec(0, 0), v_threshold=theta, v_reset=vec(0, 0))
    inp, out = io(1, 2)
    graph = chain(inp, nir.Affine(weight=np.ones((2, 1)), bias=np.zeros(2)), lif, out, metadata={"dt": dt})
    net = from_nir(graph)
    assert net.params[0].dv == pytest.approx(0.1)
    spikes = simulate(net, torch.full((60, 1, 1), c), record=True).spikes[0][:, 0]
    for i, th in enumerate(theta):
        # v[t] = g c (1 - beta^t) / (1 - beta) > theta  <=>  t > log(1 - theta (1 - beta) / (g c)) / log(beta)
        t_star = math.floor(math.log(1 - th * (1 - beta) / (g * c)) / math.log(beta)) + 1
        fired = torch.nonzero(spikes[:, i]).flatten().tolist()
        assert fired[:3] == [t_star - 1, 2 * t_star - 1, 3 * t_star - 1]  # 0-based steps; reset to zero: periodic


def test_hand_built_if_and_integrator_readout():
    dt, r, c, theta = 1e-3, 400.0, 0.55, 1.0  # v[t] = t dt r c = 0.22 t: spikes at t = 5, 10, ...
    inp, out = io(1, 1)
    graph = chain(inp, nir.Linear(weight=np.ones((1, 1))), nir.IF(r=vec(r), v_threshold=vec(theta)),
                  nir.Affine(weight=np.full((2, 1), 3.0), bias=vec(0.5, -1.0)), nir.I(r=vec(2 / dt, 2 / dt)),
                  nir.Output(output_type={"output": np.array([2])}), metadata={"dt": dt})
    net = from_nir(graph)
    assert net.params[0].dv == 0.0
    res = simulate(net, torch.full((20, 1, 1), c), record=True)
    assert torch.nonzero(res.spikes[0][:, 0, 0]).flatten().tolist() == [4, 9, 14, 19]
    # I with r: v[T] = sum_t dt r (W s + b) = 2 T (W s_mean + b): spikeprop's scores scaled by dt r
    assert torch.allclose(res.logits[0], torch.tensor([2 * (3 * 4 / 20 + 0.5), 2 * (3 * 4 / 20 - 1.0)]))


def euler_cubalif(tau_syn, tau_mem, r, w_in, v_leak, theta, dt, inputs):
    """NIR's CubaLIF equations, forward Euler, current first (the documented discretisation), in numpy."""
    i_syn, v, out = 0.0, 0.0, []
    for s in inputs:
        i_syn = i_syn + dt / tau_syn * (-i_syn + w_in * s)
        v = v + dt / tau_mem * (v_leak - v + r * i_syn)
        out.append(float(v > theta))
        if v > theta:
            v = 0.0
    return out


def test_hand_built_cubalif_matches_nir_equations(gen):
    dt = 1e-4
    p = dict(tau_syn=2e-4, tau_mem=5e-4, r=2.0, w_in=3.0, v_leak=0.5, theta=1.0)
    x = (torch.rand(50, generator=gen) < 0.3).double() * 0.8
    expected = euler_cubalif(**p, dt=dt, inputs=x.tolist())
    node = nir.CubaLIF(tau_syn=vec(p["tau_syn"]), tau_mem=vec(p["tau_mem"]), r=vec(p["r"]), v_leak=vec(p["v_leak"]),
                       v_threshold=vec(p["theta"]), w_in=vec(p["w_in"]))
    inp, out = io(1, 1)
    net = from_nir(chain(inp, nir.Linear(weight=np.ones((1, 1))), node, out, metadata={"dt": dt}))
    assert (net.params[0].du, net.params[0].dv) == pytest.approx((0.5, 0.2))
    got = simulate(net, x.float().view(50, 1, 1), record=True).spikes[0][:, 0, 0].tolist()
    assert sum(expected) >= 5 and got == expected


def test_unsupported_node_is_named(tmp_path, capsys):
    inp, out = io(3, 3)
    graph = chain(inp, nir.Affine(weight=np.eye(3), bias=np.zeros(3)), nir.Delay(delay=vec(1, 1, 1)),
                  nir.LIF(tau=vec(1, 1, 1), r=vec(1, 1, 1), v_leak=vec(0, 0, 0), v_threshold=vec(1, 1, 1)), out)
    with pytest.raises(SpikepropError, match=r"'n2' \(Delay\)"):
        from_nir(graph)
    nir.write(tmp_path / "delay.nir", graph)
    assert main(["import", str(tmp_path / "delay.nir"), "--out", str(tmp_path / "run")]) == 2
    assert "Delay" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unrepresentable_dynamics_are_errors(gen):
    with pytest.raises(SpikepropError, match="no NIR node"):
        to_continuous(LIFParams(du=0.5, dv=0.0), DEFAULT_DT)
    inp, out = io(2, 2)
    reset = nir.LIF(tau=vec(1e-3, 1e-3), r=vec(10, 10), v_leak=vec(0, 0), v_threshold=vec(1, 1), v_reset=vec(0.2, 0))
    with pytest.raises(SpikepropError, match="v_reset"):
        from_nir(chain(inp, nir.Linear(weight=np.eye(2)), reset, out))
    fast = nir.LIF(tau=vec(1e-5, 1e-5), r=vec(1, 1), v_leak=vec(0, 0), v_threshold=vec(1, 1))
    with pytest.raises(SpikepropError, match="smaller --dt"):
        from_nir(chain(inp, nir.Linear(weight=np.eye(2)), fast, out))
    mixed = nir.LIF(tau=vec(1e-3, 2e-3), r=vec(10, 20), v_leak=vec(0, 0), v_threshold=vec(1, 1))
    with pytest.raises(SpikepropError, match="differs between neurons"):
        from_nir(chain(inp, nir.Linear(weight=np.eye(2)), mixed, out))


def test_cli_export_import_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--hidden", "16", "--epochs", "1", "--steps", "4", "--no-progress"]) == 0
    assert main(["export", str(run), "--to", "nir", "--out", str(tmp_path / "net.nir")]) == 0
    assert main(["import", str(tmp_path / "net.nir"), "--out", str(tmp_path / "imported")]) == 0
    config = runs.read_json(tmp_path / "imported" / runs.CONFIG)
    assert (config["dataset"], config["steps"], config["hidden"], config["rule"]) == ("digits", 4, [16], "sigprop")
    a = runs.load_checkpoint(run)["network"]
    b = runs.load_checkpoint(tmp_path / "imported")["network"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    first = capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "imported")]) == 0
    assert capsys.readouterr().out == first
    # the graph's 64 inputs do not fit a 784-pixel dataset
    assert main(["import", str(tmp_path / "net.nir"), "--out", str(tmp_path / "x"), "--dataset", "fashion-mnist"]) == 2
    assert "64 inputs" in capsys.readouterr().err


def test_hand_built_graph_imports_into_a_run(tmp_path):
    g = torch.Generator().manual_seed(3)
    w1 = (torch.rand(10, 64, generator=g) - 0.5).numpy()
    inp, _ = io(64, 10)
    lif = nir.LIF(tau=np.full(10, 1e-3), r=np.full(10, 10.0), v_leak=np.zeros(10), v_threshold=np.ones(10))
    graph = nir.NIRGraph(nodes={"in": inp, "w": nir.Affine(weight=w1, bias=np.zeros(10)), "lif": lif,
                                "out": nir.Output(output_type={"output": np.array([10])})},
                         edges=[("in", "w"), ("w", "lif"), ("lif", "out")], metadata={})
    nir.write(tmp_path / "hand.nir", graph)
    assert main(["import", str(tmp_path / "hand.nir"), "--out", str(tmp_path / "run"), "--steps", "5"]) == 0
    config = runs.read_json(tmp_path / "run" / runs.CONFIG)
    assert config["dataset"] == "digits" and config["dv"] == pytest.approx(0.1) and config["hidden"] == [10]
    # a spiking last layer: its counts are the scores (identity read-out)
    net = Network.from_description(runs.load_checkpoint(tmp_path / "run")["architecture"])
    assert net.sizes == (64, 10, 10)
    assert torch.equal(runs.load_checkpoint(tmp_path / "run")["network"]["readout.weight"], torch.eye(10))
    assert main(["evaluate", str(tmp_path / "run")]) == 0


def test_to_nir_graph_is_type_checked(gen):
    graph = to_nir(random_net(KINDS["LIF"], gen))
    graph.infer_types()
    graph.check_types()


def test_quantized_run_exports_the_weights_it_runs(tmp_path, capsys):
    run = tmp_path / "q"
    assert main(["train", "--out", str(run), "--hidden", "16", "--epochs", "1", "--steps", "4", "--quantize", "loihi",
                 "--no-progress"]) == 0
    assert main(["export", str(run), "--to", "nir", "--out", str(tmp_path / "q.nir")]) == 0
    assert main(["import", str(tmp_path / "q.nir"), "--out", str(tmp_path / "imported")]) == 0
    w = load_nir(tmp_path / "q.nir").nodes["fc1"].weight
    assert len(np.unique(np.abs(w))) <= 128  # 8-bit mantissas times one step
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    first = capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "imported")]) == 0
    assert capsys.readouterr().out == first


@settings(max_examples=300, deadline=None)
@given(ku=st.integers(1, 10**6), kv=st.integers(1, 10**6), dt=st.floats(1e-6, 1e-1), du_f=st.floats(0.001, 1.0))
@example(ku=10**6, kv=45_000, dt=DEFAULT_DT, du_f=0.3)  # dv = 0.045: dt / (dt / 0.045) != 0.045 for every float tau
def test_conversion_round_trips_decays(ku, kv, dt, du_f):
    # decays with a short decimal form (what people type, Loihi's k/4096) come back exactly
    du, dv = ku / 10**6, kv / 10**6
    c = to_continuous(LIFParams(du=du, dv=dv), dt)
    back_du, back_dv = to_discrete(c.get("tau_syn"), c["tau"] if c["kind"] == "LIF" else c["tau_mem"], dt)
    assert (float(back_du), float(back_dv)) == (du, dv)
    # any other decay within two ulps (one from the nudge of tau, one from the snap)
    c = to_continuous(LIFParams(du=du_f, dv=0.5), dt)
    back = float(to_discrete(c.get("tau_syn"), None, dt)[0]) if c["kind"] == "CubaLIF" else 1.0
    assert abs(back - du_f) <= 2 * np.spacing(du_f)
