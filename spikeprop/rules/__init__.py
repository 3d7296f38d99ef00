"""Learning rules, one module each, registered under their ``--rule`` name.

A rule owns how the network is driven during training (sigprop runs a data and a target
stream, BPTT one stream with surrogate gradients, ...), so the interface is a training step::

    rule = RULES[name](network, config, encoder)
    metrics = rule.train_step(x, y)    # x: intensities [B, n_in] in [0, 1]; y: labels [B]
    logits = rule.predict(x)           # class scores [B, n_classes]
    rule.state_dict() / rule.load_state_dict(d)

Each rule declares its own hyper-parameters in ``OPTIONS`` (CLI flags named after the paper's
symbols); their resolved values arrive in ``config.rule_options``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spikeprop import SpikepropError
from spikeprop.encoders import Encoder
from spikeprop.network import Network, simulate
from spikeprop.validate import Range, check

RULES: dict[str, type[Rule]] = {}


@dataclass(frozen=True)
class Option:
    """One rule hyper-parameter: its type, default, help text and allowed values (``--flag`` is the key).

    allowed: the range of a number (None: any finite value); choices: the values of a string.
    """

    type: type
    default: Any
    help: str
    choices: tuple | None = None
    allowed: Range | None = None


def register(name: str):
    """Class decorator: make a Rule available as ``--rule name``."""

    def deco(cls):
        cls.name = name
        RULES[name] = cls
        return cls

    return deco


class Rule:
    """Base class: prediction through the read-out, and state made of optimizers and tensors."""

    name = "rule"
    OPTIONS: dict[str, Option] = {}
    summary = ""

    @classmethod
    def check_options(cls, options: dict) -> dict:
        """``options`` (key -> value, from flags, a TOML table or config.json) checked against
        ``OPTIONS``: known keys, the declared type, range and choices. Returns the normalised values."""
        unknown = set(options) - set(cls.OPTIONS)
        if unknown:
            raise SpikepropError(f"rule '{cls.name}' has no option(s) {', '.join(sorted(map(str, unknown)))} "
                                 f"(it has: {', '.join(cls.OPTIONS) or 'none'})")
        out = {}
        for key, value in options.items():
            opt = cls.OPTIONS[key]
            out[key] = check(f"--{cls.name}-{key.replace('_', '-')}", value, opt.type, opt.allowed, opt.choices)
        return out

    def __init__(self, net: Network, config, encoder: Encoder):
        self.net = net
        self.config = config
        self.encoder = encoder
        self.options = {k: config.rule_options.get(k, o.default) for k, o in self.OPTIONS.items()}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return simulate(self.net, self.encoder(x)).logits

    def deploy_input(self, x: torch.Tensor, encoder: Encoder | None = None) -> torch.Tensor:
        """The input [T, B, n_in] the network's read-out path sees for ``x`` (what is deployed to
        Lava): ``encoder(x)``, the rule's own encoder by default."""
        return (encoder or self.encoder)(x)

    @staticmethod
    def apply_gradients(compute, *optimizers: torch.optim.Optimizer) -> dict[str, float]:
        """Zero the optimizers' gradients, run ``compute()`` (it sets ``.grad`` and returns metrics), step them."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        metrics = compute()
        for opt in optimizers:
            opt.step()
        return metrics

    # Everything a rule needs to resume exactly: optimizers, extra tensors, generators.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _load_builtin_rules() -> None:
    from spikeprop.rules import bptt, dfa, f3, ff, pepita, shallow, sigprop  # noqa: F401


_load_builtin_rules()
