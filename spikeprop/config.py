"""The training configuration: one frozen value, resolved once and passed down.

Precedence, lowest first: the dataclass defaults, the dataset's recipe (``models``), a TOML
file (``--config``), then command-line flags. ``config.json`` in the run directory records the
resolved value, so a run can be resumed or re-created from it.

A TOML file uses the field names (dashes or underscores) at the top level and one table per
rule for that rule's options::

    rule = "sigprop"
    hidden = [500, 500]
    steps = 10
    [sigprop]
    tau = 0.1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from spikeprop import SpikepropError
from spikeprop.data import DATASETS
from spikeprop.encoders import ENCODINGS
from spikeprop.neurons import NEURON_KINDS, LIFParams
from spikeprop.quantize import QUANTIZERS, representable_params


@dataclass(frozen=True)
class TrainConfig:
    rule: str = "sigprop"
    neurons: str = "lif"
    dataset: str = "digits"
    data_dir: str | None = None
    steps: int = 8
    hidden: tuple[int, ...] = (256,)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    encoding: str = "direct"
    device: str = "cpu"
    du: float = 1.0
    dv: float = 0.15
    vth: float = 1.0
    quantize: str = "none"
    rule_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from spikeprop.rules import RULES

        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.neurons == "if":
            object.__setattr__(self, "dv", 0.0)  # IF is Lava's LIF with dv = 0; record what runs
        if self.rule not in RULES:
            raise SpikepropError(f"unknown rule '{self.rule}' (choose from: {', '.join(sorted(RULES))})")
        if self.neurons not in NEURON_KINDS:
            raise SpikepropError(f"unknown neuron kind '{self.neurons}' (choose from: {', '.join(NEURON_KINDS)})")
        if self.dataset not in DATASETS:
            raise SpikepropError(f"unknown dataset '{self.dataset}' (choose from: {', '.join(DATASETS)})")
        if self.encoding not in ENCODINGS:
            raise SpikepropError(f"unknown encoding '{self.encoding}' (choose from: {', '.join(ENCODINGS)})")
        if self.quantize not in QUANTIZERS:
            raise SpikepropError(f"unknown --quantize '{self.quantize}' (choose from: {', '.join(QUANTIZERS)})")
        for name in ("steps", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise SpikepropError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise SpikepropError(f"--hidden needs one or more positive layer sizes, e.g. 500,500; got {self.hidden}")
        if not self.lr > 0:
            raise SpikepropError(f"--lr must be > 0; got {self.lr}")
        self.lif_params()  # validates du, dv, vth
        rule_cls = RULES[self.rule]
        unknown = set(self.rule_options) - set(rule_cls.OPTIONS)
        if unknown:
            raise SpikepropError(f"rule '{self.rule}' has no option(s) {', '.join(sorted(unknown))} "
                                 f"(it has: {', '.join(rule_cls.OPTIONS) or 'none'})")
        for key, value in self.rule_options.items():
            opt = rule_cls.OPTIONS[key]
            if opt.choices is not None and value not in opt.choices:
                raise SpikepropError(f"--{self.rule}-{key.replace('_', '-')} must be one of {opt.choices}; got {value!r}")

    def lif_params(self) -> LIFParams:
        params = LIFParams.for_kind(self.neurons, du=self.du, dv=self.dv, vth=self.vth)
        # --quantize loihi trains with the decays Loihi 2 can represent (spikeprop.quantize).
        return representable_params(params) if self.quantize == "loihi" else params

    def resolved_rule_options(self) -> dict:
        from spikeprop.rules import RULES

        opts = {k: o.default for k, o in RULES[self.rule].OPTIONS.items()}
        opts.update(self.rule_options)
        return opts

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["rule_options"] = self.resolved_rule_options()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpikepropError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        return cls(**d)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"rule_options"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config into flat field values plus ``rule_options`` tables (by rule name)."""
    from spikeprop.rules import RULES

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise SpikepropError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SpikepropError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    tables: dict[str, dict] = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if isinstance(value, dict):
            if key not in RULES:
                raise SpikepropError(f"{path}: table [{key}] is not a rule (rules: {', '.join(sorted(RULES))})")
            tables[key] = {kk.replace("-", "_"): vv for kk, vv in value.items()}
        elif k in FIELDS:
            out[k] = value
        else:
            raise SpikepropError(f"{path}: unknown key '{key}' (known: {', '.join(sorted(FIELDS))})")
    out["rule_tables"] = tables
    return out
