"""The LIF step against closed-form responses, snnTorch's Leaky, and its invariants."""

import math

import pytest
import snntorch as snn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikeprop import SpikepropError
from spikeprop.neurons import LIFParams, LIFState, heaviside, lif_step


def run(a, params, bias=None, steps=None):
    """Feed a [T, B, N] input through lif_step; return spikes and pre-reset voltages [T, B, N]."""
    state = LIFState.zeros(a.shape[1], a.shape[2], dtype=a.dtype)
    s_out, v_out = [], []
    for t in range(a.shape[0]):
        step = lif_step(a[t], state, params, bias)
        state = step.state
        s_out.append(step.s)
        v_out.append(step.v_pre)
    return torch.stack(s_out), torch.stack(v_out)


@given(a=st.floats(0.01, 2.0), dv=st.floats(0.01, 0.5), vth=st.floats(0.1, 3.0))
@settings(max_examples=60, deadline=None)
def test_constant_current_first_spike_is_closed_form(a, dv, vth):
    # du = 1: v[t] = a (1 - (1-dv)^t) / dv for t = 1, 2, ...; the first spike is the first t with v > vth.
    params = LIFParams(du=1.0, dv=dv, vth=vth)
    T = 200
    s, v = run(torch.full((T, 1, 1), a, dtype=torch.float64), params)
    closed = [a * (1 - (1 - dv) ** t) / dv for t in range(1, T + 1)]
    expected = next((t for t, x in enumerate(closed) if x > vth and abs(x - vth) > 1e-9), None)
    fired = torch.nonzero(s[:, 0, 0]).flatten()
    if expected is None:
        assert len(fired) == 0
    else:
        assert int(fired[0]) == expected
        assert torch.allclose(v[: expected + 1, 0, 0], torch.tensor(closed[: expected + 1], dtype=torch.float64))


def test_synaptic_current_closed_form():
    # du < 1, no threshold reached: u[t] = a (1 - (1-du)^t) / du, v integrates u with dv = 0.
    du, a = 0.25, 0.1
    params = LIFParams(du=du, dv=0.0, vth=1e9)
    state = LIFState.zeros(1, 1, dtype=torch.float64)
    v_expected = 0.0
    for t in range(1, 30):
        state = lif_step(torch.full((1, 1), a, dtype=torch.float64), state, params).state
        u = a * (1 - (1 - du) ** t) / du
        v_expected += u
        assert math.isclose(float(state.u), u, rel_tol=1e-12)
        assert math.isclose(float(state.v), v_expected, rel_tol=1e-12)


def test_integrate_and_fire_counts_exactly():
    # dv = 0 ("--neurons if"): a constant 0.3 crosses vth = 1 at the 4th step, then every 4 steps.
    s, _ = run(torch.full((12, 1, 1), 0.3, dtype=torch.float64), LIFParams.for_kind("if"))
    assert torch.nonzero(s[:, 0, 0]).flatten().tolist() == [3, 7, 11]


def test_equals_snntorch_leaky_with_zero_reset(gen):
    # du = 1 makes Lava's LIF snnTorch's Leaky(beta = 1 - dv, reset_mechanism="zero"); its mem is our v_pre.
    dv, vth = 0.2, 1.0
    a = torch.rand(40, 3, 16, generator=gen) * 0.8
    bias = torch.rand(16, generator=gen) * 0.1
    s, v = run(a, LIFParams(du=1.0, dv=dv, vth=vth), bias)
    leaky = snn.Leaky(beta=1 - dv, threshold=vth, reset_mechanism="zero")
    mem = leaky.init_leaky()
    for t in range(a.shape[0]):
        spk, mem = leaky(a[t] + bias, mem)
        assert torch.equal(spk, s[t])
        assert torch.allclose(mem, v[t], atol=1e-6)
    assert s.sum() > 10  # the comparison covered resets


@given(seed=st.integers(0, 2**31 - 1), dv=st.floats(0.0, 1.0), du=st.floats(0.0, 1.0), vth=st.floats(0.05, 2.0))
@settings(max_examples=40, deadline=None)
def test_invariants(seed, dv, du, vth):
    g = torch.Generator().manual_seed(seed)
    params = LIFParams(du=du, dv=dv, vth=vth)
    a = torch.randn(20, 4, 8, generator=g)
    bias = torch.randn(8, generator=g) * 0.1
    state = LIFState.zeros(4, 8)
    for t in range(20):
        step = lif_step(a[t], state, params, bias)
        state = step.state
        assert set(step.s.unique().tolist()) <= {0.0, 1.0}
        assert bool((state.v <= vth).all())  # after the reset, v never exceeds the threshold
        assert torch.equal(step.s, (step.v_pre > vth).float())  # strict threshold
    silent, _ = run(torch.zeros(20, 4, 8), params)
    assert silent.sum() == 0  # no input and no bias: no spikes


def test_reset_gradient_conventions_agree_forward():
    params = LIFParams(dv=0.1)
    a = torch.rand(10, 2, 5, generator=torch.Generator().manual_seed(0)) * 2
    outs = []
    for mode in ("stop", "constant"):
        state = LIFState.zeros(2, 5)
        vs = []
        for t in range(10):
            step = lif_step(a[t], state, params, reset_grad=mode)
            state = step.state
            vs.append(state.v)
        outs.append(torch.stack(vs))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("kwargs", [{"du": 1.5}, {"dv": -0.1}, {"vth": 0.0}])
def test_impossible_parameters_are_rejected(kwargs):
    with pytest.raises(SpikepropError):
        LIFParams(**kwargs)


def test_heaviside_is_strict():
    assert heaviside(torch.tensor([-1.0, 0.0, 1e-7])).tolist() == [0.0, 0.0, 1.0]
