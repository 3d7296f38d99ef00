"""LIF networks built from typed layer records, and the one time loop that simulates them.

A network is a stack of spiking layers and a read-out. Hidden layer ``l`` is a synapse
(``spikeprop.layers``: a Lava ``Dense``, weights ``W_l`` [n_out, n_in], or a ``Conv2d``, weights
[C_out, C_in, kH, kW]; no bias) feeding a population of Lava ``LIF`` neurons shaped like the
synapse's output (decays ``du``, ``dv``, threshold ``vth`` and a bias per neuron, or per channel
for a convolution). The read-out is a Dense into a non-spiking integrator (Lava LIF with
``du = 1``, ``dv = 0`` and a threshold it never reaches), so after T steps its voltage is
``sum_t (W_out s_L[t] + b_out)``; the class scores ("logits") are that voltage over T, i.e.
``W_out r + b_out`` with ``r`` the mean spike count (flattened in C-H-W order after a convolution).

Timing. Lava's Dense delivers a spike one step after it was emitted, so layer ``l`` (counting
from 1) processes input step ``k`` of a sample at global step ``k + l`` (plus the source's own
offset). spikeprop simulates each layer in its own clock, shifted by that latency: local step
``t`` of layer ``l`` is global step ``t + l``. Every layer thus sees all T steps of its sample,
which is exactly what Lava computes when each layer's state is zeroed at the start of its own
sample window (``LIFReset`` with ``reset_offset`` = 1 + l + source offset, see
``hardware.lava``). ``global_time`` converts a recorded layer to Lava's clock.

All tensors are time-major: inputs ``x`` are [T, B, *in_shape] (images [T, B, C, H, W]; a flat
[T, B, n_in] is reshaped to the first layer's input shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from spikeprop import SpikepropError
from spikeprop.layers import Dense, Synapse, describe, parse_layers
from spikeprop.neurons import LIFParams, LIFState, LIFStep, SpikeFn, heaviside, lif_step

# observer(layer_index, t, layer_input [B, *in_shape], step) is called after every LIF step.
Observer = Callable[[int, int, torch.Tensor, LIFStep], None]


class Network(nn.Module):
    """LIF layers plus a linear read-out. Parameters only; state lives in ``simulate``.

    layers: the sizes ``(n_in, hidden_1, ..., hidden_L, n_classes)`` of a fully-connected network,
    or the synapse records of the hidden layers (``spikeprop.layers``; the first one's
    ``in_shape`` is the input's) with ``n_classes``. params: one LIFParams for every hidden layer
    (a single value is shared). Weights start uniform in ±gain/sqrt(fan_in), biases at 0, drawn
    from ``generator`` so that a seed fixes them.
    """

    def __init__(
        self,
        layers: Sequence[int] | Sequence[Synapse],
        params: LIFParams | Sequence[LIFParams],
        generator: torch.Generator | None = None,
        gain: float = 1.0,
        weight_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        n_classes: int | None = None,
    ):
        super().__init__()
        layers = list(layers)
        if layers and all(isinstance(n, int) for n in layers):  # the sizes of a fully-connected network
            sizes = [int(n) for n in layers]
            if len(sizes) < 3:
                raise SpikepropError(f"a network needs an input, at least one hidden layer and an output; got sizes {sizes}")
            if any(n < 1 for n in sizes):
                raise SpikepropError(f"layer sizes must be positive integers; got {sizes}")
            synapses = [Dense((a,), b) for a, b in zip(sizes[:-2], sizes[1:-1])]
            n_classes = sizes[-1]
        else:
            synapses = layers
            if not synapses or n_classes is None or n_classes < 1:
                raise SpikepropError("a network needs at least one hidden layer and a number of classes")
            for a, b in zip(synapses[:-1], synapses[1:]):
                if a.out_shape != b.in_shape and not (isinstance(b, Dense) and a.n_out == b.n_in):
                    raise SpikepropError(f"layer {b.token()} takes input {b.in_shape} but the layer before gives {a.out_shape}")
        n_hidden = len(synapses)
        if isinstance(params, LIFParams):
            params = [params] * n_hidden
        if len(params) != n_hidden:
            raise SpikepropError(f"{len(params)} LIF parameter sets for {n_hidden} hidden layers")
        self.synapses: tuple[Synapse, ...] = tuple(synapses)
        self.sizes = (synapses[0].n_in, *(syn.n_out for syn in synapses), int(n_classes))
        self.params = tuple(params)
        # Optional W -> W' applied to every synapse (hidden and read-out) inside ``simulate``:
        # ``--quantize loihi`` gives spikeprop.quantize.fake_quant_weight. Not a parameter.
        self.weight_transform = weight_transform
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for syn in synapses:
            self.weights.append(nn.Parameter(_uniform(syn.weight_shape, gain / math.sqrt(syn.fan_in), generator)))
            self.biases.append(nn.Parameter(torch.zeros(syn.bias_shape)))
        # W_rec of the recurrent layers (keyed by the layer's index), uniform in ±gain/sqrt(n)
        self.recurrent = nn.ParameterDict()
        for layer, syn in enumerate(synapses):
            if getattr(syn, "recurrent", False):
                n = syn.n_out
                self.recurrent[str(layer)] = nn.Parameter(_uniform((n, n), gain / math.sqrt(n), generator))
        self.readout = nn.Linear(self.sizes[-2], self.sizes[-1])
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.sizes[-2])
            self.readout.weight.copy_(_uniform(self.readout.weight.shape, bound, generator))
            self.readout.bias.zero_()

    def recurrent_weight(self, layer: int) -> torch.Tensor | None:
        """``W_rec`` [n, n] of hidden layer ``layer`` (None: not recurrent)."""
        return self.recurrent[str(layer)] if str(layer) in self.recurrent else None

    def hidden_parameters(self) -> list[nn.Parameter]:
        """Everything of the hidden layers a rule trains: weights, biases, recurrent weights."""
        return [*self.weights, *self.biases, *self.recurrent.values()]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.synapses[0].in_shape

    @property
    def convolutional(self) -> bool:
        return any(not isinstance(s, Dense) for s in self.synapses)

    def effective_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight a synapse runs with: ``weight_transform(w)`` (the fake-quantized one), else ``w``."""
        return self.weight_transform(w) if self.weight_transform is not None else w

    @property
    def n_layers(self) -> int:
        """The number of hidden (spiking) layers."""
        return len(self.weights)

    def describe(self) -> dict:
        """Plain values that rebuild this architecture (see ``from_description``)."""
        d = {"sizes": list(self.sizes), "params": [{"du": p.du, "dv": p.dv, "vth": p.vth} for p in self.params]}
        if self.convolutional or len(self.in_shape) > 1 or len(self.recurrent):
            d["in_shape"], d["layers"] = list(self.in_shape), describe(self.synapses)
        return d

    @classmethod
    def from_description(cls, d: dict) -> Network:
        params = [LIFParams(**p) for p in d["params"]]
        if "layers" in d:
            return cls(parse_layers(d["layers"], tuple(d["in_shape"])), params, n_classes=d["sizes"][-1])
        return cls(d["sizes"], params)


def _uniform(shape, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound


class SimResult(NamedTuple):
    """What ``simulate`` returns.

    counts: spike counts per hidden layer, each [B, n] (sum over the T steps).
    logits: read-out scores [B, n_classes] (``W_out counts_L / T + b_out``).
    spikes, v: per hidden layer [T, B, n] spikes and pre-reset voltages, when ``record``.
    """

    counts: list[torch.Tensor]
    logits: torch.Tensor
    spikes: list[torch.Tensor] | None = None
    v: list[torch.Tensor] | None = None


def simulate(
    net: Network,
    x: torch.Tensor,
    *,
    spike_fn: SpikeFn = heaviside,
    reset_grad: str = "stop",
    record: bool = False,
    observer: Observer | None = None,
    first_layer: tuple[Synapse, torch.Tensor] | None = None,
) -> SimResult:
    """Run ``net`` on ``x`` [T, B, *in_shape] (currents or spikes) for T steps from zero state.

    This is the one time loop of spikeprop: every layer, every rule and every backend that
    simulates in torch goes through it. Step-major: at each step all layers advance, layer ``l``
    reading layer ``l-1``'s spikes of the same (layer-local) step (module docstring: timing).
    Memory is independent of T unless ``record`` is set.

    first_layer: (synapse, weight) that replace the first synapse (sigprop's label projection
    ``S_1``: its input is the label stream's, its output the first layer's shape).
    A recurrent layer adds ``W_rec s_self[t - 1]`` to its current (nothing at t = 0: every sample
    starts from zero state, its own spikes included).
    observer: called as ``observer(l, t, layer_input, step)`` after each LIF step.
    """
    if x.dim() < 3:
        raise SpikepropError(f"inputs must be time-major [T, B, ...]; got shape {tuple(x.shape)}")
    T, B = x.shape[:2]
    synapses = list(net.synapses)
    weights = [net.effective_weight(w) for w in net.weights]
    if first_layer is not None:
        synapses[0], weights[0] = first_layer
    in_shape = synapses[0].in_shape
    if math.prod(x.shape[2:]) != math.prod(in_shape):
        raise SpikepropError(f"input has {math.prod(x.shape[2:])} features but the first layer expects {math.prod(in_shape)}")
    if tuple(x.shape[2:]) != tuple(in_shape):
        x = x.reshape(T, B, *in_shape)  # a view (a stride-0 time axis stays one)
    biases = [syn.expand_bias(b) for syn, b in zip(net.synapses, net.biases)]
    rec = [net.recurrent_weight(layer) for layer in range(net.n_layers)]
    rec = [None if w is None else net.effective_weight(w) for w in rec]
    states = [LIFState.zeros(B, syn.out_shape, device=x.device, dtype=x.dtype) for syn in net.synapses]
    last = [None] * net.n_layers  # a recurrent layer's spikes of the previous step (none before t = 0)
    counts = [torch.zeros(B, *syn.out_shape, device=x.device, dtype=x.dtype) for syn in net.synapses]
    rec_s: list[list[torch.Tensor]] = [[] for _ in weights]
    rec_v: list[list[torch.Tensor]] = [[] for _ in weights]
    # A time-constant input (direct encoding, sigprop's target stream: an expanded view with
    # stride 0 along T) gives the same first synapse output at every step: compute it once.
    a_first = synapses[0].current(x[0], weights[0]) if x.stride(0) == 0 else None
    for t in range(T):
        s = x[t]
        for layer, (syn, w, bias, params) in enumerate(zip(synapses, weights, biases, net.params)):
            a = a_first if layer == 0 and a_first is not None else syn.current(s, w)
            if rec[layer] is not None and last[layer] is not None:
                a = a + F.linear(last[layer], rec[layer])  # W_rec s_self[t - 1]: Lava's recurrent Dense delay
            step = lif_step(a, states[layer], params, bias, spike_fn, reset_grad)
            if rec[layer] is not None:
                last[layer] = step.s
            if observer is not None:
                observer(layer, t, s, step)
            states[layer] = step.state
            counts[layer] = counts[layer] + step.s
            if record:
                rec_s[layer].append(step.s)
                rec_v[layer].append(step.v_pre)
            s = step.s
    rates = counts[-1].flatten(1) / T
    if net.weight_transform is None:
        logits = net.readout(rates)
    else:
        logits = F.linear(rates, net.effective_weight(net.readout.weight), net.readout.bias)
    if not record:
        return SimResult(counts, logits)
    return SimResult(counts, logits, [torch.stack(r) for r in rec_s], [torch.stack(r) for r in rec_v])


def global_time(layer_spikes: torch.Tensor, layer: int, total_steps: int | None = None) -> torch.Tensor:
    """Shift a recorded hidden layer [T, B, n] from its local clock to Lava's global clock.

    Hidden layer ``layer`` (0-based) is ``layer + 1`` Dense hops from the input, so its local
    step t happens at global step t + layer + 1; the first steps are zero-filled.
    """
    T = layer_spikes.shape[0]
    total = total_steps if total_steps is not None else T + layer + 1
    out = layer_spikes.new_zeros((total,) + tuple(layer_spikes.shape[1:]))
    shift = layer + 1
    n = max(0, min(T, total - shift))
    out[shift : shift + n] = layer_spikes[:n]
    return out
