"""Accuracy and activity of a network on a dataset split."""

from __future__ import annotations

from collections.abc import Callable

import torch

from spikeprop import SpikepropError
from spikeprop.data import Dataset
from spikeprop.encoders import Encoder
from spikeprop.layers import Dense
from spikeprop.network import Network, simulate


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], ds: Dataset, split: str = "test",
             batch_size: int = 1000, device: str = "cpu", limit: int | None = None) -> float:
    """Fraction of samples of ``split`` whose arg-max class score is the label."""
    x, y = (ds.test_x, ds.test_y) if split == "test" else (ds.train_x, ds.train_y)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = ds.intensities(x[i : i + batch_size]).to(device)
        correct += int((predict(xb).argmax(1).cpu() == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def activity(net: Network, inputs: Callable[[torch.Tensor], torch.Tensor] | Encoder, ds: Dataset, n: int = 1000,
             device: str = "cpu") -> dict:
    """Per hidden layer: mean firing rate (spikes per neuron per step) and the silent fraction, on
    the first ``n`` test samples driven by ``inputs(x)`` [T, n, n_in] (an encoder, or a rule's
    deployed input: what the read-out path sees).

    Also synaptic operations per sample: every spike entering a Dense costs fan-out additions
    (graded first-layer inputs count one operation per non-zero input per step).

    Memory: the ``n`` samples run as one batch through ``simulate`` (state O(n · neurons), flat
    in T). Direct encoding's input is a stride-0 view; rate encoding draws its [T, n, n_in]
    spikes up front (one draw for the batch, so that a seed fixes them), which grows with T.
    """
    x = ds.intensities(ds.test_x[:n]).to(device)
    xin = inputs(x)
    res = simulate(net, xin)
    T = xin.shape[0]
    out: dict = {"firing_rate": [], "silent_fraction": []}
    for c in res.counts:
        out["firing_rate"].append(float(c.mean()) / T)
        out["silent_fraction"].append(float((c.sum(0) == 0).float().mean()))
    out["synops_per_sample"] = synops(net, xin, res.counts) / len(x)
    return out


def input_events(xin: torch.Tensor) -> torch.Tensor:
    """How many steps each input of a time-major ``xin`` [T, B, *shape] is non-zero: [B, *shape]
    (int64), counted one step at a time: memory O(B · n_in), never a [T, B, n_in] mask. A
    time-constant input (direct encoding: a stride-0 time axis) is counted once, times T."""
    if xin.dim() < 3:
        raise SpikepropError(f"inputs must be time-major [T, B, ...]; got shape {tuple(xin.shape)}")
    T = xin.shape[0]
    if T == 0:
        return torch.zeros(xin.shape[1:], dtype=torch.int64, device=xin.device)
    if xin.stride(0) == 0:
        return (xin[0] != 0).to(torch.int64) * T
    out = torch.zeros(xin.shape[1:], dtype=torch.int64, device=xin.device)
    for x_t in xin:
        out += x_t != 0
    return out


def nonzero_inputs(xin: torch.Tensor) -> int:
    """The number of non-zero entries of ``xin`` [T, B, *shape] (``input_events`` summed)."""
    return int(input_events(xin).sum())


def synops_per_layer(net: Network, xin: torch.Tensor, counts: list[torch.Tensor]) -> list[float]:
    """Synaptic operations of a batch per synapse (the hidden synapses, then the read-out): input
    [T, B, *in_shape] and hidden spike counts [B, *shape].

    Every non-zero input entering the first synapse and every spike of hidden layer l costs the
    additions of the synapse it enters (``Synapse.synops``: a Dense layer's every output neuron, a
    convolution's output neurons whose windows hold it); the read-out is a Dense. Synaptic
    operations are linear in the events, so counts over the T steps give the total.
    """
    events = input_events(xin).view(xin.shape[1], *net.in_shape)
    ops = [net.synapses[0].synops(events)]
    readout = Dense((net.sizes[-2],), net.sizes[-1])
    for layer, c in enumerate(counts):
        ops.append((net.synapses[layer + 1] if layer + 1 < net.n_layers else readout).synops(c))
    return ops


def synops(net: Network, xin: torch.Tensor, counts: list[torch.Tensor]) -> float:
    """All synaptic operations of a batch (``synops_per_layer`` summed)."""
    return sum(synops_per_layer(net, xin, counts))
