"""Network recipes: the architecture and hyper-parameters each dataset selects by default.

``recipe(dataset, rule, model)`` returns the values that ``--dataset`` (and ``--model``) select,
below a TOML file and command-line flags: ``fc`` is the fully-connected recipe, ``conv`` the
convolutional one (its stack in ``layers``, ``spikeprop.layers`` syntax). The figures the README
reports were produced with these defaults.
"""

from __future__ import annotations

from spikeprop import SpikepropError

# Per dataset: the network and schedule, learning rates per rule, and rule options per rule.
RECIPES: dict[str, dict] = {
    # 8x8 digits: a few minutes at most on 2 cores for any rule.
    "digits": {
        "hidden": (256,), "steps": 8, "epochs": 30, "batch_size": 32, "dv": 0.15,
        "lr": {"default": 1e-3, "ff": 3e-3, "pepita": 3e-3, "shallow": 1e-2},  # shallow: lr is its read-out's
        "rule_options": {"sigprop": {"readout_lr": 1e-2}, "ff": {"readout_lr": 1e-2}, "pepita": {"readout_lr": 1e-2},
                         "f3": {"readout_lr": 1e-2}, "dfa": {"readout_lr": 1e-2}},
    },
    # 28x28 Fashion-MNIST / MNIST: one 1000-unit LIF layer, T = 10 (the size of the sigprop paper's FC nets),
    # within 30 minutes on 2 cores.
    "fashion-mnist": {
        "hidden": (1000,), "steps": 10, "epochs": 20, "batch_size": 128, "dv": 0.15,
        "lr": {"default": 5e-4, "dfa": 2e-3, "f3": 2e-3, "ff": 1e-3, "shallow": 1e-2},  # shallow: lr is its read-out's
        "rule_options": {"sigprop": {"readout_lr": 1e-3}, "pepita": {"F_scale": 0.5},
                         "ff": {"negatives": "hard", "label_scale": 4.0}},
    },
}
RECIPES["mnist"] = RECIPES["fashion-mnist"]

# Temporal datasets (spikeprop.data.TEMPORAL): fully-connected networks fed one step of the
# dataset's own sequence per time step (recurrent recipes come with recurrent layers). T is the
# dataset's: sequential Fashion-MNIST's rows (28; --sequence pixels: 784, derived by the CLI), an
# event dataset's bins (--steps). These are smoke recipes (README: Temporal datasets), not tuned.
_TEMPORAL_LR = {"default": 5e-4, "dfa": 2e-3, "f3": 2e-3, "ff": 1e-3, "shallow": 1e-2}
RECIPES["sequential-fashion-mnist"] = {
    "hidden": (1000,), "epochs": 20, "batch_size": 128, "dv": 0.15, "encoding": "sequence",
    "lr": _TEMPORAL_LR, "rule_options": {"sigprop": {"readout_lr": 1e-3}, "pepita": {"F_scale": 0.5}},
}
_EVENTS = {"hidden": (256,), "epochs": 20, "batch_size": 64, "dv": 0.15, "encoding": "events", "lr": _TEMPORAL_LR,
           "rule_options": {"sigprop": {"readout_lr": 1e-3}}}
RECIPES["nmnist"] = {**_EVENTS, "steps": 15}  # 34x34x2 = 2312 inputs per step; ~300 ms recordings
RECIPES["dvs-gesture"] = {**_EVENTS, "steps": 20, "downsample": 4, "batch_size": 32}  # 128x128x2 -> 32x32x2 = 2048
RECIPES["shd"] = {**_EVENTS, "steps": 50}  # 700 channels; ~1 s recordings: 20 ms bins

# Convolutional recipes: strided convolutions (Loihi runs them as they are; no pooling), then the
# read-out. Each entry overrides its dataset's fully-connected recipe.
CONV_RECIPES: dict[str, dict] = {
    # 8x8 digits: small enough that CI trains, quantizes and verifies one on Lava in seconds.
    "digits": {"layers": "16c3s2,64", "steps": 8, "epochs": 30, "batch_size": 32,
               "lr": {"default": 2e-3, "shallow": 1e-2}, "rule_options": {"ff": {"label_scale": 4.0}}},
    "fashion-mnist": {"layers": "32c5s2,64c3s2", "steps": 10, "epochs": 20, "batch_size": 128,
                      "lr": {"default": 1e-3, "shallow": 1e-2}, "rule_options": {"ff": {"label": "planes"}}},
}
CONV_RECIPES["mnist"] = CONV_RECIPES["fashion-mnist"]

# Recurrent recipes: Dense layers with recurrent connections (``256r``), for data in time.
REC_RECIPES: dict[str, dict] = {
    # digits as an image (T steps of the same currents): small enough for CI to train, verify and export.
    "digits": {"layers": "64r", "steps": 8, "epochs": 30, "batch_size": 32, "lr": {"default": 2e-3, "shallow": 1e-2}},
    # one image row per step (T = 28): the recurrent layer carries what earlier rows showed.
    "sequential-fashion-mnist": {"layers": "256r", "epochs": 20, "batch_size": 128,
                                 "lr": {"default": 1e-3, "shallow": 1e-2}},
}

# --model NAME: the recipes that override a dataset's fully-connected one.
MODEL_RECIPES = {"conv": CONV_RECIPES, "rec": REC_RECIPES}


def recipe(dataset: str, rule: str, model: str = "fc") -> dict:
    """Flat config values for ``dataset`` trained with ``rule`` as ``model`` ('fc', 'conv' or 'rec'; an
    unknown dataset gives {})."""
    r = RECIPES.get(dataset)
    if r is None:
        return {}
    if model != "fc" and dataset not in MODEL_RECIPES.get(model, {}):
        which = "convolutional" if model == "conv" else "recurrent" if model == "rec" else repr(model)
        have = ", ".join(sorted(MODEL_RECIPES.get(model, {}))) or "no dataset"
        raise SpikepropError(f"--model {model}: {dataset} has no {which} recipe (recipes for {have}; give --layers "
                             "SPEC for your own stack)")
    if model != "fc":
        conv = MODEL_RECIPES[model][dataset]
        options = {rule_: {**r["rule_options"].get(rule_, {}), **conv.get("rule_options", {}).get(rule_, {})}
                   for rule_ in {*r["rule_options"], *conv.get("rule_options", {})}}
        r = {**r, **conv, "rule_options": options}
    out = {k: v for k, v in r.items() if k not in ("lr", "rule_options")}
    out["lr"] = r["lr"].get(rule, r["lr"]["default"])
    out["rule_options"] = dict(r["rule_options"].get(rule, {}))
    if model != "fc":
        out["model"] = model
    return out
