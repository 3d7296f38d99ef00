"""Loihi-2 fixed point: quantization, a capacity check, a file format and a bit-exact emulator.

A ``FixedNetwork`` is plain data: per hidden layer a Lava ``Dense`` (even integer weights
``2m`` in [-256, 254], one ``weight_exp``) feeding a Lava ``LIF`` (``du``, ``dv``, ``vth`` as
Python ints, per-neuron ``bias_mant`` / ``bias_exp``), then the read-out: a Dense into a
non-spiking integrator LIF (``du = 4095``: memoryless current, ``dv = 0``, ``vth = VTH_MAX``,
never reached), whose voltage after T steps is ``64·S_out·T·logits``. Arithmetic of Lava's
``PyLifModelBitAcc`` and ``PyDenseModelBitAcc`` (``research/lava.md`` §1.3, §2.2), per step::

    a = (W · s) << e            (e < 0: arithmetic right shift, i.e. floor of the sum)
    u = trunc0(u · (4095 - du) / 4096) + (a << 6)          then Lava's one-shot 24-bit wrap
    v = clip(trunc0(v · (4096 - dv) / 4096) + u + (bias_mant << bias_exp), ±(2**23 - 1))
    s = v > (vth << 6);  v = 0 where s                      (u is not reset)

``emulate`` runs that batched in torch (integers held exactly in float64, returned as int64),
in the per-sample form of ``spikeprop.network``: layer l's local step t is Lava's global step
``t + l + 2`` of the sample's window, which is what Lava computes with per-layer
``LIFReset(reset_interval=T, reset_offset=(2 + l) mod T)`` behind a RingBuffer
(``hardware.lava``). The Dense's one-step delay is therefore in the clock, not in the arithmetic.

File format (``save`` / ``load``; ``spikeprop export RUN_DIR --to lava --out FILE``): one
``.npz`` (numpy's zip of ``.npy`` arrays) holding

    header                  0-d unicode array: JSON, below
    layer{i}.weights        int32 [n_out, n_in], even, in [-256, 254]   (i = 0 .. L-1)
    layer{i}.bias_mant      int32 [n_out], in [-4096, 4095]
    layer{i}.bias_exp       int32 [n_out], in [0, 7]
    readout.weights / readout.bias_mant / readout.bias_exp          (the same for the read-out)

    header = {"format": "spikeprop-loihi", "version": 1, "steps": T, "encoding": "direct"|"rate"|"latency",
              "graded_input": bool, "input_scale": float, "input_bits": int,
              "layers": [{"n_in", "n_out", "weight_exp", "du", "dv", "vth", "scale"}, ...],
              "readout": {... the same ...}, "source": {...}}

Input: for graded input (direct encoding) Lava's source sends the integer payload
``round(x · input_scale)`` at every step (``Dense(num_message_bits=input_bits)``); for binary
input (rate, latency) it sends 0/1 spikes. ``scale`` is the layer's integer scale S: Lava
a-units per float unit of input current; u and v are in units of 64·S.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from spikeprop import SpikepropError, seeds
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFState, LIFStep
from spikeprop.quantize import DECAY_UNIT, fake_quant_weight, weight_mantissa

FORMAT = "spikeprop-loihi"
FORMAT_VERSION = 1

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
ACT_MAX = 2**17  # |a| below this keeps a << 6 inside u's 24 bits (no wrap), lava.md §1.3
MESSAGE_BITS_MAX = 24  # graded spikes carry up to 24-bit payloads on Loihi 2

FLOAT_UNREACHABLE = 1e300  # the floating_pt read-out's threshold: never crossed

# Headroom: the calibrated peak of |u| and |v| may use half of the 24-bit range, so samples
# brighter than the calibration set have a factor 2 before u wraps or v saturates (§4.2).
HEADROOM_BITS = 1

# --- Loihi 2 chip resources: Intel, "Taking Neuromorphic Computing to the Next Level with
# Loihi 2" (technology brief, 2021): 128 neuro cores, up to 1 M neurons and 120 M synapses per
# chip, at most 8192 neurons per core. The brief gives no per-core synapse count; we use the
# chip's 120 M synapses over its 128 cores as the average a core can hold (the true figure
# depends on weight precision and sparsity, decided by Intel's hardware compiler).
CORES_PER_CHIP = 128
NEURONS_PER_CORE = 8192
SYNAPSES_PER_CORE = 120_000_000 // CORES_PER_CHIP


@dataclass(frozen=True)
class Layer:
    """One Dense + LIF pair, Lava's parameters as given to its processes.

    Integers for fixed_pt (``FixedNetwork``); ``float_layers`` fills the same record with
    floats for floating_pt (weights in float units, du/dv fractions, bias in v units).
    weights: [n_out, n_in]; bias_mant, bias_exp: [n_out]; scale: S (1.0 for float layers).
    """

    weights: np.ndarray
    weight_exp: int
    du: int | float
    dv: int | float
    vth: int | float
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    scale: float = 1.0

    @property
    def n_in(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weights.shape[0])

    def scalars(self) -> dict:
        return {"n_in": self.n_in, "n_out": self.n_out, "weight_exp": self.weight_exp, "du": self.du,
                "dv": self.dv, "vth": self.vth, "scale": self.scale}


@dataclass(frozen=True)
class FixedNetwork:
    """A network in Loihi-2 integers (module docstring). ``layers`` are the spiking layers."""

    layers: tuple[Layer, ...]
    readout: Layer
    steps: int
    encoding: str
    graded_input: bool
    input_scale: float
    input_bits: int
    source: dict | None = None

    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "steps": self.steps, "encoding": self.encoding,
                "graded_input": self.graded_input, "input_scale": self.input_scale, "input_bits": self.input_bits,
                "layers": [layer.scalars() for layer in self.layers], "readout": self.readout.scalars(),
                "source": self.source or {}}

    def payload(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded input x [T, B, n_in] (currents in [0, 1] or 0/1 spikes) -> int64 payload.

        An input repeated over time (direct encoding: a stride-0 time axis) stays a view."""
        if x.dim() == 3 and x.shape[0] > 1 and x.stride(0) == 0:
            return self.payload(x[:1]).expand(x.shape)
        if self.graded_input:
            return torch.round(x.double() * self.input_scale).to(torch.int64)
        return (x != 0).to(torch.int64)


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
# Quantization (research/lava.md §4.2)


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
    w_out = _effective(net, net.readout.weight)
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


