"""The bit-exact emulator of Lava's fixed_pt Dense and LIF models, batched in torch.

Per step, for each layer of a ``hardware.loihi.FixedNetwork`` (the arithmetic of Lava's
``PyDenseModelBitAcc`` and ``PyLifModelBitAcc``)::

    a = (W · s) << e            (e < 0: arithmetic right shift, i.e. floor of the sum; int32 channel)
    u = trunc0(u · (4095 - du) / 4096) + (a << 6)          then Lava's one-shot 24-bit wrap
    v = clip(trunc0(v · (4096 - dv) / 4096) + u + (bias_mant << bias_exp), ±(2**23 - 1))
    s = v > (vth << 6);  v = 0 where s                      (u is not reset)

``emulate`` runs that in the per-sample form of ``spikeprop.network``: layer l's local step t is
Lava's global step ``t + l + 2`` of the sample's window, which is what Lava computes with per-layer
``LIFReset(reset_interval=T, reset_offset=(2 + l) mod T)`` behind a RingBuffer
(``hardware.lava``). The Dense's one-step delay is therefore in the clock, not in the arithmetic.
``fixed_lif_step`` is the integer twin of ``spikeprop.neurons.lif_step``: two models of one
neuron, as Lava has a float and a bit-accurate model of one process.

For evaluation (no recording) two shortcuts keep it exact and make it fast: int8 x int8 -> int32
GEMMs for the Dense products (``gemm_for``), and a closed form for a first layer driven by a
constant input with a memoryless current (``first_spike_drives``).
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from hardware.loihi import (
    ACT_SHIFT,
    DECAY_SHIFT,
    DU_OFFSET,
    INT32_BITS,
    UV_LIMIT,
    VTH_SHIFT,
    FixedLayer,
    FixedNetwork,
    chain_problems,
    check_params,
    lava_process,
    layer_problems,
    named_layers,
)
from spikeprop import SpikepropError
from spikeprop.neurons import LIFState, LIFStep
from spikeprop.quantize import DECAY_UNIT

# The emulator computes in float64: every value is an integer, u and v stay below 2**31 and
# the decay products below 2**44 (24-bit state times 12-bit decay), far inside float64's exact
# integer range (2**53), so additions, multiplications by powers of two, trunc and floor give
# Lava's integers bit for bit, and faster than int64 (whose division is not vectorized).
EXACT = torch.float64


def _wrap32(x: torch.Tensor, bits: int = INT32_BITS) -> torch.Tensor:
    """The value numpy's int32 arithmetic would hold (two's complement wrap; ``bits``: another width,
    Lava Conv's 24-bit ``signed_clamp``)."""
    half = 2 ** (bits - 1)
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


