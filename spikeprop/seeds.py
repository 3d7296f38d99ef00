"""Every random sub-stream of a run, derived one way from its one seed.

``stream(seed, "order", epoch)`` is the seed of the generator that shuffles epoch ``epoch``;
``generator(seed, "rule", "sigprop")`` the generator of sigprop's own draws, and so on. The value is
the first 8 bytes of SHA-256 over the seed and the path, so different paths never share a
stream (a rule's draws for seed s are unrelated to the weights of seed s + 1), and the same
path always gives the same stream (same seed, same weights; resume replays an epoch exactly).

The paths spikeprop uses:

    ("weights",)               initial weights of the network
    ("order", epoch)           the order of the training samples in epoch ``epoch`` (1-based)
    ("encoder", epoch)         the encoder's spikes (rate encoding) in epoch ``epoch``
    ("evaluation",)            the encoder's spikes whenever a split is evaluated
    ("calibration",)           the spikes of the samples that calibrate Loihi's fixed point
    ("rule", name)             a rule's own draws (feedback matrices, negatives, ...)
"""

from __future__ import annotations

import hashlib

import torch

SEED_BITS = 63  # torch.Generator.manual_seed takes any 64-bit value; 63 bits keep it a positive int64


def stream(seed: int, *path: str | int) -> int:
    """The seed of sub-stream ``path`` of run seed ``seed`` (a non-negative 63-bit integer)."""
    text = "/".join([str(int(seed)), *map(str, path)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> (64 - SEED_BITS)


def generator(seed: int, *path: str | int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``stream(seed, *path)``."""
    return torch.Generator(device=device).manual_seed(stream(seed, *path))