def _effective(net: Network, w: torch.Tensor) -> torch.Tensor:
    return net.weight_transform(w) if net.weight_transform is not None else w


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


def _fixed_layer(w: torch.Tensor, bias: np.ndarray, input_scale: float, peak: float, vth: float | None,
                 du: float, dv: float) -> Layer:
    m, step = weight_mantissa(w.detach().cpu().double())
    step = float(step)
    e = _choose_exp(step, input_scale, peak, vth)
    scale = 2.0 ** (e + 1) * input_scale / step
    bias_mant, bias_exp = _bias(bias, 2**ACT_SHIFT * scale)
    vth_int = VTH_MAX if vth is None else int(round(vth * scale))
    du_int = int(round(du * DECAY_UNIT)) - DU_OFFSET
    dv_int = int(round(dv * DECAY_UNIT))
    weights = (2 * m).to(torch.int32).numpy()
    return Layer(weights, int(e), du_int, dv_int, vth_int, bias_mant, bias_exp, scale)


def quantize(net: Network, calibration_x: torch.Tensor, *, encoding: str, graded_input: bool,
             input_scale: float = 1.0, source: dict | None = None) -> FixedNetwork:
    """Float network -> Loihi-2 integers (lava.md §4.2), one scale per layer.

    calibration_x: encoded inputs [T, B, n_in] the scales are chosen on (a few hundred training
    samples). input_scale: for graded input, the payload per unit of x (use the dataset's
    ``scale`` so that the stored integer pixels are sent exactly); binary input uses 1.

    Per layer: m = round(W/Δ) with Δ = max|W|/127, weights 2m; the exponent e is the largest
    in [-8, 7] that keeps the calibrated peak of u and v (of ``deployed(net)``, the float network
    with these 8-bit weights) within 2**22 and vth within 17 bits;
    S = 2**(e+1)·input_scale/Δ; vth = round(vth·S); bias = round(64·S·b) as mant·2**exp;
    du = round(4096·du) - 1, dv = round(4096·dv). The result is returned even when it does not
    fit Loihi 2: ``check_fit`` says what does not.
    """
    if not graded_input:
        input_scale = 1.0
    cal = calibrate(deployed(net), calibration_x)
    layers = []
    scale_in = input_scale
    for layer in range(net.n_layers):
        p = net.params[layer]
        w = _effective(net, net.weights[layer])
        b = net.biases[layer].detach().cpu().double().numpy()
        layers.append(_fixed_layer(w, b, scale_in, cal.peak[layer], p.vth, p.du, p.dv))
        scale_in = 1.0  # spikes between layers are 0/1: no scale travels with them
    # Read-out: Dense into a memoryless-current (du = 1), perfect-integrator (dv = 0) LIF.
    w_out = _effective(net, net.readout.weight)
    b_out = net.readout.bias.detach().cpu().double().numpy()
    readout = _fixed_layer(w_out, b_out, 1.0, cal.readout_peak, None, 1.0, 0.0)
    # currents above 1 (ff's label features with label_scale > C) need more payload bits
    peak_in = max(1.0, float(time_constant_view(calibration_x).abs().max())) if calibration_x.numel() else 1.0
    bits = max(1, math.ceil(math.log2(round(input_scale * peak_in) + 1))) if graded_input else 0
    return FixedNetwork(tuple(layers), readout, int(calibration_x.shape[0]), encoding, graded_input,
                        float(input_scale), bits, source)


# --------------------------------------------------------------------------------------------
# What Loihi 2 can hold


def resources(fnet: FixedNetwork) -> dict:
    """Neurons, synapses and neuro cores per layer and in total (the input is sent by the host).

    A layer of n neurons with fan-in k needs max(ceil(n / NEURONS_PER_CORE), ceil(n·k / SYNAPSES_PER_CORE))
    cores; layers do not share cores.
    """
    rows = []
    for name, layer in _named_layers(fnet):
        syn = layer.n_out * layer.n_in
        cores = max(math.ceil(layer.n_out / NEURONS_PER_CORE), math.ceil(syn / SYNAPSES_PER_CORE))
        rows.append({"layer": name, "neurons": layer.n_out, "synapses": syn, "cores": cores})
    total = {k: sum(r[k] for r in rows) for k in ("neurons", "synapses", "cores")}
    total["chips"] = math.ceil(total["cores"] / CORES_PER_CHIP)
    return {"layers": rows, **total}