def fixed_lif_step(a: torch.Tensor, state: LIFState, layer: FixedLayer, bias: torch.Tensor,
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


def bias_v(layer: FixedLayer, device=None) -> torch.Tensor:
    """The bias Lava adds to v each step: bias_mant << bias_exp (>> for a negative exponent), [N]
    (computed once per layer and device)."""
    cache = _cache(layer)
    key = ("bias", str(torch.device(device or "cpu")))
    if key not in cache:
        mant, exp = layer.bias_mant.astype(np.int64), layer.bias_exp.astype(np.int64)
        b = np.where(exp >= 0, mant << np.maximum(exp, 0), mant >> np.maximum(-exp, 0))
        cache[key] = torch.as_tensor(b, dtype=EXACT, device=device)
    return cache[key]


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
    wrap_bits: int = INT32_BITS  # the width the synapse's output wraps at


class ConvOp(NamedTuple):
    """One layer's convolution as the emulator computes it (``gemm_for`` of a conv2d layer).

    ``w``: the integer kernel [C_out, C_in, kH, kW] in float64 (exact: every sum of products stays
    far below 2**53); the product is PyTorch's cross-correlation on the flat C-H-W input, which is
    what Lava computes after the child's transposes (``hardware.lava``). As a Lava ``Conv``
    (weight_exp 0) the output wraps at 24 bits (lava/proc/conv/models.py ``signed_clamp``); as a
    ``Sparse`` (any other exponent) it is shifted by weight_exp and wraps at 32, as Dense's does.
    """

    w: torch.Tensor
    synapse: object
    weight_exp: int
    may_wrap: bool
    may_overflow_u: bool
    wrap_bits: int
    int8: bool = False
    offset: int = 0
    correction: None = None


# The closed form's first-spike masks are multiplied a block at a time, at most this many mask
# entries per GEMM (16 M: 16 MB of int8, whatever T is).
MASK_BLOCK_ELEMENTS = 2**24

# What the emulator derives from a layer once (weight facts, crossing drives, the parameter check),
# kept beside the record rather than in it: a FixedLayer is immutable (its arrays are never changed
# in place) and compared by identity, so it can key a weak dictionary that forgets it with it.
_CACHE: weakref.WeakKeyDictionary[FixedLayer, dict] = weakref.WeakKeyDictionary()


def _cache(layer: FixedLayer) -> dict:
    """The emulator's derived values of ``layer``."""
    cache = _CACHE.get(layer)
    if cache is None:
        cache = _CACHE[layer] = {}
    return cache


def _weights_info(layer: FixedLayer, device) -> dict:
    """Per-layer facts about the weights that every ``emulate`` call needs, once per layer and device."""
    cache = _cache(layer)
    key = str(torch.device(device or "cpu"))
    if key not in cache:
        w = np.asarray(layer.weights, dtype=np.int64)
        if layer.kind == "conv2d":  # one output neuron sees one channel's kernel: C_in·kH·kW weights
            rows = np.abs(w).reshape(w.shape[0], -1).sum(1)
            cache[key] = {"abs_row_max": int(rows.max()) if w.size else 0,
                          "w": torch.as_tensor(w, dtype=torch.float64, device=device)}
            return cache[key]
        info = {"abs_row_max": int(np.abs(w).sum(1).max()) if w.size else 0,
                "even": bool(w.size) and not (w & 1).any() and int(w.min()) >= -256 and int(w.max()) <= 254,
                "n_in": w.shape[1], "w": torch.as_tensor(w, device=device)}
        if info["even"]:
            half = w >> 1
            info["half_t"] = torch.as_tensor(np.ascontiguousarray(half.T.astype(np.int8)), device=device)
            info["half_rowsum"] = torch.as_tensor(half.sum(1), device=device)
        cache[key] = info
    return cache[key]


def gemm_for(layer: FixedLayer, in_min: int, in_max: int, device=None) -> Gemm:
    """The exact multiplication of ``layer``'s synapse for inputs in [in_min, in_max] (a ConvOp for a convolution)."""
    info = _weights_info(layer, device)
    bound = info["abs_row_max"] * max(abs(in_min), abs(in_max))  # the largest |W·s|
    a_bound = bound * 2 ** max(layer.weight_exp, 0)
    if layer.kind == "conv2d":
        bits = 24 if lava_process(layer) == "Conv" else INT32_BITS
        after = min(a_bound, 2 ** (bits - 1))  # what can reach the LIF after the wrap
        return ConvOp(info["w"], layer.synapse, layer.weight_exp, a_bound >= 2 ** (bits - 1),
                      after >= 2 ** (INT32_BITS - 1 - ACT_SHIFT), bits)
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
    if isinstance(g, ConvOp):
        syn = g.synapse
        x = s.to(torch.float64).reshape(s.shape[0], *syn.in_shape)
        return F.conv2d(x, g.w, stride=syn.stride, padding=syn.padding).reshape(s.shape[0], -1)
    if not g.int8 or s.shape[0] == 0:
        w = g.w.t().to(torch.float64) if g.int8 else g.w
        return F.linear(s.to(w.dtype), w).to(EXACT) * (2 if g.int8 else 1)
    return 2 * _half_product(s, g).to(EXACT)


def _shift(p: torch.Tensor, g: Gemm) -> torch.Tensor:
    """Lava's fixed_pt Dense output from the product W·s: shifted by weight_exp (floor for e < 0),
    sent through an int32 channel (wrapping only where ``g.may_wrap``)."""
    e = g.weight_exp
    a = p * 2**e if e >= 0 else torch.floor(p * 2.0**e)
    return _wrap32(a, g.wrap_bits) if g.may_wrap else a


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


def crossing_drives(layer: FixedLayer, T: int) -> list[float]:
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


def _drive_is_constant(a: torch.Tensor, layer: FixedLayer, bias: torch.Tensor) -> bool:
    """Whether ``layer`` turns the Dense output ``a`` into the plain drive ``(a << 6) + bias`` each
    step: a memoryless current (du = 4095, u = a << 6), |a << 6| < 2**23 (u does not wrap) and
    |bias| < 2**23. The closed forms below rest on it."""
    return (DECAY_UNIT - (int(layer.du) + DU_OFFSET) == 0 and not (a.numel() and _outside(a, UV_LIMIT >> ACT_SHIFT))
            and not (bias.numel() and _outside(bias, UV_LIMIT)))


def first_spike_drives(a: torch.Tensor, layer: FixedLayer, bias: torch.Tensor, g: Gemm,
                       T: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a first layer driven by a constant Dense output ``a`` [B, n]: its drives ``c`` [B, n]
    and the crossing drives ``C`` [T] (both int32), so that ``c >= C[k - 1]`` is true where the
    neuron's first spike comes at step k or earlier (1-based); None where this closed form does
    not apply. ``first_spike_steps`` stacks those masks; ``emulate`` takes them one k at a time.

    With a memoryless current (du = 4095, so u = a << 6 every step) and nothing wrapping, each
    neuron sees the same drive c = (a << 6) + bias at every step and Lava resets v to 0 on a spike:
    its voltage restarts the same sequence, so it spikes at steps k, 2k, ... where k is its first
    crossing step, ``min{k: c >= C_k}`` (``crossing_drives``).
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


def first_spike_steps(a: torch.Tensor, layer: FixedLayer, bias: torch.Tensor, g: Gemm, T: int) -> torch.Tensor | None:
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


def _integrator_closed_form(a: torch.Tensor, layer: FixedLayer, bias: torch.Tensor) -> torch.Tensor | None:
    """v after T steps of a memoryless-current, non-leaking LIF (the read-out: du = 4095, dv = 0)
    driven by ``a`` [T, B, n] (the T Dense outputs), from v = 0: the running sum of (a << 6) + bias,
    when no partial sum reaches the threshold or the rail (no spike, no clip) and no u wraps; else
    None. The sums are exact integers in float64. Memory: a [T, B, n] sum for the read-out's n."""
    if int(layer.dv) != 0 or a.shape[0] < 1 or not _drive_is_constant(a, layer, bias):
        return None
    v = torch.cumsum(a * 2**ACT_SHIFT + bias, 0)
    if v.numel():
        lo, hi = torch.aminmax(v)
        if hi > min(int(layer.vth) << VTH_SHIFT, UV_LIMIT - 1) or lo < -(UV_LIMIT - 1):
            return None
    return v[-1]


def _check_emulable(fnet: FixedNetwork) -> None:
    """Refuse a network whose parameters Lava would round or clip (``check_params``: an odd weight,
    a 13-bit decay, ...): the emulator computes exactly what it is given, Lava would not. The
    per-layer part is computed once per FixedLayer."""
    problems = []
    for name, layer in named_layers(fnet):
        cache = _cache(layer)
        if ("problems", name) not in cache:
            cache["problems", name] = layer_problems(name, layer)
        problems += cache["problems", name]
    problems += chain_problems(fnet)
    if not problems and any(la.kind != "dense" for la in fnet.layers):
        problems = check_params(fnet)  # a convolution's int32 bound (per network: it needs the input's bits)
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
            # The masks within_k [B, n] go through the GEMM a block of k at a time: one call for
            # the short T of the recipes, memory bounded by MASK_BLOCK_ELEMENTS for a long T.
            per_k, previous = [], None
            block = max(1, MASK_BLOCK_ELEMENTS // max(1, c.numel()))
            for k0 in range(0, T, block):
                ks = crossing[k0 : k0 + block].view(-1, 1, 1)
                masks = (c.unsqueeze(0) >= ks).view(torch.int8 if g.int8 else torch.bool)  # [k, B, n]
                cums = _product(masks.reshape(-1, c.shape[1]), g).view(len(ks), B, -1)
                for cum in cums:
                    per_k.append(cum if previous is None else cum - previous)
                    previous = cum

            def a_at(t: int) -> torch.Tensor:  # local step t (0-based) is step t + 1 of the periodic trains
                return _shift(sum(per_k[k - 1] for k in range(1, t + 2) if (t + 1) % k == 0), g)

            start = 1
            if start == len(all_layers) - 1:  # the read-out follows: integrate in one sum where it applies
                v_T = _integrator_closed_form(torch.stack([a_at(t) for t in range(T)]), all_layers[-1], biases[-1])
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


