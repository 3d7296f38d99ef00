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

Every field is checked for its type and range when the value is made (``TrainConfig`` cannot
hold a string learning rate, a boolean batch size, a NaN decay or a table for another rule), and
the error names the field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from spikeprop import SpikepropError
from spikeprop.data import DATASETS, EVENT_DATASETS, SEQUENCES, TEMPORAL, fixed_steps
from spikeprop.distributed import MAX_WORLD
from spikeprop.encoders import ENCODINGS, TEMPORAL_ENCODINGS
from spikeprop.events import MAX_BIN_US
from spikeprop.neurons import NEURON_KINDS, LIFParams
from spikeprop.quantize import QUANTIZERS, representable_params
from spikeprop.validate import POSITIVE, UNIT, Range, check, integer, string, type_name

# Limits a config may ask for. They are generous; they exist so that a typo (an extra zero or
# ten) is an error before a multi-terabyte allocation or a seed torch cannot hold.
MAX_STEPS = 100_000
MAX_EPOCHS = 1_000_000
MAX_BATCH = 2**20
MAX_LAYER = 2**24  # neurons per hidden layer (a Loihi 2 chip holds 2**20)
MAX_LAYERS = 64
MAX_SEED = 2**32 - 1  # a typo guard; spikeprop.seeds derives every sub-stream from it
MAX_VTH = 1e6  # inputs are intensities in [0, 1]: a threshold this far above them never fires
MAX_DOWNSAMPLE = 128  # the largest event sensor (DVS Gesture) is 128 pixels wide: K = 128 leaves one cell
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")

# Per field: (what the value must be, the range of a number). hidden is checked on its own.
FIELD_SPECS: dict[str, tuple[type, Range | None]] = {
    "rule": (str, None), "neurons": (str, None), "dataset": (str, None), "encoding": (str, None),
    "device": (str, None), "quantize": (str, None),
    "steps": (int, Range(1, MAX_STEPS)), "epochs": (int, Range(1, MAX_EPOCHS)),
    "batch_size": (int, Range(1, MAX_BATCH)), "seed": (int, Range(0, MAX_SEED)),
    "lr": (float, POSITIVE), "du": (float, UNIT), "dv": (float, UNIT), "vth": (float, Range(0.0, MAX_VTH, low_open=True)),
    "sequence": (str, None), "downsample": (int, Range(1, MAX_DOWNSAMPLE)),
    "world_size": (int, Range(1, MAX_WORLD)),
}
CHOICES = {"neurons": NEURON_KINDS, "dataset": DATASETS, "encoding": ENCODINGS, "quantize": QUANTIZERS,
           "sequence": tuple(SEQUENCES)}
