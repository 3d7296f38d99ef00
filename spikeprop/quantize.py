"""Training-time fixed point (``--quantize loihi``): what Loihi 2 can represent, seen from torch.

Loihi 2 (Lava's ``fixed_pt`` Dense and LIF models) stores a Dense weight
as an 8-bit signed mantissa ``m`` with one shared power-of-two exponent per layer, and a decay
as a 12-bit fraction of 4096. Training with ``--quantize loihi`` makes the float network use
exactly those values in its forward pass:

    Δ   = max|W| / WEIGHT_MANTISSA_MAX                  (per layer, like hardware.loihi.quantize)
    W_q = Δ · clip(round(W / Δ), -WEIGHT_MANTISSA_MAX, WEIGHT_MANTISSA_MAX)
    W  -> W + (W_q - W).detach()                        (straight-through estimator: dW_q/dW = 1)
    du, dv -> round(DECAY_UNIT · d) / DECAY_UNIT        (decays on the 12-bit grid)

The threshold and the biases are not snapped: ``hardware.loihi.quantize`` scales them by the
layer's integer scale (thousands of units per 1.0), where rounding moves them by < 0.05 %.
This module is the single home of those two constants; ``hardware.loihi`` imports them.
"""

from __future__ import annotations

import torch

from spikeprop.neurons import LIFParams

QUANTIZERS = ("none", "loihi")

# Lava Dense, sign mode MIXED with 8 weight bits, keeps even values in [-256, 254] (it clears
# the LSB), i.e. 2·m with an 8-bit mantissa m in [-128, 127]; the symmetric range ±127 keeps
# max|W| exactly representable with either sign.
WEIGHT_MANTISSA_MAX = 127
# Lava fixed_pt decays are 12-bit: u and v are multiplied by (4096 - d) / 4096 per step.
DECAY_UNIT = 4096


def weight_step(w: torch.Tensor) -> torch.Tensor:
    """The per-layer quantization step Δ = max|W| / 127 (1 for an all-zero matrix), a 0-d tensor."""
    m = w.detach().abs().max()
    return torch.where(m > 0, m / WEIGHT_MANTISSA_MAX, torch.ones_like(m))


def weight_mantissa(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, Δ): integer mantissas m = round(W/Δ) in [-127, 127] (as a float tensor) and the step Δ."""
    step = weight_step(w)
    return torch.round(w.detach() / step).clamp(-WEIGHT_MANTISSA_MAX, WEIGHT_MANTISSA_MAX), step


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """W_q in the forward pass, the identity in the backward pass (straight-through estimator)."""
    m, step = weight_mantissa(w)
    return w + (m * step - w).detach()


def representable_params(p: LIFParams) -> LIFParams:
    """``p`` with du and dv moved to the nearest multiple of 1/4096 (what fixed_pt can decay by)."""
    return LIFParams(du=round(p.du * DECAY_UNIT) / DECAY_UNIT, dv=round(p.dv * DECAY_UNIT) / DECAY_UNIT, vth=p.vth)
