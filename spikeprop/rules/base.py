"""The interface every learning rule implements, and the registry behind ``--rule``.

A rule owns how the network is driven during training (sigprop runs a data and a target
stream, BPTT one stream with surrogate gradients, PEPITA two passes, ...), so the interface is a
training step::

    rule = RULES[name](network, config, encoder)
    metrics = rule.train_step(x, y, index)   # x: intensities [B, n_in] in [0, 1]; y: labels [B];
                                             # index: dataset rows (read only when needs_index)
    logits = rule.predict(x)                 # class scores [B, n_classes]
    xin = RULES[name].deploy_input(options, x, encoder, n_classes)   # what the deployed network sees
    rule.state_dict() / rule.load_state_dict(d)

A rule implements ``gradients`` (set ``.grad`` of what it trains for one batch, return metrics)
and ``optimizers``; ``train_step`` zeroes, computes and steps. Each rule declares its
hyper-parameters in ``OPTIONS`` (CLI flags ``--<rule>-<key>``, TOML table ``[<rule>]``), each with
its type and allowed range; their values arrive in ``self.options``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from spikeprop import SpikepropError
from spikeprop.encoders import Encoder
from spikeprop.network import Network, simulate
from spikeprop.seeds import generator
from spikeprop.validate import Range, check

RULES: dict[str, type[AbstractRule]] = {}


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
    """Class decorator: make a rule available as ``--rule name`` (a name can be registered once)."""

    def deco(cls):
        if name in RULES:
            raise ValueError(f"--rule {name} is already registered by {RULES[name].__module__}.{RULES[name].__qualname__}")
        cls.name = name
        RULES[name] = cls
        return cls

    return deco


class AbstractRule(ABC):
    """Prediction through the read-out, state made of optimizers and tensors, and the training step."""

    name: ClassVar[str] = "rule"
    OPTIONS: ClassVar[dict[str, Option]] = {}
    summary: ClassVar[str] = ""
    # Rules with per-sample state (F3's delayed-error buffer) read the dataset rows of the batch.
    needs_index: ClassVar[bool] = False

    def __init__(self, net: Network, config, encoder: Encoder):
        self.net = net
        self.encoder = encoder
        self.lr = config.lr
        self.batch_size = config.batch_size
        self.options = {k: config.rule_options.get(k, o.default) for k, o in self.OPTIONS.items()}
        # The rule's own random draws, a sub-stream of the run's seed (spikeprop.seeds).
        self.generator = generator(config.seed, "rule", self.name)
        # Data-parallel training (spikeprop.distributed): x, y and index are this rank's rows of
        # the global batch; ``train_step`` all-reduces the gradients and metrics. None: one process.
        self.dist = None

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

    @classmethod
    def resolve_options(cls, options: dict) -> dict:
        """Every option's value: the defaults updated with ``options``."""
        return {**{k: o.default for k, o in cls.OPTIONS.items()}, **options}

    @abstractmethod
    def gradients(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> dict[str, float]:
        """Set ``.grad`` of every tensor the rule trains for one batch; return the batch's metrics."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers ``train_step`` steps, in order (their state is part of ``state_dict``)."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, float]:
        """Zero the optimizers' gradients, run ``gradients``, step the optimizers."""
        optimizers = self.optimizers()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        metrics = self.gradients(x, y, index)
        if self.dist is not None:  # this rank's mean over its rows -> the global batch's mean
            from spikeprop.distributed import trained_parameters

            metrics = self.dist.reduce(trained_parameters(optimizers), metrics)
        for opt in optimizers:
            opt.step()
        return metrics

    def batch_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The labels of the whole global batch (``y`` itself in one process)."""
        return y if self.dist is None else self.dist.gather(y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C] of intensities ``x`` [B, n_in]: the read-out of ``deploy_input``."""
        return simulate(self.net, self.deploy_input(self.options, x, self.encoder, self.net.sizes[-1])).logits

    @classmethod
    def input_shape(cls, options: dict, sample_shape: tuple[int, ...], n_classes: int) -> tuple[int, ...]:
        """The shape of one input the network takes for samples of ``sample_shape`` (what
        ``deploy_input`` gives per sample): the sample's own, unless the rule adds to it."""
        return tuple(sample_shape)

    @property
    def predicts_by_readout(self) -> bool:
        """Whether ``predict`` is the read-out of one pass on ``deploy_input`` (so the scores of that
        very pass are the predictions)."""
        return True

    @classmethod
    def deploy_input(cls, options: dict, x: torch.Tensor, encoder: Encoder, n_classes: int) -> torch.Tensor:
        """The input [T, B, n_in] the network's read-out path sees for intensities ``x`` (what is
        deployed to Lava): ``encoder(x)`` unless a rule writes more into it. A pure function of the
        rule's options, so hardware needs no live rule."""
        return encoder(x)

    # Everything a rule needs to resume exactly: optimizers, generator, extra tensors.
    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers()], "generator": self.generator.get_state(),
                **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if "optimizers" not in state:  # checkpoint format 1: named optimizers, no generator for most rules
            legacy = [state[k] for k in ("optimizer", "readout_optimizer") if k in state]
            state = {**state, "optimizers": legacy, "generator": state.get("generator", self.generator.get_state())}
        opts = self.optimizers()
        if len(state["optimizers"]) != len(opts):
            raise KeyError(f"the state holds {len(state['optimizers'])} optimizers, the rule has {len(opts)}")
        for opt, s in zip(opts, state["optimizers"]):
            opt.load_state_dict(s)
        self.generator.set_state(state["generator"])
        self.load_extra_state(state)

    def extra_state(self) -> dict:
        """Tensors beyond the optimizers and the generator (feedback matrices, buffers)."""
        return {}

    def load_extra_state(self, state: dict) -> None:  # noqa: B027  (optional: most rules have none)
        """Restore what ``extra_state`` returned."""