def _named_layers(fnet: FixedNetwork):
    for i, layer in enumerate(fnet.layers):
        yield f"layer {i + 1}", layer
    yield "read-out", fnet.readout


def _layer_problems(name: str, layer: Layer) -> list[str]:
    """``check_params`` for one layer (its parameters' bit widths and types)."""
    problems: list[str] = []
    w = layer.weights
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


def _chain_problems(fnet: FixedNetwork) -> list[str]:
    chain = [*fnet.layers, fnet.readout]
    return [f"{name} has {a.n_out} neurons but the next layer takes {b.n_in} inputs"
            for (name, a), b in zip(_named_layers(fnet), chain[1:]) if a.n_out != b.n_in]


def check_params(fnet: FixedNetwork) -> list[str]:
    """The parameters of ``fnet`` that Lava's fixed_pt models would round, clip or wrap (so that the
    emulator, which computes exactly what it is given, would disagree with Lava): one line each.

    Every integer must be within its bit width, weights even (MIXED sign mode clears the LSB), the
    chain of shapes consistent, T >= 1 and the input payload within Loihi 2's message bits.
    """
    problems = [p for name, layer in _named_layers(fnet) for p in _layer_problems(name, layer)]
    problems += _chain_problems(fnet)
    if fnet.steps < 1:
        problems.append(f"steps = {fnet.steps}: a sample needs at least one time step")
    if fnet.graded_input and not 1 <= fnet.input_bits <= MESSAGE_BITS_MAX:
        problems.append(f"input: {fnet.input_bits}-bit graded payloads; Loihi 2 carries 1 to {MESSAGE_BITS_MAX} bits")
    return problems


def check_fit(fnet: FixedNetwork, calibration: Calibration | None = None) -> list[str]:
    """Everything about ``fnet`` that Loihi 2 cannot hold, one readable line each ([] if it fits).

    ``check_params`` (the bit ranges of every parameter), the per-core neuron and synapse limits
    and, when a calibration is given, that the calibrated activity stays inside the 24-bit u and v.
    """
    problems = check_params(fnet)
    for name, layer in _named_layers(fnet):
        if layer.n_in > SYNAPSES_PER_CORE:
            problems.append(f"{name}: a neuron with {layer.n_in} inputs needs more synapses than a core holds "
                            f"({SYNAPSES_PER_CORE})")
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


