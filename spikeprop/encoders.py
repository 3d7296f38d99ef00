"""Input encoders: a batch of intensities x [B, N] in [0, 1] -> time-major input [T, B, N].

- ``direct``: the intensity is a constant input current at every step (graded input; the
  snnTorch tutorials' default and a Lava RingBuffer with graded spikes).
- ``rate``: a Bernoulli spike with probability x at every step (snnTorch ``spikegen.rate``'s
  scheme, drawn from an explicit ``torch.Generator`` so that a seed fixes every spike).
- ``latency``: one spike per input, earlier for brighter inputs (``snntorch.spikegen.latency``
  with its linear code, deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from snntorch import spikegen

from spikeprop import SpikepropError

ENCODINGS = ("direct", "rate", "latency")


@dataclass
class Encoder:
    """Turns intensities into T steps of input. Stateful only through its generator."""

    kind: str
    steps: int
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise SpikepropError(f"unknown encoding '{self.kind}' (choose from: {', '.join(ENCODINGS)})")
        if self.steps < 1:
            raise SpikepropError(f"the number of time steps must be >= 1; got {self.steps}")

    @property
    def binary(self) -> bool:
        """True when the encoder emits 0/1 spikes (Lava: binary messages), False for currents."""
        return self.kind != "direct"

    def __call__(self, x: torch.Tensor, *, overlay: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, *shape] intensities -> [T, B, *shape].

        overlay [B, k]: values that replace the first k features (FF's label). Direct encoding sends
        them as currents as they are (a label current may exceed 1); the spike encodings clamp them
        to [0, 1] like every intensity.
        """
        x = x.clamp(0.0, 1.0)
        if overlay is not None:  # the first k features of the flattened sample (C-H-W order for an image)
            x = x.clone()
            x.view(x.shape[0], -1)[:, : overlay.shape[1]] = overlay.clamp(0.0, 1.0) if self.binary else overlay
        T = self.steps
        if self.kind == "direct":
            return x.unsqueeze(0).expand(T, *x.shape)
        if self.kind == "rate":
            p = x.unsqueeze(0).expand(T, *x.shape)
            return torch.bernoulli(p, generator=self.generator)
        return spikegen.latency(x, num_steps=T, normalize=True, linear=True, clip=True)
