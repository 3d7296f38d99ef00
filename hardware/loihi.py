"""Loihi-2 fixed point, the integer network: records, quantization, what fits, and the file format.

What a deployed network is, separated from how it is computed (Lava's split of a process from its
models): this module holds the network as plain data in the two precisions Lava's CPU models run,
``FixedNetwork`` (integers, for fixed_pt) and ``FloatNetwork`` (float64, for floating_pt), the
quantization from a trained float network, the checks of what Loihi 2 can hold, and ``save`` /
``load``. ``hardware.emulator`` computes a FixedNetwork bit-exactly in torch, ``hardware.lava``
runs either record on Lava's CPU simulator, ``hardware.deploy`` connects run directories to them.

A ``FixedNetwork``: per hidden layer a Lava ``Dense`` (even integer weights ``2m`` in [-256, 254],
one ``weight_exp``) feeding a Lava ``LIF`` (``du``, ``dv``, ``vth`` as Python ints, per-neuron
``bias_mant`` / ``bias_exp``), then the read-out: a Dense into a non-spiking integrator LIF
(``du = 4095``: memoryless current, ``dv = 0``, ``vth = VTH_MAX``, never reached), whose voltage
after T steps is ``64·S_out·T·logits``. The arithmetic is in ``hardware.emulator``.

File format (``save`` / ``load``; ``spikeprop export RUN_DIR --to lava --out FILE``; the Lava
child process reads the same file): one ``.npz`` (numpy's zip of ``.npy`` arrays) holding

    header                  0-d unicode array: JSON, below
    layer{i}.weights        int32 [n_out, n_in], even, in [-256, 254]   (i = 0 .. L-1)
    layer{i}.bias_mant      int32 [n_out], in [-4096, 4095]
    layer{i}.bias_exp       int32 [n_out], in [0, 7]
    readout.weights / readout.bias_mant / readout.bias_exp          (the same for the read-out)

    header = {"format": "spikeprop-loihi", "version": 1, "precision": "fixed_pt", "steps": T,
              "encoding": "direct"|"rate"|"latency", "graded_input": bool, "input_scale": float,
              "input_bits": int, "layers": [{"n_in", "n_out", "weight_exp", "du", "dv", "vth", "scale"}, ...],
              "readout": {... the same ...}, "source": {...}}

A ``FloatNetwork`` file has ``"precision": "floating_pt"``, float64 ``layer{i}.weights`` and
``layer{i}.bias`` (in v units), and per layer ``du``, ``dv`` (fractions) and ``vth`` (floats). A file
without ``precision`` is fixed_pt (the first files had none).

Input: for graded input (direct encoding) Lava's source sends the integer payload
``round(x · input_scale)`` at every step (``Dense(num_message_bits=input_bits)``); for binary
input (rate, latency) it sends 0/1 spikes. ``scale`` is the layer's integer scale S: Lava
a-units per float unit of input current; u and v are in units of 64·S.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from spikeprop import SpikepropError
from spikeprop.layers import Conv2d, Dense, Synapse
from spikeprop.layers import to_dict as synapse_dict
from spikeprop.network import Network, simulate
from spikeprop.quantize import DECAY_UNIT, fake_quant_weight, weight_mantissa

FORMAT = "spikeprop-loihi"
FORMAT_VERSION = 2  # 2: a per-layer "synapse" record (dense or conv2d); version-1 files (all dense) still load
READABLE_VERSIONS = (1, 2)
PRECISIONS = ("fixed_pt", "floating_pt")  # Lava's tags for its two CPU models of each process

# --- Lava fixed_pt arithmetic (lava/proc/lif/models.py, lava/proc/dense/models.py) -----------
UV_BITS = 24  # u and v are 24-bit signed registers
UV_LIMIT = 2 ** (UV_BITS - 1)  # u wraps past +2**23, v saturates at ±(2**23 - 1)
ACT_SHIFT = 6  # the Dense output is MSB-aligned into u with << 6
VTH_SHIFT = 6  # the threshold is MSB-aligned with << 6 (so vth is in weight units)
DECAY_SHIFT = 12  # decays are fractions of 2**12 = DECAY_UNIT
DU_OFFSET = 1  # Lava multiplies u by (4096 - (du + 1)) / 4096: du = 4095 makes u memoryless
INT32_BITS = 32  # Lava forms a << 6 and u + a in int32 and sends a through an int32 channel

# --- Loihi 2 parameter ranges (the bit widths Lava's LIF/Dense docstrings declare) -------------
WEIGHT_MIN, WEIGHT_MAX = -256, 254  # 8-bit mantissa, MIXED sign mode: even values only
WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -8, 7  # a signed 4-bit shared weight exponent
DECAY_MAX = 4095  # du, dv: unsigned 12-bit
VTH_MAX = 2**17 - 1  # vth: unsigned 17-bit
BIAS_MANT_MIN, BIAS_MANT_MAX = -(2**12), 2**12 - 1  # bias_mant: signed 13-bit
BIAS_EXP_MAX = 7  # bias_exp: unsigned 3-bit
ACT_MAX = 2**17  # |a| below this keeps a << 6 inside u's 24 bits (no wrap)
MESSAGE_BITS_MAX = 24  # graded spikes carry up to 24-bit payloads on Loihi 2

FLOAT_UNREACHABLE = 1e300  # the floating_pt read-out's threshold: never crossed

# Headroom: the calibrated peak of |u| and |v| may use half of the 24-bit range, so samples
# brighter than the calibration set have a factor 2 before u wraps or v saturates.
HEADROOM_BITS = 1

# --- Loihi 2 chip resources: Intel, "Taking Neuromorphic Computing to the Next Level with
# Loihi 2" (technology brief, 2021): 128 neuro cores, up to 1 M neurons and 120 M synapses per
# chip, at most 8192 neurons per core. The brief gives no per-core synapse count; we use the
# chip's 120 M synapses over its 128 cores as the average a core can hold (the true figure
# depends on weight precision and sparsity, decided by Intel's hardware compiler).
CORES_PER_CHIP = 128
NEURONS_PER_CORE = 8192
SYNAPSES_PER_CORE = 120_000_000 // CORES_PER_CHIP


def _default_synapse(layer) -> None:
    """A layer built without a synapse record is a Dense from its weight matrix's shape (v1 files, tests)."""
    if layer.synapse is None and np.ndim(layer.weights) == 2:
        object.__setattr__(layer, "synapse", Dense((int(layer.weights.shape[1]),), int(layer.weights.shape[0])))