def save(fnet: FixedNetwork, path: str | Path) -> None:
    """Write ``fnet`` as .npz (format in the module docstring), atomically."""
    import io

    from spikeprop.files import atomic_write_bytes

    arrays = {"header": np.array(json.dumps(fnet.header(), sort_keys=True))}
    for name, layer in [*((f"layer{i}", la) for i, la in enumerate(fnet.layers)), ("readout", fnet.readout)]:
        arrays[f"{name}.weights"] = layer.weights.astype(np.int32)
        arrays[f"{name}.bias_mant"] = layer.bias_mant.astype(np.int32)
        arrays[f"{name}.bias_exp"] = layer.bias_exp.astype(np.int32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _header_int(d: dict, key: str, where: str, low: int | None = None) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
        raise SpikepropError(f"{where}: {key} must be an integer{f' >= {low}' if low is not None else ''}; got {v!r}")
    return v


def _header_float(d: dict, key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise SpikepropError(f"{where}: {key} must be a finite number > 0; got {v!r}")
    return float(v)


def load(path: str | Path) -> FixedNetwork:
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
            if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
                raise SpikepropError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} file")
            where = str(path)
            steps = _header_int(header, "steps", where, 1)
            encoding = header.get("encoding")
            if encoding not in ENCODINGS:
                raise SpikepropError(f"{where}: encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
            graded = header.get("graded_input")
            if not isinstance(graded, bool):
                raise SpikepropError(f"{where}: graded_input must be true or false; got {graded!r}")
            input_scale = _header_float(header, "input_scale", where)
            input_bits = _header_int(header, "input_bits", where, 0)
            if not isinstance(header.get("layers"), list) or not header["layers"]:
                raise SpikepropError(f"{where}: layers must be a non-empty list")

            def layer(name: str, d: Any) -> Layer:
                at = f"{where}: {name}"
                if not isinstance(d, dict):
                    raise SpikepropError(f"{at} must be an object; got {d!r}")
                n_in, n_out = _header_int(d, "n_in", at, 1), _header_int(d, "n_out", at, 1)
                arrays = {}
                for field, shape in (("weights", (n_out, n_in)), ("bias_mant", (n_out,)), ("bias_exp", (n_out,))):
                    key = f"{name}.{field}"
                    if key not in z.files:
                        raise SpikepropError(f"{at}: the array {key} is missing")
                    a = z[key]
                    if not np.issubdtype(a.dtype, np.integer):
                        raise SpikepropError(f"{at}: {field} must hold integers; got {a.dtype}")
                    if a.shape != shape:
                        raise SpikepropError(f"{at}: {field} has shape {a.shape}, but the header says {shape}")
                    arrays[field] = a.astype(np.int32) if np.abs(a).max(initial=0) < 2**31 else a
                return Layer(arrays["weights"], _header_int(d, "weight_exp", at), _header_int(d, "du", at),
                             _header_int(d, "dv", at), _header_int(d, "vth", at), arrays["bias_mant"],
                             arrays["bias_exp"], _header_float(d, "scale", at))

            layers = tuple(layer(f"layer{i}", d) for i, d in enumerate(header["layers"]))
            readout = layer("readout", header.get("readout"))
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


# --------------------------------------------------------------------------------------------
# The bit-exact emulator


# The emulator computes in float64: every value is an integer, u and v stay below 2**31 and
# the decay products below 2**44 (24-bit state times 12-bit decay), far inside float64's exact
# integer range (2**53), so additions, multiplications by powers of two, trunc and floor give
# Lava's integers bit for bit, and faster than int64 (whose division is not vectorized).
EXACT = torch.float64


def _wrap32(x: torch.Tensor) -> torch.Tensor:
    """The value numpy's int32 arithmetic would hold (two's complement wrap)."""
    half = 2 ** (INT32_BITS - 1)
    return torch.remainder(x + half, 2 * half) - half


def _decay(x: torch.Tensor, keep: int) -> torch.Tensor | int:
    """trunc0(x · keep / 4096), Lava's sign(p)·(|p| >> 12): keep/4096 and the product are exact."""
    if keep == DECAY_UNIT:
        return x
    if keep == 0:
        return 0
    return torch.trunc(x * (keep / DECAY_UNIT))


def _outside(x: torch.Tensor, limit: int) -> bool:
    lo, hi = torch.aminmax(x)
    return bool(hi >= limit or lo <= -limit)


def fixed_lif_step(a: torch.Tensor, state: LIFState, layer: Layer, bias: torch.Tensor,
                   a_may_overflow: bool | None = None) -> LIFStep:
    """One step of Lava's bit-accurate LIF (module docstring) on integer-valued tensors [B, N].

    a: the Dense output (already shifted by weight_exp); layer: du, dv, vth; bias: the per-neuron
    ``bias_mant << bias_exp`` [N] (``bias_v(layer)``). Returns spikes (0./1.), v before the reset
    and the new state (u, v after the reset): the integer twin of ``spikeprop.neurons.lif_step``.
    Lava forms ``a << 6`` and the sums in int32 and wraps u once at 24 bits. While |a| < 2**25
    (``a_may_overflow`` False; None: look) and |u| < 2**23 none of that can happen, so the wrap
    arithmetic runs only when it could matter.
    """
    u_decayed = _decay(state.u, DECAY_UNIT - (layer.du + DU_OFFSET))
    a_shifted = a * 2**ACT_SHIFT
    u = a_shifted + u_decayed if torch.is_tensor(u_decayed) else a_shifted
    if a_may_overflow is None:
        a_may_overflow = a.numel() > 0 and _outside(a, 2 ** (INT32_BITS - 1 - ACT_SHIFT))
    exact = a_may_overflow or (u.numel() > 0 and _outside(u, UV_LIMIT))
    if exact:
        u = _wrap32(u_decayed + _wrap32(a_shifted))
        # Lava's one-shot wrap: the second test is on the wrapped value but adds to the unwrapped one.
        w = torch.where(u > UV_LIMIT, u - 2 * UV_LIMIT, u)
        u = torch.where(w <= -UV_LIMIT, u + 2 * UV_LIMIT, w)
    v = _decay(state.v, DECAY_UNIT - layer.dv) + u + bias
    if exact or (bias.numel() > 0 and _outside(bias, UV_LIMIT)):
        v = _wrap32(v)
    v_pre = v.clamp(-(UV_LIMIT - 1), UV_LIMIT - 1)
    # v_pre > Θ for integers is v_pre - Θ >= 1, so clamping v_pre - Θ to [0, 1] gives the spike
    # as an exact 0./1. float (cheaper than a bool mask and what the next Dense multiplies).
    s = (v_pre - (int(layer.vth) << VTH_SHIFT)).clamp_(0, 1)
    return LIFStep(s, v_pre, LIFState(u, v_pre * (1 - s)))


def bias_v(layer: Layer, device=None) -> torch.Tensor:
    """The bias Lava adds to v each step: bias_mant << bias_exp (>> for a negative exponent), [N]."""
    mant, exp = layer.bias_mant.astype(np.int64), layer.bias_exp.astype(np.int64)
    b = np.where(exp >= 0, mant << np.maximum(exp, 0), mant >> np.maximum(-exp, 0))
    return torch.as_tensor(b, dtype=EXACT, device=device)


class Gemm(NamedTuple):
    """One layer's Dense as the emulator multiplies it (``gemm_for``).

    int8: ``w`` is W / 2 transposed as int8 [n_in, n_out] (Loihi weights are even, in [-256, 254])
    for ``torch._int_mm`` with int32 accumulation, the input shifted by ``-offset`` into int8
    and ``correction`` = offset · row sums of W / 2 added back; otherwise ``w`` is W [n_out, n_in]
    in a float type exact for the sums. Either way the products are exact integers.
    """

    w: torch.Tensor
    int8: bool
    offset: int
    correction: torch.Tensor | None
    weight_exp: int
    may_wrap: bool  # some |W·s| << weight_exp can reach 2**31 (Lava's int32 channel wraps)
    may_overflow_u: bool  # some |a| can reach 2**25, where Lava's int32 ``a << 6`` wraps


def _cache(layer: Layer) -> dict:
    """What ``emulate`` derives from a Layer once and keeps on it (a Layer is immutable: its
    arrays are never changed in place)."""
    return layer.__dict__.setdefault("_emulator_cache", {})


def _weights_info(layer: Layer, device) -> dict:
    """Per-layer facts about the weights that every ``emulate`` call needs, once per Layer and device."""
    cache = _cache(layer)
    key = str(torch.device(device or "cpu"))
    if key not in cache:
        w = np.asarray(layer.weights, dtype=np.int64)
        info = {"abs_row_max": int(np.abs(w).sum(1).max()) if w.size else 0,
                "even": bool(w.size) and not (w & 1).any() and int(w.min()) >= -256 and int(w.max()) <= 254,
                "n_in": w.shape[1], "w": torch.as_tensor(w, device=device)}
        if info["even"]:
            half = w >> 1
            info["half_t"] = torch.as_tensor(np.ascontiguousarray(half.T.astype(np.int8)), device=device)
            info["half_rowsum"] = torch.as_tensor(half.sum(1), device=device)
        cache[key] = info
    return cache[key]


def gemm_for(layer: Layer, in_min: int, in_max: int, device=None) -> Gemm:
    """The exact multiplication of ``layer``'s Dense for inputs in [in_min, in_max]."""
    info = _weights_info(layer, device)
    bound = info["abs_row_max"] * max(abs(in_min), abs(in_max))  # the largest |W·s|
    a_bound = bound * 2 ** max(layer.weight_exp, 0)
    may_wrap, may_overflow_u = a_bound >= 2 ** (INT32_BITS - 1), a_bound >= 2 ** (INT32_BITS - 1 - ACT_SHIFT)
    offset = 0 if -128 <= in_min and in_max <= 127 else 128 if 0 <= in_min and in_max <= 255 else None
    cpu = torch.device(device or "cpu").type == "cpu"
    if info["even"] and offset is not None and info["n_in"] * 128 * 128 < 2**31 and cpu:
        correction = offset * info["half_rowsum"] if offset else None
        return Gemm(info["half_t"], True, offset, correction, layer.weight_exp, may_wrap, may_overflow_u)
    gemm = torch.float32 if bound < 2**24 else torch.float64
    return Gemm(info["w"].to(gemm), False, 0, None, layer.weight_exp, may_wrap, may_overflow_u)


def _half_product(s: torch.Tensor, g: Gemm) -> torch.Tensor:
    """(W / 2)·s [B, n_out] in int32 for an int8 ``g`` (s [B, n_in] integer-valued, B > 0)."""
    x = (s.to(torch.int16) - g.offset).to(torch.int8) if g.offset else s.to(torch.int8)
    acc = torch._int_mm(x, g.w)
    if g.correction is not None:
        acc += g.correction.to(torch.int32)
    return acc


def _product(s: torch.Tensor, g: Gemm) -> torch.Tensor:
    """W·s [B, n_out] exactly (float64 holding integers), s [B, n_in] integer-valued."""
    if not g.int8 or s.shape[0] == 0:
        w = g.w.t().to(torch.float64) if g.int8 else g.w
        return F.linear(s.to(w.dtype), w).to(EXACT) * (2 if g.int8 else 1)
    return 2 * _half_product(s, g).to(EXACT)


def _shift(p: torch.Tensor, g: Gemm) -> torch.Tensor:
    """Lava's fixed_pt Dense output from the product W·s: shifted by weight_exp (floor for e < 0),
    sent through an int32 channel (wrapping only where ``g.may_wrap``)."""
    e = g.weight_exp
    a = p * 2**e if e >= 0 else torch.floor(p * 2.0**e)
    return _wrap32(a) if g.may_wrap else a


def _dense(s: torch.Tensor, g: Gemm) -> torch.Tensor:
    """Lava's fixed_pt Dense on s [B, n_in]: (W·s) shifted by weight_exp, through an int32 channel."""
    return _shift(_product(s, g), g)


class EmuResult(NamedTuple):
    """What ``emulate`` returns (int64 unless noted).

    v_out: read-out voltages after T steps [B, C]; logits: v_out in float units (/ 64·S·T), float64.
    When ``record``: spike counts per hidden layer [B, n]; spikes (bool), u and v (after the
    reset, as Lava's Var probes see them) per layer as [T, B, n], the read-out's included
    (u and v None with ``record_uv=False``).
    """

    v_out: torch.Tensor
    logits: torch.Tensor
    counts: list[torch.Tensor] | None = None
    spikes: list[torch.Tensor] | None = None
    u: list[torch.Tensor] | None = None
    v: list[torch.Tensor] | None = None


def _voltage_after(c: int, k: int, keep_v: int, vth_v: int) -> bool:
    """Whether a neuron driven by the constant integer ``c`` from v = 0 is above ``vth_v`` after
    ``k`` steps without a spike in between: v_j = clip(trunc0(v_{j-1} keep_v / 4096) + c)."""
    v = 0
    for _ in range(k):
        q = abs(v) * keep_v >> DECAY_SHIFT
        v = max(-(UV_LIMIT - 1), min(UV_LIMIT - 1, (q if v >= 0 else -q) + c))
    return v > vth_v


def crossing_drives(layer: Layer, T: int) -> list[float]:
    """``C_k`` for k = 1 .. T: the least constant drive c (= (a << 6) + bias) that makes a neuron
    of ``layer`` spike within its first k steps from v = 0 (inf: none within k).

    v_k(c) is non-decreasing in c (a composition of non-decreasing maps), so the drives that cross
    the threshold at step k form an up-set [c_k, inf), found by bisection; C_k = min_{j <= k} c_j.
    """
    keep_v, vth_v = DECAY_UNIT - int(layer.dv), int(layer.vth) << VTH_SHIFT
    hi = 2 * UV_LIMIT  # |c| < 2**24: |a << 6| and |bias| stay below 2**23 on this path
    out, best = [], math.inf
    for k in range(1, T + 1):
        if _voltage_after(hi, k, keep_v, vth_v):
            lo, top = -hi, hi  # invariant: v_k(lo) <= vth (or lo = -2**24), v_k(top) > vth
            while top - lo > 1:
                mid = (lo + top) // 2
                lo, top = (lo, mid) if _voltage_after(mid, k, keep_v, vth_v) else (mid, top)
            best = min(best, top)
        out.append(best)
    return out


def _drive_is_constant(a: torch.Tensor, layer: Layer, bias: torch.Tensor) -> bool:
    """Whether ``layer`` turns the Dense output ``a`` into the plain drive ``(a << 6) + bias`` each
    step: a memoryless current (du = 4095, u = a << 6), |a << 6| < 2**23 (u does not wrap) and
    |bias| < 2**23. The closed forms below rest on it."""
    return (DECAY_UNIT - (int(layer.du) + DU_OFFSET) == 0 and not (a.numel() and _outside(a, UV_LIMIT >> ACT_SHIFT))
            and not (bias.numel() and _outside(bias, UV_LIMIT)))


def first_spike_drives(a: torch.Tensor, layer: Layer, bias: torch.Tensor, g: Gemm,
                       T: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a first layer driven by a constant Dense output ``a`` [B, n]: its drives ``c`` [B, n]
    and the crossing drives ``C`` [T] (both int32), so that ``c >= C[k - 1]`` is true where the
    neuron's first spike comes at step k or earlier (1-based); None where this closed form does
    not apply. ``first_spike_steps`` stacks those masks; ``emulate`` takes them one k at a time.

    With a memoryless current (du = 4095, so u = a << 6 every step) and nothing wrapping, each
    neuron sees the same drive c = (a << 6) + bias at every step and Lava resets v to 0 on a spike:
    its voltage restarts the same sequence, so it spikes at steps k, 2k, ... where k is its first
    crossing step, ``min{k: c >= C_k}`` (``crossing_drives``; ``periodic_trains`` expands them).
    This is what T steps of ``fixed_lif_step`` compute (tests/test_loihi.py checks the two
    against each other, tests/test_lava.py against Lava).
    """
    if T < 1 or g.may_wrap or not _drive_is_constant(a, layer, bias):
        return None
    c = a.to(torch.int32) * 2**ACT_SHIFT + bias.to(torch.int32)  # |c| < 2**24 fits int32
    cache = _cache(layer)
    if ("drives", T) not in cache:
        cache["drives", T] = [min(d, 2**31 - 1) for d in crossing_drives(layer, T)]  # inf: above every c
    return c, torch.tensor(cache["drives", T], dtype=torch.int32, device=a.device)


def first_spike_steps(a: torch.Tensor, layer: Layer, bias: torch.Tensor, g: Gemm, T: int) -> torch.Tensor | None:
    """``within`` [T, B, n] (bool): ``within[k - 1]`` true where the neuron's first spike comes at
    step k or earlier (1-based), from ``first_spike_drives``; None where the closed form does not apply."""
    drives = first_spike_drives(a, layer, bias, g, T)
    if drives is None:
        return None
    c, crossing = drives
    return c.unsqueeze(0) >= crossing.view(T, 1, 1)  # within[k - 1]: first spike at step <= k (grows with k)


def _dense_int32(s: torch.Tensor, g: Gemm) -> torch.Tensor:
    """``_dense`` for an int8 ``g`` that cannot wrap, in int32 (exact: every |W·s| << e < 2**31)."""
    acc = _half_product(s, g)
    e = g.weight_exp + 1  # W·s = 2·acc; a negative shift floors, as Lava's >> does
    return acc << e if e >= 0 else acc >> -e


def _integrator_closed_form(a_steps: Iterable[torch.Tensor], layer: Layer, bias: torch.Tensor) -> torch.Tensor | None:
    """v after T steps of a memoryless-current, non-leaking LIF (the read-out: du = 4095, dv = 0)
    driven by ``a_steps`` (the T Dense outputs [B, n], step by step), from v = 0: the running sum
    of (a << 6) + bias, when no partial sum reaches the threshold or the rail (no spike, no clip)
    and no u wraps; else None. The sums are exact integers in float64, so summing step by step
    gives what a cumulative sum over a stacked [T, B, n] gives, in O(B · n) memory."""
    if int(layer.dv) != 0:
        return None
    top, v = min(int(layer.vth) << VTH_SHIFT, UV_LIMIT - 1), None
    for a in a_steps:
        if not _drive_is_constant(a, layer, bias):
            return None
        term = a * 2**ACT_SHIFT + bias
        v = term if v is None else v + term
        if v.numel():
            lo, hi = torch.aminmax(v)
            if hi > top or lo < -(UV_LIMIT - 1):
                return None
    return v


def periodic_trains(within: torch.Tensor) -> torch.Tensor:
    """Spike trains [T, B, n] (bool) from ``first_spike_steps``: a spike at step t (1-based)
    wherever the first-spike step k divides t."""
    T = within.shape[0]
    first = within.clone()
    first[1:] ^= within[:-1]  # exactly at step k
    out = torch.zeros_like(first)
    for k in range(1, T + 1):
        out[k - 1 :: k] |= first[k - 1]
    return out


def _check_emulable(fnet: FixedNetwork) -> None:
    """Refuse a network whose parameters Lava would round or clip (``check_params``: an odd weight,
    a 13-bit decay, ...): the emulator computes exactly what it is given, Lava would not. The
    per-layer part is computed once per Layer."""
    problems = []
    for name, layer in _named_layers(fnet):
        cache = _cache(layer)
        if ("problems", name) not in cache:
            cache["problems", name] = _layer_problems(name, layer)
        problems += cache["problems", name]
    problems += _chain_problems(fnet)
    if problems:
        raise SpikepropError("the emulator computes only what Lava's fixed_pt models run as given: " + "; ".join(problems))


@torch.no_grad()
def emulate(fnet: FixedNetwork, payload: torch.Tensor, *, record: bool = False, record_uv: bool = True) -> EmuResult:
    """Run ``fnet`` bit-exactly on payload [T, B, n_in] (ints: graded payloads or 0/1), from zero state.

    Every layer starts its sample from u = v = 0 (Lava: LIFReset at the sample's first step),
    so the result equals Lava's fixed_pt run of the same samples back to back (hardware.lava).
    Without ``record``, a first layer with a constant input and a memoryless current (direct
    encoding, the recipes' du = 1) is computed in closed form (``first_spike_drives``) and the
    next Dense multiplies once per first-spike step k instead of once per time step: its input at
    step t is the sum of the one-hot masks of the divisors k of t, and W is linear.
    ``record_uv=False`` records only the spikes (and counts), not u and v.

    Memory: the state is O(B · n) per layer; a stride-0 payload (direct encoding) stays a view.
    The closed form keeps the next layer's drive for every step, [T, B, n_2] (n_2 = 10 for a
    one-hidden-layer network's read-out). ``record`` keeps [T, B, n] per layer (bool spikes,
    int64 u and v).
    """
    if payload.dim() != 3 or payload.shape[2] != fnet.layers[0].n_in:
        raise SpikepropError(f"payload must be [T, B, {fnet.layers[0].n_in}]; got {tuple(payload.shape)}")
    _check_emulable(fnet)
    T, B, _ = payload.shape
    device = payload.device
    all_layers = [*fnet.layers, fnet.readout]
    constant = T > 0 and (payload.stride(0) == 0 or bool((payload == payload[:1]).all()))
    seen = payload[:1] if constant else payload
    in_min, in_max = map(int, torch.aminmax(seen)) if seen.numel() else (0, 0)
    gemms = [gemm_for(layer, in_min, in_max, device) if i == 0 else gemm_for(layer, 0, 1, device)
             for i, layer in enumerate(all_layers)]
    biases = [bias_v(la, device) for la in all_layers]
    states: list[LIFState | None] = [None] * len(all_layers)  # zero state, made when a layer first steps
    # record: per layer one [T, B, n] buffer per recorded quantity, filled step by step
    rec: dict[str, list[torch.Tensor | None]] = {k: [None] * len(all_layers) for k in ("s", "u", "v")}
    counts: list[torch.Tensor | None] = [None] * len(all_layers)  # spikes summed step by step, when record
    a_first = None
    if constant:
        g0 = gemms[0]
        fast_int = g0.int8 and not g0.may_wrap and not record and B > 0
        a_first = _dense_int32(payload[0], g0) if fast_int else _dense(payload[0], g0)
    start = 0  # the first layer the step loop runs
    a_at = None  # a_at(t): that layer's Dense output at step t [B, n], when known without its input
    v_T = None  # the read-out's final voltage, when a closed form gives it
    if a_first is not None:
        drives = None if record else first_spike_drives(a_first, all_layers[0], biases[0], gemms[0], T)
        if drives is not None:
            c, crossing = drives
            g = gemms[1]
            # W·within_k - W·within_{k-1} = W·(first spike exactly at k); input at t = sum over k | t.
            # One mask within_k [B, n] at a time: the [T, B, n] masks are never held at once.
            per_k, previous = [], None
            for k in range(T):
                cum = _product((c >= crossing[k]).view(torch.int8 if g.int8 else torch.bool), g)
                per_k.append(cum if previous is None else cum - previous)
                previous = cum

            def a_at(t: int) -> torch.Tensor:  # local step t (0-based) is step t + 1 of the periodic trains
                return _shift(sum(per_k[k - 1] for k in range(1, t + 2) if (t + 1) % k == 0), g)

            start = 1
            if start == len(all_layers) - 1:  # the read-out follows: integrate in one sum where it applies
                v_T = _integrator_closed_form(map(a_at, range(T)), all_layers[-1], biases[-1])
        else:
            a_first = a_first.to(EXACT)
            a_at = lambda t: a_first  # noqa: E731
    for t in range(T if v_T is None else 0):
        s = payload[t]
        for i in range(start, len(all_layers)):
            a = a_at(t) if i == start and a_at is not None else _dense(s, gemms[i])
            if states[i] is None:
                states[i] = LIFState.zeros(B, all_layers[i].n_out, device=device, dtype=EXACT)
            step = fixed_lif_step(a, states[i], all_layers[i], biases[i], gemms[i].may_overflow_u)
            states[i] = step.state
            if record:
                if t == 0:
                    shape = (T, *step.s.shape)
                    rec["s"][i] = torch.zeros(shape, dtype=torch.bool, device=device)
                    if record_uv:
                        rec["u"][i], rec["v"][i] = (torch.zeros(shape, dtype=torch.int64, device=device) for _ in "uv")
                rec["s"][i][t] = step.s  # 0./1. -> bool; the integer-valued u, v -> int64 exactly
                if record_uv:
                    rec["u"][i][t] = step.state.u
                    rec["v"][i][t] = step.state.v
                counts[i] = step.s if t == 0 else counts[i] + step.s
            s = step.s
    if v_T is None:
        v_T = states[-1].v if states[-1] is not None else torch.zeros(B, fnet.readout.n_out)
    v_out = v_T.to(torch.int64)
    logits = v_out.double() / (2**ACT_SHIFT * fnet.readout.scale * T)
    if not record:
        return EmuResult(v_out, logits)
    u, v = (rec["u"], rec["v"]) if record_uv else (None, None)
    return EmuResult(v_out, logits, [c.to(torch.int64) for c in counts[:-1]], rec["s"], u, v)


def float_layers(net: Network) -> tuple[list[Layer], Layer]:
    """The float network as Lava floating_pt parameters (float64): hidden layers and read-out.

    Weights are the ones ``simulate`` uses (after ``net.weight_transform``); the read-out is a
    non-spiking integrator (du = 1, dv = 0, an unreachable threshold) whose v after T steps is T·logits.
    """
    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    layers = []
    for w, b, p in zip(net.weights, net.biases, net.params):
        layers.append(Layer(f64(_effective(net, w)), 0, float(p.du), float(p.dv), float(p.vth), f64(b),
                            np.zeros(b.shape[0], dtype=np.int32)))
    w_out = _effective(net, net.readout.weight)
    readout = Layer(f64(w_out), 0, 1.0, 0.0, FLOAT_UNREACHABLE, f64(net.readout.bias),
                    np.zeros(w_out.shape[0], dtype=np.int32))
    return layers, readout



# --------------------------------------------------------------------------------------------
# Run directories (what the CLI calls)

CALIBRATION_SAMPLES = 512  # training samples whose peaks set each layer's exponent
EVAL_BATCH = 500  # emulator batch: float64 state of 500 x 1000 neurons is 4 MB per tensor


class DeployEncoder:
    """An encoder that gives the deployed network's input: ``rule.deploy_input`` (for ``ff`` the
    image with the neutral label in its label features; for every other rule ``encoder(x)``)."""

    def __init__(self, rule, encoder):
        self.rule, self.encoder = rule, encoder

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.rule.deploy_input(self.rule.options, x, self.encoder, self.rule.net.sizes[-1])

    def __getattr__(self, name):  # kind, steps, binary, generator: the wrapped encoder's
        return getattr(self.encoder, name)


def quantize_run(run_dir: str | Path):
    """Load a trained run and quantize it: (config, ds, net, encoder, fnet, calibration).

    Calibration: the first CALIBRATION_SAMPLES training samples, encoded as in training (rate
    spikes from their own generator seeded by the run's seed). Direct encoding sends the
    dataset's stored integers (input_scale = ds.scale), so the input is exact.
    """
    from spikeprop.train import load_run

    config, ds, net, rule, rule_encoder = load_run(run_dir, device="cpu")
    encoder = DeployEncoder(rule, rule_encoder)
    cal_encoder = DeployEncoder(rule, type(rule_encoder)(rule_encoder.kind, rule_encoder.steps,
                                                          seeds.generator(config.seed, "calibration")))
    x_cal = cal_encoder(ds.intensities(ds.train_x[:CALIBRATION_SAMPLES]))
    graded = not encoder.binary
    source = {"run_dir": str(run_dir), "dataset": config.dataset, "rule": config.rule, "neurons": config.neurons,
              "quantize": config.quantize, "seed": config.seed}
    fnet = quantize(net, x_cal, encoding=config.encoding, graded_input=graded,
                    input_scale=float(ds.scale) if graded else 1.0, source=source)
    return config, ds, net, encoder, fnet, calibrate(deployed(net), x_cal)


def export_run(run_dir: str | Path, out: str | Path) -> tuple[FixedNetwork, list[str]]:
    """``spikeprop export RUN_DIR --to lava --out FILE``: quantize, check that it fits, save.

    Returns the network and the margin warnings (``margin_warnings``: layers that keep less than
    the aimed-for headroom below the 24-bit rail)."""
    _, _, _, _, fnet, cal = quantize_run(run_dir)
    problems = check_fit(fnet, cal)
    if problems:
        raise SpikepropError("the network does not fit Loihi 2: " + "; ".join(problems))
    save(fnet, out)
    return fnet, margin_warnings(fnet, cal)


@torch.no_grad()
def evaluate_run(run_dir: str | Path, limit: int | None = None) -> tuple[float, int, FixedNetwork]:
    """Test accuracy of the fixed-point network through the emulator: (accuracy, samples, fnet)."""
    config, ds, net, encoder, fnet, _ = quantize_run(run_dir)
    x, y = ds.test_x, ds.test_y
    if limit is not None:
        x, y = x[:limit], y[:limit]
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        xin = encoder(ds.intensities(x[i : i + EVAL_BATCH]))
        correct += int((emulate(fnet, fnet.payload(xin)).v_out.argmax(1) == y[i : i + EVAL_BATCH]).sum())
    return correct / max(1, len(x)), len(x), fnet
