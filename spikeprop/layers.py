"""Layers as typed records: the synapse kinds, and the stack a network is built from.

A spiking layer is a synapse (what turns the previous layer's spikes into a current) feeding a
population of Lava LIF neurons (``spikeprop.neurons``); the read-out is a Dense into a
non-spiking integrator. The records here are shapes and hyper-parameters only (frozen, no
tensors): the network holds the weights, and every backend (float simulation, eligibility
traces, quantization, the emulator, Lava processes, NIR, resources) keeps a table keyed by the
record's ``kind``.

Synapse kinds, with the input ``s`` and output ``a`` of one step (B samples)::

    Dense(in_shape, n_out)              a[b, j] = sum_i W[j, i] s[b, i]            W [n_out, n_in]
                                        (an input of shape (C, H, W) is flattened explicitly, in
                                        PyTorch's C-H-W order)
    Conv2d(in_shape, out_channels,      a[b, o, y, x] = sum_{c, ky, kx} W[o, c, ky, kx] s[b, c, y*sy + ky - py, x*sx + kx - px]
           kernel, stride, padding)     (PyTorch's cross-correlation; zero padding)  W [C_out, C_in, kH, kW]

A convolutional layer's bias is one value per output channel (the LIF population has a neuron per
channel and position; Lava's per-neuron bias repeats it over the positions).

Stack syntax (``--layers``): comma-separated layer tokens, the input shape coming from the
dataset::

    256            a Dense layer of 256 LIF neurons
    256r           the same with recurrent connections (its own spikes of the previous step)
    16c3           a 3x3 convolution to 16 channels, stride 1, padding 1 ("same")
    32c3s2         stride 2 (the only down-sampling: strided convolutions, which Loihi runs as is)
    32c5s2p0       kernel 5, stride 2, padding 0

e.g. ``--layers 16c5s2,32c3s2,256``. A Dense after a convolution flattens its input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from spikeprop import SpikepropError

Shape = tuple[int, ...]

MAX_KERNEL = 31  # a larger kernel is surely a typo; Lava's Conv takes any, a core's synapse memory does not


@dataclass(frozen=True)
class Dense:
    """A fully-connected synapse from ``in_shape`` (flattened) to ``n_out`` neurons.

    shape: the shape of the population it feeds when that is not ``(n_out,)`` (sigprop's label
    projection into a convolutional layer): the output is reshaped to it.
    recurrent: the population also receives its own spikes of the previous step through a second
    Dense ``W_rec`` [n_out, n_out] (a Lava Dense from the LIF's ``s_out`` back to its ``a_in``: one
    step of delay), ``a[t] = W s[t] + W_rec s_self[t - 1]``, with ``s_self[-1] = 0``.
    """

    in_shape: Shape
    n_out: int
    shape: Shape | None = None
    recurrent: bool = False
    kind = "dense"

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_shape(self) -> Shape:
        return self.shape if self.shape is not None else (self.n_out,)

    @property
    def weight_shape(self) -> Shape:
        return (self.n_out, self.n_in)

    @property
    def bias_shape(self) -> Shape:
        return (self.n_out,)

    @property
    def fan_in(self) -> int:
        return self.n_in

    @property
    def synapses(self) -> int:
        """Distinct weights (what a core's synapse memory holds)."""
        return self.n_in * self.n_out

    def synops(self, active: torch.Tensor) -> float:
        """Synaptic operations of input events ``active`` [B, *in_shape] (counts of non-zero inputs,
        summed over any number of steps): every event adds into every output neuron."""
        return float(active.to(torch.float64).sum()) * self.n_out

    def current(self, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``a = W s``: s [B, *in_shape] -> a [B, *out_shape]."""
        a = F.linear(s.reshape(s.shape[0], -1) if s.dim() > 2 else s, w)
        return a if self.shape is None else a.view(a.shape[0], *self.shape)

    def weight_grad(self, dz: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
        """``dL/dW`` [n_out, n_in] from ``dz`` [B, *out_shape] and the presynaptic trace [B, *in_shape]."""
        dz = dz.reshape(dz.shape[0], -1) if dz.dim() > 2 else dz
        return dz.t() @ (trace.reshape(trace.shape[0], -1) if trace.dim() > 2 else trace)

    def bias_grad(self, dz: torch.Tensor) -> torch.Tensor:
        """``sum_b dz`` [n_out] (times the bias trace, which the caller applies)."""
        return dz.sum(0)

    def expand_bias(self, b: torch.Tensor) -> torch.Tensor:
        return b

    def token(self) -> str:
        return f"{self.n_out}{'r' if self.recurrent else ''}"


@dataclass(frozen=True)
class Conv2d:
    """A 2-D convolution (PyTorch's cross-correlation, zero padding) from ``in_shape`` (C, H, W)."""

    in_shape: Shape
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    kind = "conv2d"

    def __post_init__(self) -> None:
        if len(self.in_shape) != 3:
            raise SpikepropError(f"a convolution needs an image input (C, H, W); got shape {self.in_shape}")
        c, h, w = self.in_shape
        kh, kw = self.kernel
        (ph, pw), (sh, sw) = self.padding, self.stride
        if min(kh, kw, sh, sw, self.out_channels) < 1 or min(ph, pw) < 0:
            raise SpikepropError(f"convolution {self.token()}: kernel, stride and channels must be >= 1, padding >= 0")
        if kh > h + 2 * ph or kw > w + 2 * pw:
            raise SpikepropError(f"convolution {self.token()}: the {kh}x{kw} kernel is larger than its {h}x{w} input "
                                 f"(padded by {ph}, {pw})")
        if 2 * ph >= kh + 1 or 2 * pw >= kw + 1:
            raise SpikepropError(f"convolution {self.token()}: padding {ph},{pw} is more than half the kernel; "
                                 "output positions would see only padding")

    @property
    def out_shape(self) -> Shape:
        _, h, w = self.in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    @property
    def weight_shape(self) -> Shape:
        return (self.out_channels, self.in_shape[0], *self.kernel)

    @property
    def bias_shape(self) -> Shape:
        return (self.out_channels,)

    @property
    def fan_in(self) -> int:
        return self.in_shape[0] * self.kernel[0] * self.kernel[1]

    @property
    def synapses(self) -> int:
        """Distinct weights: the kernel, shared over positions."""
        return math.prod(self.weight_shape)

    def synops(self, active: torch.Tensor) -> float:
        """Synaptic operations of input events ``active`` [B, C, H, W] (counts of non-zero inputs,
        summed over any number of steps): each event adds into every output neuron whose kernel
        window holds it (``C_out`` channels times the windows that reach it, fewer at the borders)."""
        per_position = active.to(torch.float64).sum((0, 1)).view(1, 1, *self.in_shape[1:])
        ones = torch.ones(1, 1, *self.kernel, dtype=torch.float64, device=active.device)
        return float(F.conv2d(per_position, ones, stride=self.stride, padding=self.padding).sum()) * self.out_channels

    def current(self, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``a = W * s``: s [B, C, H, W] -> a [B, C_out, H', W']."""
        return F.conv2d(s, w, stride=self.stride, padding=self.padding)

    def weight_grad(self, dz: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
        """``dL/dW`` [C_out, C_in, kH, kW] from ``dz`` [B, *out_shape] and the presynaptic trace
        [B, *in_shape]: the convolution's weight gradient with the trace as its input."""
        return torch.nn.grad.conv2d_weight(trace, self.weight_shape, dz, stride=self.stride, padding=self.padding)

    def bias_grad(self, dz: torch.Tensor) -> torch.Tensor:
        """``sum_{b, y, x} dz`` [C_out]: the per-channel bias is shared by the channel's positions."""
        return dz.sum((0, 2, 3))

    def expand_bias(self, b: torch.Tensor) -> torch.Tensor:
        """The per-channel bias as the population's per-neuron bias [C_out, 1, 1] (broadcast)."""
        return b.view(-1, 1, 1)

    def token(self) -> str:
        kh, kw = self.kernel
        sh, sw = self.stride
        ph, pw = self.padding
        k = str(kh) if kh == kw else f"{kh}x{kw}"
        s = "" if (sh, sw) == (1, 1) else (f"s{sh}" if sh == sw else f"s{sh}x{sw}")
        p = "" if (ph, pw) == (kh // 2, kw // 2) else (f"p{ph}" if ph == pw else f"p{ph}x{pw}")
        return f"{self.out_channels}c{k}{s}{p}"


Synapse = Dense | Conv2d
SYNAPSES = {"dense": Dense, "conv2d": Conv2d}

_TOKEN = re.compile(r"^(?P<n>\d+)(?P<r>r)?"  # channels or neurons, recurrent
                    r"(?:c(?P<k>\d+)(?:x(?P<k2>\d+))?(?:s(?P<s>\d+)(?:x(?P<s2>\d+))?)?(?:p(?P<p>\d+)(?:x(?P<p2>\d+))?)?)?$")


def parse_layers(spec: str, in_shape: Shape) -> tuple[Synapse, ...]:
    """The synapses of a ``--layers`` spec (module docstring) for inputs of ``in_shape``, chained.

    Raises SpikepropError naming the token when it is malformed or does not chain (a kernel larger
    than its input, a convolution after a Dense layer).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpikepropError(f"--layers needs one or more layer tokens, e.g. 16c5s2,32c3s2,256; got {spec!r}")
    out: list[Synapse] = []
    shape = tuple(in_shape)
    for token in (t.strip() for t in spec.split(",")):
        m = _TOKEN.match(token.lower())
        if not m:
            raise SpikepropError(f"--layers: {token!r} is not a layer (256: Dense; 16c3: conv 16 channels 3x3; "
                                 "32c3s2: stride 2; 32c5s2p0: padding 0)")
        n = int(m["n"])
        if n < 1:
            raise SpikepropError(f"--layers: {token!r} needs at least one neuron or channel")
        if m["k"] is None:
            out.append(Dense(shape, n, recurrent=m["r"] is not None))
        else:
            if m["r"] is not None:
                raise SpikepropError(f"--layers: {token!r}: recurrent connections are for Dense layers (e.g. 256r)")
            if len(shape) != 3:
                raise SpikepropError(f"--layers: {token!r} is a convolution after a Dense layer (its input has shape "
                                     f"{shape}); convolutions come first")
            kh = int(m["k"])
            kw = int(m["k2"] or kh)
            if max(kh, kw) > MAX_KERNEL:
                raise SpikepropError(f"--layers: {token!r}: kernels up to {MAX_KERNEL} are supported")
            sh = int(m["s"] or 1)
            sw = int(m["s2"] or sh)
            ph = int(m["p"]) if m["p"] is not None else kh // 2
            pw = int(m["p2"]) if m["p2"] is not None else (ph if m["p"] is not None else kw // 2)
            out.append(Conv2d(shape, n, (kh, kw), (sh, sw), (ph, pw)))
        shape = out[-1].out_shape
    return tuple(out)


def describe(synapses: tuple[Synapse, ...]) -> str:
    """The ``--layers`` spec of a stack (``parse_layers`` inverts it)."""
    return ",".join(s.token() for s in synapses)


def to_dict(s: Synapse) -> dict:
    if isinstance(s, Dense):
        return {"kind": s.kind, "in_shape": list(s.in_shape), "n_out": s.n_out, "recurrent": s.recurrent}
    return {"kind": s.kind, "in_shape": list(s.in_shape), "out_channels": s.out_channels, "kernel": list(s.kernel),
            "stride": list(s.stride), "padding": list(s.padding)}


def from_dict(d: dict) -> Synapse:
    kind = d.get("kind")
    if kind == "dense":
        return Dense(tuple(d["in_shape"]), int(d["n_out"]), recurrent=bool(d.get("recurrent", False)))
    if kind == "conv2d":
        return Conv2d(tuple(d["in_shape"]), int(d["out_channels"]), tuple(d["kernel"]), tuple(d["stride"]),
                      tuple(d["padding"]))
    raise SpikepropError(f"unknown synapse kind {kind!r} (known: {', '.join(SYNAPSES)})")