class _Shaped:
    """n_in, n_out and the synapse kind of a layer record, from its ``synapse`` (``spikeprop.layers``)."""

    synapse: Synapse | None
    weights: np.ndarray

    @property
    def n_in(self) -> int:
        return int(self.synapse.n_in) if self.synapse is not None else int(np.shape(self.weights)[-1])

    @property
    def n_out(self) -> int:
        return int(self.synapse.n_out) if self.synapse is not None else int(np.shape(self.weights)[0])

    @property
    def kind(self) -> str:
        return self.synapse.kind if self.synapse is not None else "dense"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.synapse.out_shape) if self.synapse is not None else (self.n_out,)


@dataclass(frozen=True, eq=False)
class FixedLayer(_Shaped):
    """One synapse + LIF pair in Loihi-2 integers, Lava's parameters as given to its fixed_pt processes.

    weights: int, the synapse's weight shape (Dense [n_out, n_in]; Conv2d [C_out, C_in, kH, kW] in
    PyTorch's order); weight_exp, du, dv, vth: Python ints; bias_mant, bias_exp: int [n_out] per
    neuron (a convolution's per-channel bias repeated over its positions, C-H-W order);
    scale: S, Lava a-units per float unit of input current (u and v are in units of 64·S);
    synapse: the ``spikeprop.layers`` record (None: a Dense of the weight matrix's shape).
    ``eq=False``: records of arrays compare by identity (value equality of arrays is ambiguous).
    """

    weights: np.ndarray
    weight_exp: int
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    scale: float = 1.0
    synapse: Synapse | None = None

    def __post_init__(self) -> None:
        _default_synapse(self)

    def scalars(self) -> dict:
        return {"n_in": self.n_in, "n_out": self.n_out, "weight_exp": self.weight_exp, "du": self.du,
                "dv": self.dv, "vth": self.vth, "scale": self.scale, "synapse": synapse_dict(self.synapse)}


def lava_process(layer) -> str:
    """The Lava process a layer's synapse runs as (``hardware.lava``; README: conv nets on Lava).

    Dense -> ``Dense``. A convolution -> ``Conv`` (lava.proc.conv: the kernel shared over positions)
    when its weight_exp is 0, else ``Sparse`` with the kernel unrolled into its connection matrix:
    Lava's fixed_pt Conv model ignores ``weight_exp`` (lava #803; it computes the plain integer
    convolution and wraps it to 24 bits), Sparse shifts by it as Dense does. Under floating_pt
    (no exponent) every convolution is a ``Conv``.
    """
    if layer.kind == "dense":
        return "Dense"
    if isinstance(layer, FixedLayer) and layer.weight_exp != 0:
        return "Sparse"
    return "Conv"


