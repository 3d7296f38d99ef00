"""The four backends behind one interface: the same time-major input, the same result type.

    run("float", net, x)                 spikeprop.network.simulate on the trained float Network
    run("emulator", fnet, x)             hardware.emulator.emulate on the FixedNetwork (bit-exact)
    run("lava_fixed_pt", fnet, x)        Lava's CPU simulator, fixed_pt models, on the FixedNetwork
    run("lava_floating_pt", flt, x)      Lava's CPU simulator, floating_pt models, on the FloatNetwork

``x`` [T, B, n_in] is the encoded input (currents or 0/1 spikes) every backend receives; the
fixed-point ones send its integer payload (``FixedNetwork.payload``). Each backend takes the
network record of its precision (``Network``, ``FixedNetwork`` or ``FloatNetwork``, as Lava's
float and bit-accurate models take their own parameters) and returns a ``Result`` whose spikes are
[T, B, n] per layer, each layer in its local clock. The layout Lava wants is made inside
``hardware.lava`` only.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch

from hardware import lava
from hardware.emulator import emulate
from hardware.loihi import ACT_SHIFT, FixedNetwork, FloatNetwork, time_constant_map
from spikeprop import SpikepropError
from spikeprop.network import Network, simulate

BACKENDS = ("float", "emulator", "lava_fixed_pt", "lava_floating_pt")
NETWORK_KIND = {"float": Network, "emulator": FixedNetwork, "lava_fixed_pt": FixedNetwork,
                "lava_floating_pt": FloatNetwork}


class Result(NamedTuple):
    """What every backend returns.

    scores: class scores [B, C] (float64; their arg-max is the prediction). v_out: the read-out
    integrator's voltage after T steps [B, C] (int64 Lava units for the fixed-point backends,
    T·scores for the float ones). spikes: per hidden layer [T, B, n] bool (when ``record``);
    u, v: per layer, read-out included, [T, B, n] after the step's reset (when ``record_uv``; the
    fixed-point backends). timing: seconds (``wall_s``, and Lava's own phases).
    """

    scores: torch.Tensor
    v_out: torch.Tensor
    spikes: list[torch.Tensor] | None
    u: list[torch.Tensor] | None
    v: list[torch.Tensor] | None
    timing: dict


def run(backend: str, network, x: torch.Tensor, *, record: bool = False, record_uv: bool = False,
        timeout: float | None = None) -> Result:
    """Run ``network`` on ``x`` [T, B, n_in] with ``backend`` (module docstring)."""
    if backend not in BACKENDS:
        raise SpikepropError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS)})")
    if not isinstance(network, NETWORK_KIND[backend]):
        raise SpikepropError(f"backend {backend} runs a {NETWORK_KIND[backend].__name__}, not a {type(network).__name__}")
    t0 = time.perf_counter()
    out = _RUNNERS[backend](network, x, record, record_uv, timeout)
    return out._replace(timing={"wall_s": time.perf_counter() - t0, **out.timing})


@torch.no_grad()
def _float(net: Network, x, record, record_uv, timeout) -> Result:
    x = time_constant_map(x, lambda v: v.to(net.readout.weight.dtype))
    spikes: list[torch.Tensor | None] = [None] * net.n_layers

    def keep_spikes(layer, t, s_in, step):  # one [T, B, n] buffer per layer, filled step by step
        s = step.s.reshape(step.s.shape[0], -1)  # a feature map flattened in C-H-W order, as the other backends give it
        if t == 0:
            spikes[layer] = torch.zeros((x.shape[0], *s.shape), dtype=torch.bool)
        spikes[layer][t] = s

    res = simulate(net, x, observer=keep_spikes if record else None)
    logits = res.logits.double()
    return Result(logits, logits * x.shape[0], spikes if record else None, None, None, {})


def _emulator(fnet: FixedNetwork, x, record, record_uv, timeout) -> Result:
    emu = emulate(fnet, fnet.payload(x), record=record or record_uv, record_uv=record_uv)
    spikes = emu.spikes[:-1] if emu.spikes is not None and record else None
    return Result(emu.logits, emu.v_out, spikes, emu.u, emu.v, {})


def _lava_fixed(fnet: FixedNetwork, x, record, record_uv, timeout) -> Result:
    res = lava.run(fnet, fnet.payload(x).numpy(), record_spikes=record, record_uv=record_uv, timeout=timeout)
    v_out = torch.as_tensor(np.asarray(res.v_out, dtype=np.int64))
    scores = v_out.double() / (2**ACT_SHIFT * fnet.readout.scale * x.shape[0])
    return Result(scores, v_out, _tensors(res.spikes), _tensors(res.u), _tensors(res.v), res.timing)


def _lava_float(flt: FloatNetwork, x, record, record_uv, timeout) -> Result:
    x64 = time_constant_map(x, torch.Tensor.double)
    res = lava.run(flt, x64.numpy(), record_spikes=record, record_uv=record_uv, timeout=timeout)
    v_out = torch.as_tensor(np.asarray(res.v_out, dtype=np.float64))
    return Result(v_out / x.shape[0], v_out, _tensors(res.spikes), _tensors(res.u), _tensors(res.v), res.timing)


def _tensors(arrays: list[np.ndarray] | None) -> list[torch.Tensor] | None:
    return None if arrays is None else [torch.as_tensor(a) for a in arrays]


_RUNNERS = {"float": _float, "emulator": _emulator, "lava_fixed_pt": _lava_fixed, "lava_floating_pt": _lava_float}
