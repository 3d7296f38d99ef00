"""The shared vocabulary of the membrane-local rules: representations, the read-out's gradient,
the output error, and the one function that turns per-layer learning signals into gradients.

A membrane-local rule computes, for each hidden layer l, a learning signal ``dz_l = dL/dz_l``
[B, n_l] on the layer's time-mean pre-reset voltage ``z_l = mean_t v_l[t]`` (from whatever the
rule compares: two streams, a projected error, two passes, goodness). Because the layer is linear
in its weights and bias when its input and its spikes are held constant, the gradient is exact
and needs only the presynaptic eligibility traces (``spikeprop.eligibility``)::

    dL/dW_l = dz_l^T mean_t eps_l[t],   dL/db_l = sum_b dz_l * mean_t eps_b[t]

``apply_signals`` is that step, for every rule; an on-chip variant replaces it with the chip's
learning engine (the signal stays the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from spikeprop.eligibility import MembraneTraces

REPRESENTATIONS = ("threshold", "tanh", "linear")


def threshold_activation(v: torch.Tensor, vth: float) -> torch.Tensor:
    """``f(v) = atan(pi (v - vth)) / pi + 1/2``: bounded, centred on the threshold (a smooth stand-in
    for the spike, used only in losses)."""
    return torch.atan(math.pi * (v - vth)) / math.pi + 0.5


def threshold_slope(z: torch.Tensor, vth: float) -> torch.Tensor:
    """``f'(z)`` of ``threshold_activation``: ``1 / (1 + (pi (z - vth))^2)``."""
    return 1.0 / (1.0 + (math.pi * (z - vth)) ** 2)


def represent(z: torch.Tensor, vth: float, rep: str) -> torch.Tensor:
    """A bounded per-layer representation of the mean voltage ``z``: threshold ``f(z)``, ``tanh(z / vth)``
    or ``z`` itself."""
    if rep == "threshold":
        return threshold_activation(z, vth)
    if rep == "tanh":
        return torch.tanh(z / vth)
    if rep == "linear":
        return z
    raise ValueError(f"rep must be one of {REPRESENTATIONS}, not '{rep}'")


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``e = softmax(logits) - onehot(y)`` [B, C]: the cross-entropy's gradient on the logits (times B)."""
    return torch.softmax(logits, 1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)


def readout_gradients(net, rates: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the read-out on detached rates [B, n_L]; sets the read-out's .grad.

    Returns (loss, logits). The read-out is the only layer a membrane-local rule trains with its
    true gradient.
    """
    with torch.enable_grad():
        logits = net.readout(rates.detach())
        loss = F.cross_entropy(logits, y)
        net.readout.weight.grad, net.readout.bias.grad = torch.autograd.grad(
            loss, (net.readout.weight, net.readout.bias))
    return loss.detach(), logits.detach()


def _put(param: nn.Parameter, grad: torch.Tensor, add: bool) -> None:
    param.grad = param.grad + grad if add and param.grad is not None else grad


@torch.no_grad()
def apply_signals(net, traces: MembraneTraces, signals: Sequence[torch.Tensor | None], *, bias: bool = True,
                  first_weight: nn.Parameter | None = None, add: bool = False) -> None:
    """Set each layer's ``.grad`` to the exact gradient of its learning signal (module docstring).

    signals: ``dz_l`` [B, n_l] per hidden layer (None: the layer is not trained by this stream);
    traces: the traces of the stream the signals are about; bias: also train the biases;
    first_weight: the parameter that received the first layer's input in this stream (sigprop's
    label projection ``S_1``), instead of ``W_1``; add: add to the gradients already there (a
    second stream) instead of replacing them.
    """
    for layer, dz in enumerate(signals):
        if dz is None:
            continue
        w = first_weight if layer == 0 and first_weight is not None else net.weights[layer]
        _put(w, traces.weight_grad(layer, dz), add)
        if bias:
            _put(net.biases[layer], traces.bias_grad(layer, dz), add)
        w_rec = net.recurrent_weight(layer)
        if w_rec is not None:
            _put(w_rec, traces.recurrent_grad(layer, dz), add)
