"""Input encoders: a batch of intensities x [B, N] in [0, 1] -> time-major input [T, B, N].

For static images (digits, Fashion-MNIST, MNIST) the encoder makes the T steps:

- ``direct``: the intensity is a constant input current at every step (graded input; the
  snnTorch tutorials' default and a Lava RingBuffer with graded spikes).
- ``rate``: a Bernoulli spike with probability x at every step (snnTorch ``spikegen.rate``'s
  scheme, drawn from an explicit ``torch.Generator`` so that a seed fixes every spike).
- ``latency``: one spike per input, earlier for brighter inputs (``snntorch.spikegen.latency``
  with its linear code, deterministic).

For a temporal dataset (``spikeprop.data.TEMPORAL``) the dataset has the steps already: its
``intensities`` are sample-major [B, T, *frame] (as stored) and the encoder only turns them
time-major, [T, B, *frame] (a transposed view: its time axis has a non-zero stride, so no
shortcut for a time-constant input applies to it). T is the dataset's (``steps`` must agree).

- ``sequence``: each step's values are input currents (graded; sequential Fashion-MNIST, one
  row or one pixel per step).
- ``events``: each step's values are 0/1 spikes (binary; event frames binned from N-MNIST,
  DVS Gesture or SHD recordings).

The static encodings do not apply to a temporal dataset, nor these two to a static one
(``spikeprop.config`` refuses both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from snntorch import spikegen

from spikeprop import SpikepropError

STATIC_ENCODINGS = ("direct", "rate", "latency")
TEMPORAL_ENCODINGS = ("sequence", "events")
ENCODINGS = (*STATIC_ENCODINGS, *TEMPORAL_ENCODINGS)
GRADED_ENCODINGS = ("direct", "sequence")  # currents; the others emit 0/1 spikes


@dataclass
class Encoder:
    """Turns intensities into T steps of input. Stateful only through its generator.

    ``dist``: a ``spikeprop.distributed.Context`` while training data-parallel. ``x`` is then this
    rank's rows of the global batch; a random encoding all-gathers the batch, draws its spikes
    from the generator (the same on every rank) and keeps this rank's rows, so that the spikes are
    those of one process.
    """

    kind: str
    steps: int
    generator: torch.Generator | None = None
    dist: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise SpikepropError(f"unknown encoding '{self.kind}' (choose from: {', '.join(ENCODINGS)})")
        if self.steps < 1:
            raise SpikepropError(f"the number of time steps must be >= 1; got {self.steps}")

    @property
    def binary(self) -> bool:
        """True when the encoder emits 0/1 spikes (Lava: binary messages), False for currents."""
        return self.kind not in GRADED_ENCODINGS

    @property
    def temporal(self) -> bool:
        """True when the dataset gives the steps ([B, T, *frame] in, a time-major view out)."""
        return self.kind in TEMPORAL_ENCODINGS

    def __call__(self, x: torch.Tensor, *, overlay: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, *shape] intensities -> [T, B, *shape]; a temporal encoding: x [B, T, *frame] -> [T, B, *frame].

        overlay [B, k]: values that replace the first k features (FF's label); of every step's
        frame under a temporal encoding. Graded encodings send them as currents as they are (a
        label current may exceed 1); the spike encodings clamp them to [0, 1] like every intensity.
        """
        if self.temporal:
            return self._steps(x, overlay)
        x = x.clamp(0.0, 1.0)
        if overlay is not None:  # the first k features of the flattened sample (C-H-W order for an image)
            x = x.clone()
            x.view(x.shape[0], -1)[:, : overlay.shape[1]] = overlay.clamp(0.0, 1.0) if self.binary else overlay
        T = self.steps
        if self.kind == "direct":
            return x.unsqueeze(0).expand(T, *x.shape)
        if self.kind == "rate":
            if self.dist is not None:  # the global batch's draws, this rank's rows
                full = self.dist.gather(x)
                spikes = torch.bernoulli(full.unsqueeze(0).expand(T, *full.shape), generator=self.generator)
                return spikes[:, self.dist.rows].contiguous()
            p = x.unsqueeze(0).expand(T, *x.shape)
            return torch.bernoulli(p, generator=self.generator)
        return spikegen.latency(x, num_steps=T, normalize=True, linear=True, clip=True)

    def _steps(self, x: torch.Tensor, overlay: torch.Tensor | None) -> torch.Tensor:
        """A temporal dataset's own steps, time-major: x [B, T, *frame] -> [T, B, *frame] (a view)."""
        if x.dim() < 3 or x.shape[1] != self.steps:
            raise SpikepropError(f"--encoding {self.kind} takes the dataset's own steps, [B, T, *frame] with "
                                 f"T = {self.steps}; got shape {tuple(x.shape)}")
        if overlay is not None:  # the first k features of every step's frame
            x = x.clone()
            label = overlay.clamp(0.0, 1.0) if self.binary else overlay
            x.view(x.shape[0], x.shape[1], -1)[:, :, : overlay.shape[1]] = label.to(x.dtype)[:, None]
        return x.transpose(0, 1)
