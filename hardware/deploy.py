"""Deployment: the one module in ``hardware/`` that reads run directories and the training harness.

Everything the CLI does with hardware goes through here:

    load_deployment(RUN_DIR) -> Deployment     config, dataset, trained network, deployed input, calibration set
    quantize_deployment(dep) -> (FixedNetwork, Calibration)      (the calibration is computed once)
    EXPORTERS[target].write(RUN_DIR, OUT, dt)  ``spikeprop export --to lava|nir``
    evaluate_run(RUN_DIR)                      ``spikeprop evaluate --backend loihi`` (the emulator)
    verify_run(RUN_DIR)                        ``spikeprop verify``: four backends, spike for spike
    import_run(FILE.nir, RUN_DIR)              ``spikeprop import``

The path of the data from ``spikeprop verify RUN`` to Lava: ``load_deployment`` (config.json,
checkpoint, dataset; the deployed input is the rule's ``deploy_input``, a pure function of its
options, so no rule is built) -> ``quantize_deployment`` (one calibration pass) -> the encoded test
input ``x`` [T, B, n_in], drawn once -> ``hardware.backends.run`` for each backend on that same
``x`` -> the comparison of their time-major spikes. Below this module, ``hardware`` knows
networks and tensors, not run directories.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from hardware import backends, lava, loihi, nir
from hardware.loihi import Calibration, FixedNetwork
from models import recipe
from spikeprop import SpikepropError, runs
from spikeprop.config import TrainConfig
from spikeprop.data import Dataset, load
from spikeprop.encoders import Encoder
from spikeprop.evaluate import accuracy
from spikeprop.network import Network
from spikeprop.neurons import LIFParams
from spikeprop.rules import RULES
from spikeprop.train import build, checkpoint_state, evaluation_encoder, load_network, start_run

CALIBRATION_SAMPLES = 512  # training samples whose peaks set each layer's exponent
EVAL_BATCH = 500  # emulator batch: float64 state of 500 x 1000 neurons is 4 MB per tensor
VERIFY = "verify.json"
DEFAULT_LIMIT = 100


class Deployment(NamedTuple):
    """What a trained run deploys: its config, dataset and float network (on the CPU), the
    encoder of the evaluation draws, ``deploy_input(x, encoder)`` (the input [T, B, n_in] the
    network's read-out path sees for intensities x), and the encoded calibration samples."""

    config: TrainConfig
    dataset: Dataset
    net: Network
    encoder: Encoder
    deploy_input: Callable[[torch.Tensor, Encoder], torch.Tensor]
    calibration_x: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The deployed input of intensities ``x`` with the evaluation encoder."""
        return self.deploy_input(x, self.encoder)

    @property
    def graded_input(self) -> bool:
        return not self.encoder.binary

    def source(self, run_dir: str | Path) -> dict:
        c = self.config
        return {"run_dir": str(run_dir), "dataset": c.dataset, "rule": c.rule, "neurons": c.neurons,
                "quantize": c.quantize, "seed": c.seed}


def load_deployment(run_dir: str | Path) -> Deployment:
    """A trained run as a Deployment. Calibration: the first CALIBRATION_SAMPLES training samples,
    encoded as in training (spikes from the seed's "calibration" sub-stream)."""
    config, ds, net = load_network(run_dir, device="cpu")
    rule_cls, options, n_classes = RULES[config.rule], dict(config.rule_options), ds.n_classes

    def deploy_input(x: torch.Tensor, encoder: Encoder) -> torch.Tensor:
        return rule_cls.deploy_input(options, x, encoder, n_classes)

    x_cal = deploy_input(ds.intensities(ds.train_x[:CALIBRATION_SAMPLES]), evaluation_encoder(config, "calibration"))
    return Deployment(config, ds, net, evaluation_encoder(config), deploy_input, x_cal)


def quantize_deployment(dep: Deployment, run_dir: str | Path = "") -> tuple[FixedNetwork, Calibration]:
    """The Loihi-2 integers of a deployment and the calibration they were chosen on (computed once).
    Direct encoding sends the dataset's stored integers (input_scale = the dataset's scale), so the
    input is exact."""
    cal = loihi.calibrate(loihi.deployed(dep.net), dep.calibration_x)
    graded = dep.graded_input
    fnet = loihi.quantize(dep.net, dep.calibration_x, encoding=dep.config.encoding, graded_input=graded,
                          input_scale=float(dep.dataset.scale) if graded else 1.0, source=dep.source(run_dir),
                          calibration=cal)
    return fnet, cal


# --------------------------------------------------------------------------------------------
# Exporters: ``spikeprop export --to TARGET`` takes its choices from this table


@dataclass(frozen=True)
class Exporter:
    help: str
    suffix: str
    write: Callable[..., list[str]]  # (run_dir, out, *, dt) -> lines to print


def export_lava(run_dir: str | Path, out: str | Path, *, dt: float | None = None) -> list[str]:
    """Quantize, check that it fits Loihi 2, save (``hardware.loihi.save``); the lines to print."""
    if dt is not None:
        raise SpikepropError("--dt belongs to --to nir (a Lava network is discrete: it has no time step in seconds)")
    fnet, cal = quantize_deployment(load_deployment(run_dir), run_dir)
    problems = loihi.check_fit(fnet, cal)
    if problems:
        raise SpikepropError("the network does not fit Loihi 2: " + "; ".join(problems))
    loihi.save(fnet, out)
    res = loihi.resources(fnet)
    return [f"wrote {out}: Loihi-2 fixed point, {len(fnet.layers)} LIF layer(s) + read-out, weight_exp "
            f"{[la.weight_exp for la in fnet.layers]}, vth {[la.vth for la in fnet.layers]}; {res['cores']} cores, "
            f"{res['neurons']} neurons, {res['synapses']} synapses",
            *(f"warning: {w}" for w in loihi.margin_warnings(fnet, cal))]


def export_nir(run_dir: str | Path, out: str | Path, *, dt: float | None = None) -> list[str]:
    """The trained float network as a NIR graph, with its T, dataset, encoding and rule as metadata."""
    dt = nir.DEFAULT_DT if dt is None else dt
    dep = load_deployment(run_dir)
    c = dep.config
    extra = {"dataset": c.dataset, "encoding": c.encoding, "rule": c.rule, "neurons": c.neurons}
    graph = nir.export_nir(dep.net, out, dt=dt, steps=c.steps, metadata=extra)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    return [f"wrote {out}: NIR graph {' -> '.join(kinds)} (dt={dt:g} s, forward Euler, reset to 0, no delay)"]


EXPORTERS = {
    "lava": Exporter("Loihi-2 integers for hardware.lava (.npz)", ".npz", export_lava),
    "nir": Exporter("a NIR graph (HDF5, .nir)", ".nir", export_nir),
}


def export_run(run_dir: str | Path, out: str | Path, target: str, *, dt: float | None = None) -> list[str]:
    if target not in EXPORTERS:
        raise SpikepropError(f"--to {target} is not supported (choose from: {', '.join(sorted(EXPORTERS))})")
    return EXPORTERS[target].write(run_dir, out, dt=dt)


# --------------------------------------------------------------------------------------------
# Evaluation through the emulator, and verification against Lava


@torch.no_grad()
def evaluate_run(run_dir: str | Path, limit: int | None = None) -> tuple[float, int, FixedNetwork]:
    """Test accuracy of the fixed-point network through the emulator: (accuracy, samples, fnet)."""
    dep = load_deployment(run_dir)
    fnet, _ = quantize_deployment(dep, run_dir)
    ds = dep.dataset

    def predict(x: torch.Tensor) -> torch.Tensor:
        return backends.run("emulator", fnet, dep.encode(x)).scores

    acc = accuracy(predict, ds, "test", batch_size=EVAL_BATCH, limit=limit)
    return acc, len(ds.test_x) if limit is None else min(limit, len(ds.test_x)), fnet


def identical_trains(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of (sample, neuron) pairs whose whole spike train is the same; a, b: [T, B, n]."""
    return float((a == b).all(0).to(torch.float64).mean())


@torch.no_grad()
def verify_run(run_dir: str | Path, limit: int = DEFAULT_LIMIT, timeout: float | None = None) -> dict:
    """Run the four backends on the first ``limit`` test samples; write RUN_DIR/verify.json; return it."""
    dep = load_deployment(run_dir)
    fnet, cal = quantize_deployment(dep, run_dir)
    ds, config = dep.dataset, dep.config
    n = min(limit, len(ds.test_x))
    y = ds.test_y[:n]
    # [T, N, n_in], drawn once; direct encoding's stays a stride-0 view (no T copies of the input)
    xin = dep.encode(ds.intensities(ds.test_x[:n]))
    net64 = copy.deepcopy(dep.net).double()
    flt = lava.floating_pt_network(net64, fnet.steps, graded_input=fnet.graded_input, input_bits=fnet.input_bits)
    results = {"float": backends.run("float", net64, xin, record=True),
               "emulator": backends.run("emulator", fnet, xin, record=True),
               "lava_fixed_pt": backends.run("lava_fixed_pt", fnet, xin, record=True, timeout=timeout),
               "lava_floating_pt": backends.run("lava_floating_pt", flt, xin, record=True, timeout=timeout)}
    emu, fixed = results["emulator"], results["lava_fixed_pt"]
    emu_vs_fixed = [identical_trains(a, b) for a, b in zip(emu.spikes, fixed.spikes)]
    float_vs_floating = [identical_trains(a, b) for a, b in zip(results["float"].spikes, results["lava_floating_pt"].spikes)]
    readout_equal = bool(torch.equal(emu.v_out, fixed.v_out))
    problems = loihi.check_fit(fnet, cal)
    report = {
        "samples": n, "steps": fnet.steps, "dataset": config.dataset, "encoding": config.encoding,
        "quantize": config.quantize,
        "backends": {name: _backend_row(r, y, n) for name, r in results.items()},
        "identical_spike_trains": {"emulator_vs_lava_fixed_pt": emu_vs_fixed,
                                   "float_vs_lava_floating_pt": float_vs_floating},
        "readout_v_identical_emulator_vs_lava_fixed_pt": readout_equal,
        "bit_exact": readout_equal and all(f == 1.0 for f in emu_vs_fixed),
        "resources": loihi.resources(fnet),
        "fits_loihi2": not problems,
        "fit_problems": problems,
        "margins": loihi.margins(fnet, cal),
        "margin_warnings": loihi.margin_warnings(fnet, cal),
        "layers": [la.scalars() for la in fnet.layers], "readout": fnet.readout.scalars(),
    }
    runs.write_json(Path(run_dir) / VERIFY, report)
    return report


def _backend_row(r: backends.Result, y: torch.Tensor, n: int) -> dict:
    wall = r.timing["wall_s"]
    out = {"accuracy": float((r.scores.argmax(1) == y).to(torch.float64).mean()), "wall_s": wall,
           "ms_per_sample": 1e3 * wall / n}
    lava_timing = {k: v for k, v in r.timing.items() if k != "wall_s"}
    if lava_timing:
        out["lava_timing"] = lava_timing
    return out


def format_report(r: dict) -> str:
    """The readable table ``spikeprop verify`` prints."""
    names = {"float": "float network (float64)", "emulator": "fixed-point emulator",
             "lava_fixed_pt": "Lava CPU, fixed_pt", "lava_floating_pt": "Lava CPU, floating_pt"}
    lines = [f"{r['samples']} {r['dataset']} test samples, T={r['steps']}, encoding {r['encoding']}, "
             f"quantize {r['quantize']}", "",
             f"{'backend':<30} {'accuracy':>9} {'wall s':>8} {'ms/sample':>10}"]
    for key, b in r["backends"].items():
        lines.append(f"{names[key]:<30} {b['accuracy']:>9.4f} {b['wall_s']:>8.2f} {b['ms_per_sample']:>10.2f}")
    ident = r["identical_spike_trains"]
    lines += ["", f"{'identical spike trains':<30} " + " ".join(f"{'layer ' + str(i + 1):>9}"
                                                                 for i in range(len(ident['emulator_vs_lava_fixed_pt'])))]
    for key, label in (("emulator_vs_lava_fixed_pt", "emulator vs Lava fixed_pt"),
                       ("float_vs_lava_floating_pt", "float vs Lava floating_pt")):
        lines.append(f"{label:<30} " + " ".join(f"{f:>9.4f}" for f in ident[key]))
    same_v = r["readout_v_identical_emulator_vs_lava_fixed_pt"]
    lines.append(f"{'read-out v, emulator vs fixed_pt':<30} {'identical' if same_v else 'DIFFERENT'}")
    res = r["resources"]
    lines += ["", f"Loihi 2 resources: {res['cores']} cores ({res['chips']} chip), {res['neurons']} neurons, "
                  f"{res['synapses']} synapses  (" + ", ".join(f"{row['layer']}: {row['neurons']} neurons, "
                                                                f"{row['synapses']} synapses, {row['cores']} cores"
                                                                for row in res["layers"]) + ")"]
    if r["fit_problems"]:
        lines.append("does NOT fit Loihi 2: " + "; ".join(r["fit_problems"]))
    for w in r.get("margin_warnings", []):
        lines.append(f"warning: {w}")
    lines.append("bit-exact: emulator == Lava fixed_pt" if r["bit_exact"] else
                 "MISMATCH: the emulator and Lava fixed_pt disagree")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Import: a NIR graph into a run directory

INPUT_SIZES = {64: "digits", 784: "fashion-mnist"}  # the default dataset for an input size
DATASET_SHAPES = {"digits": (64, 10), "fashion-mnist": (784, 10), "mnist": (784, 10)}  # (features, classes)


def _shared_params(net: Network) -> LIFParams:
    """One LIFParams for all layers (the run format has one), equalising thresholds by scaling layers."""
    first = net.params[0]
    for layer, p in enumerate(net.params):
        if (p.du, p.dv) != (first.du, first.dv):
            raise SpikepropError(f"layer {layer + 1} has du={p.du}, dv={p.dv} but layer 1 has du={first.du}, "
                                 f"dv={first.dv}; a run directory keeps one (du, dv) for all layers")
    with torch.no_grad():
        for layer, p in enumerate(net.params):
            if p.vth != first.vth:  # scaling a layer's W and bias scales its v: same spikes
                net.weights[layer].mul_(first.vth / p.vth)
                net.biases[layer].mul_(first.vth / p.vth)
    net.params = tuple(first for _ in net.params)
    return first


def import_run(path: str | Path, run_dir: str | Path, *, dataset: str | None = None, data_dir: str | None = None,
               steps: int | None = None, encoding: str | None = None, rule: str | None = None,
               dt: float | None = None) -> dict:
    """Write a run directory (config.json, checkpoint.pt, empty metrics) holding the network of a NIR file.

    Settings the graph cannot carry come from the arguments, then from the graph's metadata (a
    spikeprop export writes steps, dataset, encoding and rule), then from the dataset's recipe;
    the dataset defaults by input size (64: digits, 784: fashion-mnist). The checkpoint is at
    epoch 0 with a fresh rule state, so ``evaluate``, ``export`` and ``train --resume`` accept it.
    Returns the resolved config as a dict.
    """
    graph = nir.load_nir(path)
    net = nir.from_nir(graph, dt=dt)
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    n_in, n_out = net.sizes[0], net.sizes[-1]
    dataset = dataset or meta.get("dataset") or INPUT_SIZES.get(n_in)
    if dataset is None:
        raise SpikepropError(f"the graph takes {n_in} inputs, which matches no built-in dataset's default; "
                             "give --dataset")
    if dataset not in DATASET_SHAPES:
        raise SpikepropError(f"the graph's metadata names dataset {dataset!r}, which spikeprop does not know; give --dataset")
    # Checks that need no data come first: a wrong dataset is an error before any file is read.
    if DATASET_SHAPES[dataset] != (n_in, n_out):
        raise SpikepropError(f"the graph maps {n_in} inputs to {n_out} classes but {dataset} has "
                             f"{DATASET_SHAPES[dataset][0]} features and {DATASET_SHAPES[dataset][1]} classes")
    rule = rule or (meta.get("rule") if meta.get("rule") in RULES else "bptt")
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise SpikepropError(f"{run_dir} exists and is not an empty directory; pick another --out")
    params = _shared_params(net)
    base = recipe(dataset, rule)
    meta_steps = meta.get("steps")
    if steps is None and meta_steps is not None:
        try:
            steps = int(meta_steps)
        except (TypeError, ValueError):
            raise SpikepropError(f"the graph's metadata steps {meta_steps!r} is not an integer; give --steps") from None
    values = {
        **base, "rule": rule, "dataset": dataset, "data_dir": data_dir,
        "neurons": "if" if params.dv == 0 else "lif", "du": params.du, "dv": params.dv, "vth": params.vth,
        "hidden": list(net.sizes[1:-1]),
        "steps": steps if steps is not None else base.get("steps", TrainConfig.steps),
        "encoding": encoding or meta.get("encoding") or "direct",
    }
    config = TrainConfig.from_dict(values, source=f"the settings of {path}")
    ds = load(dataset, data_dir)
    built, rule_obj, _ = build(config, ds)
    built.load_state_dict(net.state_dict())
    with runs.RunLock(run_dir):
        if any(e.name != runs.LOCK for e in run_dir.iterdir()):
            raise SpikepropError(f"{run_dir} is not empty; pick another --out")
        start_run(run_dir, config)
        runs.save_checkpoint(run_dir, checkpoint_state(config, built, rule_obj, epoch=0, train_time_s=0.0,
                                                       samples_seen=0, metrics=[]))
        runs.write_metrics(run_dir, [])
        source = {"nir_file": str(path), "dt": float(meta.get("dt", nir.DEFAULT_DT)) if dt is None else dt,
                  "graph_metadata": {k: str(v) for k, v in meta.items()}}
        runs.write_json(run_dir / "import.json", source)
    return config.to_dict()
