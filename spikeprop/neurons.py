"""Lava's LIF neuron in its discrete form: one pure step function.

Per step, exactly as ``lava.proc.lif.process.LIF`` (floating_pt model) computes it::

    u[t] = u[t-1] * (1 - du) + a_in[t]        # synaptic current
    v[t] = v[t-1] * (1 - dv) + u[t] + bias    # membrane voltage
    s[t] = v[t] > vth                          # strict threshold
    v[t] = 0 where s[t]                        # reset to zero; u is not reset

``du = 1`` is the plain current-free LIF (snnTorch ``Leaky`` with ``beta = 1 - dv`` and a zero
reset); ``dv = 0`` is the integrate-and-fire neuron. Lava keeps one ``du``, ``dv`` and ``vth``
per process, so they are scalars here; the bias is per neuron (Lava's ``bias_mant``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from spikeprop import SpikepropError

NEURON_KINDS = ("lif", "if")

SpikeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LIFParams:
    """Parameters of one LIF population (one Lava LIF process).

    du: fraction of the current lost per step, in [0, 1] (1: no synaptic current memory).
    dv: fraction of the voltage lost per step, in [0, 1] (0: integrate-and-fire).
    vth: firing threshold, > 0, in the units of the input current.
    """

    du: float = 1.0
    dv: float = 0.15
    vth: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.du <= 1.0:
            raise SpikepropError(f"du={self.du} is outside [0, 1]: du is the fraction of u lost per step")
        if not 0.0 <= self.dv <= 1.0:
            raise SpikepropError(f"dv={self.dv} is outside [0, 1]: dv is the fraction of v lost per step")
        if not self.vth > 0.0:
            raise SpikepropError(f"vth={self.vth} must be > 0")

    @classmethod
    def for_kind(cls, kind: str, du: float = 1.0, dv: float = 0.15, vth: float = 1.0) -> LIFParams:
        """The parameters of ``--neurons KIND``: 'lif' keeps dv, 'if' is Lava's LIF with dv = 0."""
        if kind == "lif":
            return cls(du=du, dv=dv, vth=vth)
        if kind == "if":
            return cls(du=du, dv=0.0, vth=vth)
        raise SpikepropError(f"unknown neuron kind '{kind}' (choose from: {', '.join(NEURON_KINDS)})")


class LIFState(NamedTuple):
    """The state of a population: current ``u`` and voltage ``v``, each [B, *shape] ([B, N] for a
    Dense layer's population, [B, C, H, W] for a convolution's)."""

    u: torch.Tensor
    v: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, shape: int | tuple[int, ...], *, device=None, dtype=torch.float32) -> LIFState:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        z = torch.zeros(batch, *shape, device=device, dtype=dtype)
        return cls(z, z.clone())


class LIFStep(NamedTuple):
    """What one step produces: spikes ``s``, the voltage before the reset ``v_pre`` and the new state."""

    s: torch.Tensor
    v_pre: torch.Tensor
    state: LIFState


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """The hard threshold ``x > 0`` as a float 0/1 tensor, with no gradient."""
    return (x > 0).to(x.dtype)


RESET_GRADS = ("stop", "constant")


def lif_step(
    a_in: torch.Tensor,
    state: LIFState,
    params: LIFParams,
    bias: torch.Tensor | None = None,
    spike_fn: SpikeFn = heaviside,
    reset_grad: str = "stop",
) -> LIFStep:
    """One step of Lava's LIF (equations in the module docstring).

    a_in: input current [B, *shape] (the synapse's output); bias: broadcastable to it, or None.
    spike_fn: maps ``v - vth`` to spikes; ``heaviside`` for inference and membrane-only rules, a
        snnTorch surrogate (``snntorch.surrogate.atan()``) for BPTT.
    reset_grad: how gradients treat the reset ``v <- 0``. 'stop' (BPTT, as snnTorch): the reset
        multiplies v by the detached ``1 - s``, so no gradient passes a reset. 'constant'
        (membrane-only rules): the amount removed by the reset is a
        constant, so ``dv/dW`` flows on through resets and is the presynaptic eligibility trace.
    The forward values are identical for both.
    """
    u = a_in if params.du == 1.0 else state.u * (1.0 - params.du) + a_in  # du = 1: u forgets
    v_pre = state.v * (1.0 - params.dv) + u
    if bias is not None:
        v_pre = v_pre + bias
    s = spike_fn(v_pre - params.vth)
    if reset_grad == "stop":
        v = v_pre * (1.0 - s.detach())
    elif reset_grad == "constant":
        v = v_pre - (v_pre * s).detach()
    else:
        raise ValueError(f"reset_grad must be one of {RESET_GRADS}, not '{reset_grad}'")
    return LIFStep(s, v_pre, LIFState(u, v))