MODELS = ("fc", "conv", "rec")  # the recipes a dataset may have (models/): fully connected, convolutional, recurrent
# Fields added after the first run directories were written: a config.json without them has these.
ADDED_FIELDS = {"layers": None, "model": "fc", "sequence": "rows", "bin_us": None, "downsample": 1, "world_size": 1}
# Fields a resumed run may change (its checkpoint does not depend on them): the architecture key leaves them out.
RUN_FIELDS = ("epochs", "device", "data_dir", "world_size")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
    # The hidden stack as a --layers spec (spikeprop.layers), e.g. "16c5s2,32c3s2,256"; None: the
    # fully-connected layers of ``hidden``. ``model`` names the recipe it came from.
    layers: str | None = None
    model: str = "fc"
    # Temporal datasets (spikeprop.data): sequential-fashion-mnist by rows (T = 28) or pixels
    # (T = 784); an event dataset's bin width in microseconds (None: T bins per recording) and
    # spatial down-sampling factor.
    sequence: str = "rows"
    bin_us: int | None = None
    downsample: int = 1
    # The processes training data-parallel (spikeprop.distributed); set by the launch (torchrun or
    # --nproc), never by a config file. The trained weights do not depend on it (up to float
    # summation order), so a run may resume with another.
    world_size: int = 1

    def __post_init__(self) -> None:
        from spikeprop.rules import RULES

        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        for name, (kind, allowed) in FIELD_SPECS.items():
            put(name, check(_flag(name), getattr(self, name), kind, allowed, CHOICES.get(name)))
        put("hidden", check_hidden(self.hidden))
        if self.layers is not None:
            put("layers", check_layers(self.layers))
        put("model", string("--model", self.model, MODELS))
        if self.data_dir is not None:
            put("data_dir", string("--data-dir", self.data_dir))
        if self.bin_us is not None:
            put("bin_us", integer("--bin-us", self.bin_us, Range(1, MAX_BIN_US)))
        self._check_temporal()
        if self.rule not in RULES:
            raise SpikepropError(f"unknown rule '{self.rule}' (choose from: {', '.join(sorted(RULES))})")
        if not DEVICE_PATTERN.match(self.device):
            raise SpikepropError(f"--device must be cpu, cuda or cuda:N; got {self.device!r}")
        if self.neurons == "if":
            put("dv", 0.0)  # IF is Lava's LIF with dv = 0; record what runs
        self.lif_params()  # validates du, dv, vth together
        if not isinstance(self.rule_options, dict):
            raise SpikepropError(f"rule_options must be a table of --{self.rule}-* options; got {type_name(self.rule_options)}")
        put("rule_options", RULES[self.rule].check_options(self.rule_options))

    def _check_temporal(self) -> None:
        """A temporal dataset feeds its own steps (one encoding, T its own); the static encodings repeat an image."""
        wanted = TEMPORAL.get(self.dataset)
        if wanted is None and self.encoding in TEMPORAL_ENCODINGS:
            raise SpikepropError(f"--encoding {self.encoding} feeds a temporal dataset's own steps; {self.dataset} is "
                                 f"static (use direct, rate or latency, or a temporal dataset: {', '.join(TEMPORAL)})")
        if wanted is not None and self.encoding != wanted:
            raise SpikepropError(f"--encoding {self.encoding}: {self.dataset} is a temporal dataset whose input is its "
                                 f"own {'currents' if wanted == 'sequence' else 'spikes'} per step, never a repeated "
                                 f"image; use --encoding {wanted} (its default)")
        if self.sequence != "rows" and self.dataset != "sequential-fashion-mnist":
            raise SpikepropError(f"--sequence applies to sequential-fashion-mnist, not {self.dataset}")
        fixed = fixed_steps(self.dataset, self.sequence)
        if fixed is not None and self.steps != fixed:
            raise SpikepropError(f"--steps {self.steps}: sequential-fashion-mnist by {self.sequence} has T = {fixed} "
                                 "(one row of 28 pixels per step, or one pixel with --sequence pixels); leave --steps out")
        if self.dataset not in EVENT_DATASETS:
            for name, default in (("bin_us", None), ("downsample", 1)):
                if getattr(self, name) != default:
                    raise SpikepropError(f"{_flag(name)} applies to the event datasets ({', '.join(EVENT_DATASETS)}), "
                                         f"not {self.dataset}")

    def data_options(self) -> dict:
        """The keyword arguments of ``spikeprop.data.load`` beyond the name and directory."""
        return {"sequence": self.sequence, "steps": self.steps, "bin_us": self.bin_us, "downsample": self.downsample}

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
    def from_dict(cls, d: Any, *, source: str = "configuration", complete: bool = False) -> TrainConfig:
        """A config from plain values (a TOML file's, ``config.json``'s). ``complete``: every field
        must be present (a run directory's ``config.json`` records all of them)."""
        if not isinstance(d, dict):
            raise SpikepropError(f"{source} must be a table of settings; got {type_name(d)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpikepropError(f"{source}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
        if complete:
            d = {**{k: v for k, v in ADDED_FIELDS.items() if k not in d}, **d}
            missing = names - set(d)
            if missing:
                raise SpikepropError(f"{source} lacks {', '.join(sorted(missing))}; it was not written by spikeprop "
                                     "train (restore it or re-train)")
        try:
            return cls(**d)
        except SpikepropError as e:
            raise SpikepropError(f"{source}: {e}") from None

    @classmethod
    def from_run(cls, raw: Any, source: str) -> TrainConfig:
        """The config a run directory's ``config.json`` holds (``versions`` aside); every field required."""
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "versions"}
        return cls.from_dict(raw, source=source, complete=True)

    def architecture_key(self) -> dict:
        """The settings a trained checkpoint depends on: every field but those a run may change
        when it is resumed or moved (``RUN_FIELDS``: ``epochs``, ``device``, ``data_dir``,
        ``world_size``). A field added later is left out while it has its old default, so older
        checkpoints keep matching."""
        d = self.to_dict()
        for k in RUN_FIELDS:
            d.pop(k)
        for k, default in ADDED_FIELDS.items():
            if k in d and d[k] == default:
                d.pop(k)
        return d


def check_layers(value: Any) -> str:
    """``--layers``: a spec that parses (spikeprop.layers); normalised (``describe`` of its parse).
    Shapes are checked against the dataset when the network is built."""
    from spikeprop.layers import describe, parse_layers

    if not isinstance(value, str):
        raise SpikepropError(f"--layers must be a string of layer tokens, e.g. \"16c5s2,32c3s2,256\"; got {type_name(value)}")
    # Parse against a large dummy image so that only the syntax is judged here.
    return describe(parse_layers(value, (1, 4096, 4096)))


def check_hidden(value: Any) -> tuple[int, ...]:
    """``--hidden``: a non-empty list of positive layer sizes."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise SpikepropError(f"--hidden must be a list of layer sizes, e.g. [500, 500]; got {type_name(value)}")
    if not 1 <= len(value) <= MAX_LAYERS:
        raise SpikepropError(f"--hidden needs 1 to {MAX_LAYERS} layer sizes; got {len(value)}")
    return tuple(integer("--hidden", h, Range(1, MAX_LAYER)) for h in value)


# The fields a TOML file or a flag may set (world_size is the launch's).
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"rule_options", "world_size"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config into flat field values plus ``rule_tables`` (by rule name)."""
    from spikeprop.rules import RULES

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise SpikepropError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise SpikepropError(f"config file {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise SpikepropError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise SpikepropError(f"config file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise SpikepropError(f"cannot read config file {path}: {e.strerror}") from None
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