@dataclass(frozen=True, eq=False)
class FixedNetwork:
    """A network in Loihi-2 integers (module docstring). ``layers`` are the spiking layers."""

    layers: tuple[FixedLayer, ...]
    readout: FixedLayer
    steps: int
    encoding: str
    graded_input: bool
    input_scale: float
    input_bits: int
    source: dict | None = None
    precision = "fixed_pt"

    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "precision": self.precision, "steps": self.steps,
                "encoding": self.encoding, "graded_input": self.graded_input, "input_scale": self.input_scale,
                "input_bits": self.input_bits, "layers": [layer.scalars() for layer in self.layers],
                "readout": self.readout.scalars(), "source": self.source or {}}

    def payload(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded input x [T, B, *in_shape] (currents in [0, 1] or 0/1 spikes) -> int64 payload
        [T, B, n_in] (an image flattened in C-H-W order, as the first Dense reads it).

        An input repeated over time (direct encoding: a stride-0 time axis) stays a view."""
        if x.dim() > 3:
            x = x.reshape(*x.shape[:2], -1)
        if x.dim() == 3 and x.shape[0] > 1 and x.stride(0) == 0:
            return self.payload(x[:1]).expand(x.shape)
        if self.graded_input:
            return torch.round(x.double() * self.input_scale).to(torch.int64)
        return (x != 0).to(torch.int64)


@dataclass(frozen=True, eq=False)
class FloatLayer(_Shaped):
    """One synapse + LIF pair for Lava's floating_pt models: weights float64 (the synapse's weight
    shape, as the float network runs them), du and dv as fractions, vth and bias [n_out] per neuron
    in float units; synapse as for FixedLayer."""

    weights: np.ndarray
    du: float
    dv: float
    vth: float
    bias: np.ndarray
    synapse: Synapse | None = None

    def __post_init__(self) -> None:
        _default_synapse(self)

    def scalars(self) -> dict:
        return {"n_in": self.n_in, "n_out": self.n_out, "du": self.du, "dv": self.dv, "vth": self.vth,
                "synapse": synapse_dict(self.synapse)}


@dataclass(frozen=True, eq=False)
class FloatNetwork:
    """The float network as Lava floating_pt runs it: hidden layers and the read-out integrator
    (``du = 1``, ``dv = 0``, ``vth = FLOAT_UNREACHABLE``; its v after T steps is T·logits)."""

    layers: tuple[FloatLayer, ...]
    readout: FloatLayer
    steps: int
    graded_input: bool
    input_bits: int = 0
    precision = "floating_pt"

    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "precision": self.precision, "steps": self.steps,
                "graded_input": self.graded_input, "input_bits": self.input_bits,
                "layers": [layer.scalars() for layer in self.layers], "readout": self.readout.scalars()}


def time_constant_view(x: torch.Tensor) -> torch.Tensor:
    """``x[:1]`` when the time-major ``x`` [T, ...] repeats one step (a stride-0 time axis, as
    direct encoding gives), else ``x``: what an element-wise reduction (max, min) needs to see,
    without materialising T copies."""
    return x[:1] if x.dim() >= 1 and x.shape[0] > 1 and x.stride(0) == 0 else x


def time_constant_map(x: torch.Tensor, fn) -> torch.Tensor:
    """``fn(x)`` for an element-wise ``fn``; a stride-0 time axis stays a view (``fn`` runs on one step)."""
    if x.dim() >= 1 and x.shape[0] > 1 and x.stride(0) == 0:
        return fn(x[:1]).expand(x.shape)
    return fn(x)


# --------------------------------------------------------------------------------------------
# Quantization


class Calibration(NamedTuple):
    """Peaks of the float network on calibration data, per hidden layer and for the read-out."""

    peak: list[float]  # max(|u|, |v before reset|) per hidden layer, float units
    readout_peak: float  # max over t of |partial sums of W_out s + b_out| and |W_out s|


@torch.no_grad()
def calibrate(net: Network, x: torch.Tensor) -> Calibration:
    """Run the float network on encoded inputs x [T, B, n_in] and record its peaks.

    The read-out's peaks are ``max_t |a[t]|`` and ``max_t |sum_{t' <= t} (a[t'] + b_out)|`` with
    ``a[t] = W_out s_L[t]``, taken step by step as the network runs (memory O(B · n), flat in T).
    The partial sums accumulate in float64 and are rounded to the network's dtype at every step,
    which is what ``torch.cumsum`` over the time axis computes on the CPU (tested).
    """
    peak = [0.0] * net.n_layers
    last = net.n_layers - 1
    w_out = net.effective_weight(net.readout.weight)
    out = {"a": 0.0, "partial": 0.0, "sum": None}

    def observer(layer, t, s_in, step):
        p = max(float(step.state.u.abs().max()), float(step.v_pre.abs().max()))
        peak[layer] = max(peak[layer], p)
        if layer == last:
            a = F.linear(step.s, w_out)  # [B, C]
            term = (a + net.readout.bias).to(torch.float64)
            out["sum"] = term if t == 0 else out["sum"] + term
            out["a"] = max(out["a"], float(a.abs().max()))
            out["partial"] = max(out["partial"], float(out["sum"].to(a.dtype).abs().max()))

    simulate(net, time_constant_map(x, lambda v: v.to(net.readout.weight.dtype)), observer=observer)
    return Calibration(peak, max(out["a"], out["partial"]))


def deployed(net: Network) -> Network:
    """``net`` with the 8-bit weights it is deployed with (shares its parameters): the network
    ``quantize`` calibrates, so that quantizing a fake-quantized network changes nothing."""
    out = copy.copy(net)
    t = net.weight_transform
    out.weight_transform = fake_quant_weight if t in (None, fake_quant_weight) else (lambda w: fake_quant_weight(t(w)))
    return out


def _choose_exp(step: float, input_scale: float, peak: float, vth: float | None) -> int:
    """The largest weight exponent e in range with 64·S·peak <= 2**(23 - HEADROOM) and vth·S <= VTH_MAX.

    S = 2**(e + 1) · input_scale / step is the layer's integer scale (Lava a-units per float unit):
    a payload x·input_scale through weights 2·W/step, shifted by e.
    """
    unit = 2.0 * input_scale / step  # S at e = 0
    budget = UV_LIMIT / 2**HEADROOM_BITS / 2**ACT_SHIFT
    e = WEIGHT_EXP_MAX
    for limit, value in ((budget, peak), (VTH_MAX, vth)):
        if value is not None and value > 0:
            ratio = limit / (unit * value)
            # ratio 0 (an overflowing product): no exponent is small enough; check_fit reports it
            e = min(e, math.floor(math.log2(ratio)) if ratio > 0 else WEIGHT_EXP_MIN)
    return max(WEIGHT_EXP_MIN, e)


def _bias(b: np.ndarray, v_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """bias in float units -> (bias_mant, bias_exp) per neuron with mant·2**exp ≈ b·v_unit."""
    b_int = np.round(b.astype(np.float64) * v_unit)
    mag = np.abs(b_int)
    exp = np.zeros(b_int.shape, dtype=np.int64)
    big = mag > BIAS_MANT_MAX
    exp[big] = np.ceil(np.log2(mag[big] / BIAS_MANT_MAX)).astype(np.int64)
    mant = np.round(b_int / 2.0**exp).astype(np.int64)
    # round() may land one above the range: move such neurons to the next exponent.
    over = (mant > BIAS_MANT_MAX) | (mant < BIAS_MANT_MIN)
    exp[over] += 1
    mant[over] = np.round(b_int[over] / 2.0 ** exp[over]).astype(np.int64)
    return mant.astype(np.int32), exp.astype(np.int32)


def neuron_bias(syn: Synapse, b: np.ndarray) -> np.ndarray:
    """A layer's bias per neuron [n_out] (C-H-W order) from its trained bias (per channel for a convolution)."""
    b = np.asarray(b, dtype=np.float64)
    if isinstance(syn, Conv2d):
        return np.broadcast_to(b.reshape(-1, 1, 1), syn.out_shape).reshape(-1).copy()
    return b


def _fixed_layer(w: torch.Tensor, bias: np.ndarray, input_scale: float, peak: float, vth: float | None,
                 du: float, dv: float, synapse: Synapse | None = None) -> FixedLayer:
    m, step = weight_mantissa(w.detach().cpu().double())
    step = float(step)
    e = _choose_exp(step, input_scale, peak, vth)
    if isinstance(synapse, Conv2d):
        # Lava's Conv ignores weight_exp (lava #803): a convolution runs as a Conv at exponent 0,
        # which only coarsens vth and the bias (the 8-bit weights are the same); one that needs a
        # negative exponent (a graded input too bright for e = 0) runs as a Sparse (``lava_process``).
        e = min(e, 0)
    scale = 2.0 ** (e + 1) * input_scale / step
    bias_mant, bias_exp = _bias(bias, 2**ACT_SHIFT * scale)
    vth_int = VTH_MAX if vth is None else int(round(vth * scale))
    du_int = int(round(du * DECAY_UNIT)) - DU_OFFSET
    dv_int = int(round(dv * DECAY_UNIT))
    weights = (2 * m).to(torch.int32).numpy()
    return FixedLayer(weights, int(e), du_int, dv_int, vth_int, bias_mant, bias_exp, scale, synapse)


def quantize(net: Network, calibration_x: torch.Tensor, *, encoding: str, graded_input: bool,
             input_scale: float = 1.0, source: dict | None = None, calibration: Calibration | None = None) -> FixedNetwork:
    """Float network -> Loihi-2 integers, one scale per layer.

    calibration_x: encoded inputs [T, B, n_in] the scales are chosen on (a few hundred training
    samples). input_scale: for graded input, the payload per unit of x (use the dataset's
    ``scale`` so that the stored integer pixels are sent exactly); binary input uses 1.

    Per layer: m = round(W/Δ) with Δ = max|W|/127, weights 2m; the exponent e is the largest
    in [-8, 7] that keeps the calibrated peak of u and v (of ``deployed(net)``, the float network
    with these 8-bit weights) within 2**22 and vth within 17 bits;
    S = 2**(e+1)·input_scale/Δ; vth = round(vth·S); bias = round(64·S·b) as mant·2**exp;
    du = round(4096·du) - 1, dv = round(4096·dv). The result is returned even when it does not
    fit Loihi 2: ``check_fit`` says what does not. ``calibration``: ``calibrate(deployed(net),
    calibration_x)`` when the caller has it already (it is computed once per deployment).
    """
    if len(net.recurrent):
        raise SpikepropError("recurrent layers cannot be quantized for Loihi yet (their W_rec would be dropped)")
    if not graded_input:
        input_scale = 1.0
    cal = calibration if calibration is not None else calibrate(deployed(net), calibration_x)
    layers = []
    scale_in = input_scale
    for layer in range(net.n_layers):
        p = net.params[layer]
        w = net.effective_weight(net.weights[layer])
        syn = net.synapses[layer]
        b = neuron_bias(syn, net.biases[layer].detach().cpu().double().numpy())
        layers.append(_fixed_layer(w, b, scale_in, cal.peak[layer], p.vth, p.du, p.dv, syn))
        scale_in = 1.0  # spikes between layers are 0/1: no scale travels with them
    # Read-out: Dense into a memoryless-current (du = 1), perfect-integrator (dv = 0) LIF.
    w_out = net.effective_weight(net.readout.weight)
    b_out = net.readout.bias.detach().cpu().double().numpy()
    readout = _fixed_layer(w_out, b_out, 1.0, cal.readout_peak, None, 1.0, 0.0, Dense((w_out.shape[1],), w_out.shape[0]))
    # currents above 1 (ff's label features with label_scale > C) need more payload bits
    peak_in = max(1.0, float(time_constant_view(calibration_x).abs().max())) if calibration_x.numel() else 1.0
    bits = max(1, math.ceil(math.log2(round(input_scale * peak_in) + 1))) if graded_input else 0
    return FixedNetwork(tuple(layers), readout, int(calibration_x.shape[0]), encoding, graded_input,
                        float(input_scale), bits, source)


# --------------------------------------------------------------------------------------------
# What Loihi 2 can hold


def conv_connections(syn: Conv2d) -> int:
    """Connections of a convolution unrolled to a matrix: per output channel and input channel, the
    (output position, kernel tap) pairs that land inside the input (the padding holds no synapse)."""
    (_, h, w), (kh, kw), (sh, sw), (ph, pw) = syn.in_shape, syn.kernel, syn.stride, syn.padding
    _, oh, ow = syn.out_shape

    def valid(n_out: int, k: int, stride: int, pad: int, size: int) -> int:
        return sum(0 <= o * stride + j - pad < size for o in range(n_out) for j in range(k))

    return syn.out_channels * syn.in_shape[0] * valid(oh, kh, sh, ph, h) * valid(ow, kw, sw, pw, w)


def synapse_memory(layer: FixedLayer) -> int:
    """Synapses a layer's Lava process stores (``lava_process``), the model ``resources`` uses.

    Dense: one per weight, n_in·n_out (Lava's Dense holds the full matrix). Conv: the kernel,
    C_out·C_in·kH·kW, shared by every position (Lava's Conv process holds one ``weight`` Var of
    that shape, lava/proc/conv/process.py), counted once per neuro core the feature map occupies
    (a core that computes part of the map needs the kernel; how Intel's closed Loihi-2 compiler
    packs a convolution is not public, so this assumes a copy per core). Sparse (a convolution
    with a non-zero weight_exp): one per connection of the unrolled kernel (``conv_connections``;
    Lava's Sparse holds a CSR matrix of them).
    """
    process = lava_process(layer)
    if process == "Dense":
        return layer.n_out * layer.n_in
    if process == "Sparse":
        return conv_connections(layer.synapse)
    return math.prod(layer.synapse.weight_shape) * math.ceil(layer.n_out / NEURONS_PER_CORE)


def resources(fnet: FixedNetwork) -> dict:
    """Neurons, synapses and neuro cores per layer and in total (the input is sent by the host).

    A layer of n neurons storing m synapses (``synapse_memory``: weight sharing makes a Conv's m
    its kernel) needs max(ceil(n / NEURONS_PER_CORE), ceil(m / SYNAPSES_PER_CORE)) cores; layers
    do not share cores. Each row names the layer's Lava process.
    """
    rows = []
    for name, layer in named_layers(fnet):
        syn = synapse_memory(layer)
        cores = max(math.ceil(layer.n_out / NEURONS_PER_CORE), math.ceil(syn / SYNAPSES_PER_CORE))
        rows.append({"layer": name, "process": lava_process(layer), "neurons": layer.n_out, "synapses": syn,
                     "cores": cores})
    total = {k: sum(r[k] for r in rows) for k in ("neurons", "synapses", "cores")}
    total["chips"] = math.ceil(total["cores"] / CORES_PER_CHIP)
    return {"layers": rows, **total}


def named_layers(fnet: FixedNetwork | FloatNetwork):
    """(name, layer) of every layer, the read-out last: the names the checks' messages use."""
    for i, layer in enumerate(fnet.layers):
        yield f"layer {i + 1}", layer
    yield "read-out", fnet.readout


def layer_problems(name: str, layer: FixedLayer) -> list[str]:
    """``check_params`` for one layer (its parameters' bit widths and types)."""
    problems: list[str] = []
    w = layer.weights
    if layer.synapse is None or tuple(np.shape(w)) != tuple(layer.synapse.weight_shape):
        want = "a synapse record" if layer.synapse is None else f"shape {tuple(layer.synapse.weight_shape)}"
        return [f"{name}: weights of shape {tuple(np.shape(w))} do not match {want}"]
    if getattr(layer.synapse, "recurrent", False):
        return [f"{name}: recurrent layers cannot run on Loihi yet (their W_rec would be dropped)"]
    if not np.issubdtype(np.asarray(w).dtype, np.integer):
        problems.append(f"{name}: weights must be integers; got {np.asarray(w).dtype}")
    elif w.size and (w.min() < WEIGHT_MIN or w.max() > WEIGHT_MAX or np.any(w % 2)):
        problems.append(f"{name}: weights must be even integers in [{WEIGHT_MIN}, {WEIGHT_MAX}] "
                        f"(8-bit mantissa); got [{w.min()}, {w.max()}]")
    if not WEIGHT_EXP_MIN <= layer.weight_exp <= WEIGHT_EXP_MAX:
        problems.append(f"{name}: weight_exp {layer.weight_exp} is outside [{WEIGHT_EXP_MIN}, {WEIGHT_EXP_MAX}]")
    for key in ("du", "dv"):
        d = getattr(layer, key)
        if not 0 <= d <= DECAY_MAX:
            hint = " (du = 0, a current that never decays, is not representable; train with du >= 1/4096)" \
                if key == "du" else ""
            problems.append(f"{name}: {key} = {d} is outside the 12-bit range [0, {DECAY_MAX}]{hint}")
    if not 0 <= layer.vth <= VTH_MAX:
        problems.append(f"{name}: vth = {layer.vth} is outside the 17-bit range [0, {VTH_MAX}]")
    bm, be = layer.bias_mant, layer.bias_exp
    for field, arr in (("bias_mant", bm), ("bias_exp", be)):
        if not np.issubdtype(np.asarray(arr).dtype, np.integer):
            problems.append(f"{name}: {field} must be integers; got {np.asarray(arr).dtype}")
        elif arr.shape != (layer.n_out,):
            problems.append(f"{name}: {field} has shape {arr.shape}, not ({layer.n_out},)")
    if problems:
        return problems
    if bm.size and (bm.min() < BIAS_MANT_MIN or bm.max() > BIAS_MANT_MAX):
        problems.append(f"{name}: bias_mant outside the 13-bit range [{BIAS_MANT_MIN}, {BIAS_MANT_MAX}]")
    if be.size and (be.min() < 0 or be.max() > BIAS_EXP_MAX):
        worst = int(np.argmax(be))
        problems.append(f"{name}: neuron {worst}'s bias needs bias_exp = {int(be.max())} > {BIAS_EXP_MAX} "
                        f"(the bias is {int(be.max()) - BIAS_EXP_MAX} bits too large for the layer's scale)")
    return problems


def chain_problems(fnet: FixedNetwork | FloatNetwork) -> list[str]:
    """Each layer must take the previous layer's neurons as its inputs: a convolution their feature
    map's shape, a Dense their number (it flattens a map in C-H-W order); the read-out is a Dense."""
    chain = [*fnet.layers, fnet.readout]
    problems = [f"{name} has {a.n_out} neurons but the next layer takes {b.n_in} inputs"
                for (name, a), b in zip(named_layers(fnet), chain[1:]) if a.n_out != b.n_in]
    problems += [f"{name} gives a feature map of shape {a.out_shape} but the next layer (a convolution) takes "
                 f"{tuple(b.synapse.in_shape)}" for (name, a), b in zip(named_layers(fnet), chain[1:])
                 if a.n_out == b.n_in and b.kind == "conv2d" and a.out_shape != tuple(b.synapse.in_shape)]
    if fnet.readout.kind != "dense":
        problems.append(f"the read-out must be a Dense; got a {fnet.readout.kind}")
    return problems


def check_params(fnet: FixedNetwork) -> list[str]:
    """The parameters of ``fnet`` that Lava's fixed_pt models would round, clip or wrap (so that the
    emulator, which computes exactly what it is given, would disagree with Lava): one line each.

    Every integer must be within its bit width, weights even (MIXED sign mode clears the LSB), the
    chain of shapes consistent, T >= 1 and the input payload within Loihi 2's message bits.
    """
    problems = [p for name, layer in named_layers(fnet) for p in layer_problems(name, layer)]
    problems += chain_problems(fnet)
    if fnet.steps < 1:
        problems.append(f"steps = {fnet.steps}: a sample needs at least one time step")
    if fnet.graded_input and not 1 <= fnet.input_bits <= MESSAGE_BITS_MAX:
        problems.append(f"input: {fnet.input_bits}-bit graded payloads; Loihi 2 carries 1 to {MESSAGE_BITS_MAX} bits")
    if problems:
        return problems
    for i, (name, layer) in enumerate(named_layers(fnet)):
        if lava_process(layer) == "Conv" and layer.weights.size:
            # Lava's fixed_pt Conv sums in float64 and casts to int32 before its 24-bit wrap: past
            # 2**31 that cast is undefined. Inputs: the graded payload (first layer) or 0/1 spikes.
            top = (2**fnet.input_bits - 1) if i == 0 and fnet.graded_input else 1
            bound = int(np.abs(layer.weights.astype(np.int64)).reshape(layer.weights.shape[0], -1).sum(1).max()) * top
            if bound >= 2 ** (INT32_BITS - 1):
                problems.append(f"{name}: its convolution can sum to {bound} >= 2**31, past Lava Conv's int32 cast")
    return problems


def check_fit(fnet: FixedNetwork, calibration: Calibration | None = None) -> list[str]:
    """Everything about ``fnet`` that Loihi 2 cannot hold, one readable line each ([] if it fits).

    ``check_params`` (the bit ranges of every parameter), the per-core neuron and synapse limits
    and, when a calibration is given, that the calibrated activity stays inside the 24-bit u and v.
    """
    problems = check_params(fnet)
    for name, layer in named_layers(fnet):
        if layer.synapse is not None and layer.synapse.fan_in > SYNAPSES_PER_CORE:
            problems.append(f"{name}: a neuron with {layer.synapse.fan_in} inputs needs more synapses than a core "
                            f"holds ({SYNAPSES_PER_CORE})")
    res = resources(fnet)
    if res["chips"] > 1:
        problems.append(f"the network needs {res['cores']} cores, more than one Loihi 2 chip ({CORES_PER_CHIP}); "
                        "it needs a multi-chip system")
    if calibration is not None:
        for i, (layer, peak) in enumerate(zip(fnet.layers, calibration.peak)):
            top = peak * 2**ACT_SHIFT * layer.scale
            if top >= UV_LIMIT:
                problems.append(f"layer {i + 1}: calibrated |u|, |v| reach {top:.3g} > 2**23 even at weight_exp "
                                f"{layer.weight_exp}: the 24-bit state would wrap or saturate")
    return problems


def margins(fnet: FixedNetwork, calibration: Calibration) -> list[dict]:
    """Per hidden layer: the calibrated peak of |u|, |v| in Lava units and the headroom it leaves below
    the 24-bit rail, in bits (``quantize`` aims for HEADROOM_BITS; a layer whose weight exponent is
    clamped at WEIGHT_EXP_MIN keeps less)."""
    out = []
    for i, (layer, peak) in enumerate(zip(fnet.layers, calibration.peak)):
        top = peak * 2**ACT_SHIFT * layer.scale
        bits = math.log2(UV_LIMIT / top) if top > 0 else None  # None: the layer is silent on the calibration set
        out.append({"layer": i + 1, "peak": top, "headroom_bits": bits, "weight_exp": layer.weight_exp,
                    "kept": bits is None or bits >= HEADROOM_BITS})
    return out


def margin_warnings(fnet: FixedNetwork, calibration: Calibration) -> list[str]:
    """One line per layer whose headroom is below the HEADROOM_BITS that export aims for."""
    return [f"layer {m['layer']}: calibrated |u|, |v| peak {m['peak']:.3g} leaves {m['headroom_bits']:.2f} bits below "
            f"the 24-bit rail (export aims for {HEADROOM_BITS}; weight_exp is already at its minimum "
            f"{m['weight_exp']}): inputs {2 ** m['headroom_bits']:.2f}x brighter than the calibration set saturate v"
            for m in margins(fnet, calibration) if not m["kept"]]


# --------------------------------------------------------------------------------------------
# Files


def save(net: FixedNetwork | FloatNetwork, path: str | Path) -> None:
    """Write ``net`` as .npz (format in the module docstring), atomically."""
    import io

    from spikeprop.files import atomic_write_bytes

    arrays = {"header": np.array(json.dumps(net.header(), sort_keys=True))}
    for name, layer in [*((f"layer{i}", la) for i, la in enumerate(net.layers)), ("readout", net.readout)]:
        if isinstance(layer, FixedLayer):
            arrays[f"{name}.weights"] = layer.weights.astype(np.int32)
            arrays[f"{name}.bias_mant"] = layer.bias_mant.astype(np.int32)
            arrays[f"{name}.bias_exp"] = layer.bias_exp.astype(np.int32)
        else:
            arrays[f"{name}.weights"] = np.asarray(layer.weights, dtype=np.float64)
            arrays[f"{name}.bias"] = np.asarray(layer.bias, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _header_int(d: dict, key: str, where: str, low: int | None = None) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
        raise SpikepropError(f"{where}: {key} must be an integer{f' >= {low}' if low is not None else ''}; got {v!r}")
    return v


def _header_float(d: dict, key: str, where: str, positive: bool = True) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise SpikepropError(f"{where}: {key} must be a finite number{' > 0' if positive else ''}; got {v!r}")
    return float(v)


def _array(z, key: str, at: str, shape: tuple, integer: bool) -> np.ndarray:
    if key not in z.files:
        raise SpikepropError(f"{at}: the array {key} is missing")
    a = z[key]
    if integer and not np.issubdtype(a.dtype, np.integer):
        raise SpikepropError(f"{at}: {key.split('.')[-1]} must hold integers; got {a.dtype}")
    if not integer and not (np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))):
        raise SpikepropError(f"{at}: {key.split('.')[-1]} must hold finite floats")
    if a.shape != shape:
        raise SpikepropError(f"{at}: {key.split('.')[-1]} has shape {a.shape}, but the header says {shape}")
    return a.astype(np.int32) if integer and np.abs(a).max(initial=0) < 2**31 else a


MAX_SHAPE = 2**24  # a header dimension above this is not a network (and would make huge arrays)


def _int_list(d: dict, key: str, at: str, length: int | None, low: int) -> tuple[int, ...]:
    v = d.get(key)
    if (not isinstance(v, list) or not v or (length is not None and len(v) != length)
            or any(isinstance(x, bool) or not isinstance(x, int) or not low <= x <= MAX_SHAPE for x in v)):
        size = f"{length} " if length is not None else ""
        raise SpikepropError(f"{at}: synapse {key} must be a list of {size}integers in [{low}, {MAX_SHAPE}]; got {v!r}")
    return tuple(v)


def _synapse_from(d: dict, at: str, version: int) -> Synapse:
    """The synapse record of a layer's header entry (version 1: a Dense of n_in -> n_out), validated."""
    n_in, n_out = _header_int(d, "n_in", at, 1), _header_int(d, "n_out", at, 1)
    if version == 1:
        return Dense((n_in,), n_out)
    syn = d.get("synapse")
    if not isinstance(syn, dict):
        raise SpikepropError(f"{at}: synapse must be an object (kind dense or conv2d); got {syn!r}")
    at = f"{at}: synapse"
    kind = syn.get("kind")
    if kind == "dense":
        if syn.get("recurrent", False) is not False:
            raise SpikepropError(f"{at}: recurrent layers cannot run on Loihi yet; got recurrent = {syn.get('recurrent')!r}")
        out = Dense(_int_list(syn, "in_shape", at, None, 1), _header_int(syn, "n_out", at, 1))
    elif kind == "conv2d":
        out = Conv2d(_int_list(syn, "in_shape", at, 3, 1), _header_int(syn, "out_channels", at, 1),
                     _int_list(syn, "kernel", at, 2, 1), _int_list(syn, "stride", at, 2, 1),
                     _int_list(syn, "padding", at, 2, 0))  # Conv2d refuses a kernel larger than its input
    else:
        raise SpikepropError(f"{at}: kind must be dense or conv2d; got {kind!r}")
    if (out.n_in, out.n_out) != (n_in, n_out):
        raise SpikepropError(f"{at}: a {kind} of {out.n_in} inputs and {out.n_out} neurons, but the layer says "
                             f"n_in = {n_in}, n_out = {n_out}")
    return out


def _fixed_layer_from(z, name: str, d: Any, where: str, version: int) -> FixedLayer:
    at = f"{where}: {name}"
    if not isinstance(d, dict):
        raise SpikepropError(f"{at} must be an object; got {d!r}")
    syn = _synapse_from(d, at, version)
    n_out = syn.n_out
    return FixedLayer(_array(z, f"{name}.weights", at, tuple(syn.weight_shape), True), _header_int(d, "weight_exp", at),
                      _header_int(d, "du", at), _header_int(d, "dv", at), _header_int(d, "vth", at),
                      _array(z, f"{name}.bias_mant", at, (n_out,), True), _array(z, f"{name}.bias_exp", at, (n_out,), True),
                      _header_float(d, "scale", at), syn)


def _float_layer_from(z, name: str, d: Any, where: str, version: int) -> FloatLayer:
    at = f"{where}: {name}"
    if not isinstance(d, dict):
        raise SpikepropError(f"{at} must be an object; got {d!r}")
    syn = _synapse_from(d, at, version)
    du, dv = _header_float(d, "du", at, False), _header_float(d, "dv", at, False)
    if not (0.0 <= du <= 1.0 and 0.0 <= dv <= 1.0):
        raise SpikepropError(f"{at}: du and dv must be fractions in [0, 1]; got {du}, {dv}")
    return FloatLayer(_array(z, f"{name}.weights", at, tuple(syn.weight_shape), False), du, dv,
                      _header_float(d, "vth", at), _array(z, f"{name}.bias", at, (syn.n_out,), False), syn)


def load(path: str | Path) -> FixedNetwork | FloatNetwork:
    """Read a file written by ``save``; SpikepropError naming the field if it is not one, or if any
    value is one that Lava would round, clip or refuse (``check_params``)."""
    import zipfile

    from spikeprop.encoders import ENCODINGS

    path = Path(path)
    if not path.is_file():
        raise SpikepropError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise SpikepropError(f"{path} is not a {FORMAT} file (no header)")
            header = json.loads(str(z["header"]))
            if not isinstance(header, dict):
                raise SpikepropError(f"{path}: the header must be a JSON object; got {type(header).__name__}")
            version = header.get("version")
            if header.get("format") != FORMAT or isinstance(version, bool) or version not in READABLE_VERSIONS:
                raise SpikepropError(f"{path} is not a {FORMAT} file of a version this spikeprop reads "
                                     f"({', '.join(f'v{v}' for v in READABLE_VERSIONS)}); got version {version!r}")
            where = str(path)
            precision = header.get("precision", "fixed_pt")
            if precision not in PRECISIONS:
                raise SpikepropError(f"{where}: precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
            steps = _header_int(header, "steps", where, 1)
            graded = header.get("graded_input")
            if not isinstance(graded, bool):
                raise SpikepropError(f"{where}: graded_input must be true or false; got {graded!r}")
            input_bits = _header_int(header, "input_bits", where, 0)
            if not isinstance(header.get("layers"), list) or not header["layers"]:
                raise SpikepropError(f"{where}: layers must be a non-empty list")
            read = _fixed_layer_from if precision == "fixed_pt" else _float_layer_from
            layers = tuple(read(z, f"layer{i}", d, where, version) for i, d in enumerate(header["layers"]))
            readout = read(z, "readout", header.get("readout"), where, version)
            if precision == "floating_pt":
                net = FloatNetwork(layers, readout, steps, graded, input_bits)
                problems = chain_problems(net)
                if problems:
                    raise SpikepropError(f"{path}: " + "; ".join(problems))
                return net
            encoding = header.get("encoding")
            if encoding not in ENCODINGS:
                raise SpikepropError(f"{where}: encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
            input_scale = _header_float(header, "input_scale", where)
    except SpikepropError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, TypeError) as e:
        raise SpikepropError(f"{path} is not a readable {FORMAT} file ({type(e).__name__}: {e})") from None
    source = header.get("source")
    fnet = FixedNetwork(layers, readout, steps, encoding, graded, input_scale, input_bits,
                        source if isinstance(source, dict) and source else None)
    problems = check_params(fnet)
    if problems:
        raise SpikepropError(f"{path} holds values Lava would not run as written: " + "; ".join(problems))
    return fnet
