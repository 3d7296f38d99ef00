"""Representation analysis: firing, sparsity (Hoyer), class ensembles, SynOps, and their figures.

The metrics follow Tosato et al., "Emergent representations in networks trained with the
Forward-Forward algorithm" (research/rules.md §3.3), on the activity of each hidden LIF layer of
a test sample:

- ``counts``: the spike count of every neuron over the T steps (non-negative);
- ``voltage``: the mean pre-reset membrane voltage over the T steps, **rectified**
  (``max(mean_t v, 0)``). Hoyer's measure needs non-negative activity; a voltage below rest is
  silence, as a ReLU's negative input is in the paper's ANNs. The fraction of neurons whose mean
  voltage is negative is reported as ``negative_voltage_fraction``.

Hoyer sparsity of an activity vector ``x`` of n units: ``(sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1)``,
1 for a single active unit, 0 for uniform activity. As in the authors' code it is averaged over
the correctly classified samples (overall and per class); a sample with no activity at all in a
layer has no defined sparsity and is left out of the mean (counted in ``empty_samples``); a
mean over no samples is NaN (``null`` in analysis.json).

Class ensembles (the paper's method 2), on the correctly classified samples, for both activities:
unit j belongs to class c's ensemble when its median activity over the samples of class c
exceeds the 90 % quantile of all activities of class c (all its samples and units). Overlaps are
pairwise intersections and Jaccard indices ``|E_a & E_b| / |E_a | E_b|`` (0 when both are
empty). Spike counts take only T + 1 values and saturate: when more than 10 % of a class's counts
sit at the largest count, no median can exceed the quantile and the count ensembles are empty.
That is a property of the measure on spikes, reported as is; the voltage ensembles (continuous,
like the paper's ReLU activities) are the ones the heatmap shows.

Firing rate (spikes per neuron per step), silent fraction (neurons that never fire on the
analysed samples) and SynOps per sample (``spikeprop.evaluate.synops``) use all analysed samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spikeprop import SpikepropError
from spikeprop.data import Dataset
from spikeprop.evaluate import synops_per_layer
from spikeprop.network import Network, simulate

ENSEMBLE_QUANTILE = 0.9  # Tosato et al.'s method 2 threshold
ANALYSIS = "analysis.json"
FIGURES = ("raster.png", "sparsity.png", "ensembles.png")


def hoyer(x: torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity of each row of ``x`` [..., n] (n >= 2, x >= 0); NaN for an all-zero row."""
    n = x.shape[-1]
    if n < 2:
        raise SpikepropError("Hoyer sparsity needs at least 2 units")
    x = x.to(torch.float64)
    l1, l2 = x.abs().sum(-1), x.norm(dim=-1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-300), torch.full_like(l1, float("nan")))
    return (math.sqrt(n) - ratio) / (math.sqrt(n) - 1)


def ensembles(counts: torch.Tensor, labels: torch.Tensor, n_classes: int, q: float = ENSEMBLE_QUANTILE) -> torch.Tensor:
    """Boolean membership [n_classes, n]: median over the class's samples > the class's q-quantile."""
    member = torch.zeros(n_classes, counts.shape[1], dtype=torch.bool)
    for c in range(n_classes):
        a = counts[labels == c].to(torch.float64)
        if len(a) == 0:
            continue
        member[c] = a.median(0).values > torch.quantile(a.flatten(), q)
    return member


def overlaps(member: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise intersection sizes and Jaccard indices of ensemble memberships [C, n]."""
    m = member.to(torch.float64)
    inter = m @ m.t()
    sizes = m.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    jaccard = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    return inter.numpy(), jaccard.numpy()


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


@torch.no_grad()
def collect(net: Network, drive: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            predict: Callable[[torch.Tensor], torch.Tensor] | None, ds: Dataset, limit: int = 1000, device: str = "cpu",
            batch_size: int = 250) -> dict:
    """Per-sample activity of the first ``limit`` test samples; ``drive(x, y)`` gives the network's input.

    predict: the class scores of intensities x; None: the read-out of the very pass analysed (so
    that under rate encoding the correctly classified samples are chosen on the spikes analysed).

    Returns counts and (unrectified) mean voltages per layer ([N, n] each), labels, predictions,
    the raster ([T, n] per layer) of sample 0, SynOps per sample and T.

    Memory: batches of ``batch_size`` samples; per batch the state and sums are O(batch · n),
    flat in T, plus sample 0's raster (O(T · n), recorded step by step, not as a batch-wide
    record) and whatever ``drive`` returns (a stride-0 view for direct encoding; rate encoding
    draws the batch's [T, batch, n_in] spikes up front).
    """
    x_all, y_all = ds.test_x[:limit], ds.test_y[:limit]
    if len(x_all) == 0:
        raise SpikepropError("no test samples to analyse (--limit must be >= 1)")
    counts = [[] for _ in range(net.n_layers)]
    mean_v = [[] for _ in range(net.n_layers)]
    preds, ops, raster, T, layer_ops = [], 0.0, None, None, None
    for i in range(0, len(x_all), batch_size):
        x = ds.intensities(x_all[i : i + batch_size]).to(device)
        xin = drive(x, y_all[i : i + batch_size].to(device))
        T = xin.shape[0]
        v_sum: dict[int, torch.Tensor] = {}
        # sample 0's spikes (first batch only), written step by step into one [T, n] buffer per
        # layer: one allocation, not T small ones between each step's large temporaries (those
        # fragment the heap: 370 MB at T=400 on 784-1000-10)
        rec0: list[torch.Tensor | None] | None = [None] * net.n_layers if raster is None else None

        def observe(layer, t, s_in, step, v_sum=v_sum, rec0=rec0, T=T):
            v_sum[layer] = step.v_pre if t == 0 else v_sum[layer] + step.v_pre
            if rec0 is not None:
                if t == 0:
                    rec0[layer] = torch.zeros(T, step.s[0].numel(), dtype=step.s.dtype)
                rec0[layer][t] = step.s[0].flatten()

        res = simulate(net, xin, observer=observe)
        if rec0 is not None:
            raster = rec0
        for layer in range(net.n_layers):
            counts[layer].append(res.counts[layer].cpu())
            mean_v[layer].append((v_sum[layer] / T).cpu())
        per = synops_per_layer(net, xin, res.counts)
        layer_ops = per if layer_ops is None else [a + b for a, b in zip(layer_ops, per)]
        ops += sum(per)
        preds.append((res.logits if predict is None else predict(x)).argmax(1).cpu())
    return {
        "counts": [torch.cat(c) for c in counts], "mean_v": [torch.cat(v) for v in mean_v],
        "labels": y_all.clone(), "predictions": torch.cat(preds), "raster": raster,
        "synops_per_sample": ops / len(x_all), "synops_per_layer": [o / len(x_all) for o in layer_ops], "steps": T,
    }


def _ensemble_summary(member: torch.Tensor) -> dict:
    inter, jac = overlaps(member)
    off = ~np.eye(len(member), dtype=bool)
    return {"sizes": [int(s) for s in member.sum(1)], "size_mean": float(member.sum(1).float().mean()),
            "intersections": inter.astype(int).tolist(), "jaccard": jac.round(4).tolist(),
            "jaccard_mean": float(jac[off].mean())}


def summarize(data: dict, n_classes: int) -> dict:
    """The metrics of the module docstring from ``collect``'s arrays (plain JSON values)."""
    labels, correct = data["labels"], data["predictions"] == data["labels"]
    T = data["steps"]
    layers = []
    for layer, (maps, mean_maps) in enumerate(zip(data["counts"], data["mean_v"])):
        counts, mean_v = maps.flatten(1), mean_maps.flatten(1)  # a feature map's neurons, in C-H-W order
        volt = mean_v.clamp_min(0.0)
        hc, hv = hoyer(counts[correct]), hoyer(volt[correct])
        lab = labels[correct]
        ens = {key: _ensemble_summary(ensembles(act[correct], lab, n_classes))
               for key, act in (("counts", counts), ("voltage", volt))}
        row = {
            "layer": layer + 1, "neurons": int(counts.shape[1]), "shape": list(maps.shape[1:]),
            "firing_rate": float(counts.mean()) / T,
            "silent_fraction": float((counts.sum(0) == 0).float().mean()),
            "negative_voltage_fraction": float((mean_v < 0).float().mean()),
            "hoyer_counts": _nanmean(hc), "hoyer_voltage": _nanmean(hv),
            "hoyer_counts_per_class": [_nanmean(hc[lab == c]) for c in range(n_classes)],
            "hoyer_voltage_per_class": [_nanmean(hv[lab == c]) for c in range(n_classes)],
            "empty_samples": {"counts": int(torch.isnan(hc).sum()), "voltage": int(torch.isnan(hv).sum())},
            "ensembles": ens,
        }
        if "synops_per_layer" in data:
            row["synops_per_sample"] = data["synops_per_layer"][layer + 1]  # the spikes of this layer, entering the next
        if maps.dim() == 4:  # a feature map: the same per channel (over its positions)
            per_channel = maps.flatten(2)  # [N, C, H·W]
            row["channels"] = {
                "firing_rate": [float(c) / T for c in per_channel.mean((0, 2))],
                "silent_fraction": [float(f) for f in (per_channel.sum(0) == 0).float().mean(1)],
                "hoyer_counts": [_nanmean(hoyer(per_channel[correct][:, ch])) if per_channel.shape[2] > 1 else float("nan")
                                 for ch in range(per_channel.shape[1])],
            }
        layers.append(row)
    return {
        "samples": len(labels), "correct": int(correct.sum()), "accuracy": float(correct.float().mean()),
        "steps": T, "synops_per_sample": data["synops_per_sample"], "layers": layers,
        "definitions": {
            "hoyer": "(sqrt(n) - |x|_1/|x|_2) / (sqrt(n) - 1), mean over correctly classified samples; "
                     "all-zero samples excluded",
            "voltage": "max(mean_t v_pre, 0): mean pre-reset membrane voltage, negative values set to 0",
            "ensembles": f"unit in class c's ensemble if its median activity (spike count; rectified voltage) over "
                         f"class c > the {ENSEMBLE_QUANTILE:.0%} quantile of all class-c activities (Tosato et al., "
                         "method 2); jaccard_mean over class pairs",
            "firing_rate": "spikes per neuron per step over all analysed samples",
            "synops": "per sample: every non-zero input or spike times the output neurons of the synapse it enters "
                      "(a convolution's: the windows that hold it times its channels); a layer's synops_per_sample "
                      "counts its spikes entering the next synapse",
            "channels": "a convolutional layer's metrics per channel, over its positions (Hoyer: per sample, over the "
                        "channel's positions)",
        },
    }


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write a figure atomically (a full disk or a killed process leaves the previous file)."""
    import io

    from spikeprop.files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def plot_raster(raster: list[torch.Tensor], label: int, path: Path) -> None:
    plt = _pyplot()
    L = len(raster)
    fig, axes = plt.subplots(1, L, figsize=(3.2 * L + 0.8, 4.2), squeeze=False)
    for layer, (ax, s) in enumerate(zip(axes[0], raster)):
        t, j = torch.nonzero(s, as_tuple=True)
        ax.scatter(t.numpy() + 1, j.numpy(), marker="|", s=30, color="black", linewidths=1.0)
        ax.set_xlim(0.5, s.shape[0] + 0.5)
        ax.set_ylim(-0.5, s.shape[1] - 0.5)
        ax.set_xlabel("time step")
        ax.set_title(f"layer {layer + 1}: {int(s.sum())} spikes, {int((s.sum(0) > 0).sum())}/{s.shape[1]} active",
                     fontsize=9)
    axes[0][0].set_ylabel("neuron")
    fig.suptitle(f"spike raster of test sample 0 (label {label})")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sparsity(summary: dict, path: Path) -> None:
    plt = _pyplot()
    layers = summary["layers"]
    idx = np.arange(1, len(layers) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    for offset, key, color, name in ((-0.15, "counts", "tab:blue", "spike counts"),
                                     (0.15, "voltage", "tab:orange", "voltage (rectified)")):
        a.bar(idx + offset, [lay[f"hoyer_{key}"] for lay in layers], 0.3, color=color, alpha=0.75, label=name)
        for i, lay in zip(idx, layers):
            per = [v for v in lay[f"hoyer_{key}_per_class"] if not math.isnan(v)]
            a.scatter(np.full(len(per), i + offset), per, s=10, color="black", zorder=3)
    a.set_ylim(0, 1)
    a.set_xticks(idx)
    a.set_xlabel("hidden layer")
    a.set_ylabel("Hoyer sparsity (dots: per class)")
    a.legend(fontsize=8, loc="upper right")
    a.set_title("sparsity")
    b.bar(idx - 0.15, [lay["firing_rate"] for lay in layers], 0.3, label="firing rate (spikes/neuron/step)")
    b.bar(idx + 0.15, [lay["silent_fraction"] for lay in layers], 0.3, label="silent neurons (fraction)")
    b.set_ylim(0, 1)
    b.set_xticks(idx)
    b.set_xlabel("hidden layer")
    b.legend(fontsize=8, loc="upper right")
    b.set_title("activity")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_ensembles(summary: dict, path: Path) -> None:
    plt = _pyplot()
    layers = summary["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(4.6 * len(layers), 4.2), squeeze=False)
    for ax, lay in zip(axes[0], layers):
        ens = lay["ensembles"]["voltage"]
        jac, inter = np.array(ens["jaccard"]), np.array(ens["intersections"])
        im = ax.imshow(jac, vmin=0, vmax=1, cmap="viridis")
        C = len(jac)
        for i in range(C):
            for j in range(C):
                ax.text(j, i, str(inter[i, j]), ha="center", va="center", fontsize=7,
                        color="black" if jac[i, j] > 0.6 else "white")
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        ax.set_xlabel("class")
        ax.set_ylabel("class")
        ax.set_title(f"layer {lay['layer']}: voltage class ensembles, Jaccard overlap\n"
                     "(numbers: shared units; diagonal: ensemble size)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def analyze(net: Network, rule, ds: Dataset, *, limit: int = 1000, device: str = "cpu",
            drive: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> tuple[dict, dict]:
    """(summary, raw arrays) of ``net`` driven as ``rule`` drives it at inference (or by ``drive(x, y)``)."""
    # The input the read-out path sees (FF: the neutral label in its label features).
    custom = drive is not None
    drive = drive or (lambda x, y: rule.deploy_input(rule.options, x, rule.encoder, net.sizes[-1]))
    # predictions from the analysed pass itself where the rule predicts through its read-out on that input
    same_pass = rule.predicts_by_readout and not custom
    data = collect(net, drive, None if same_pass else rule.predict, ds, limit=limit, device=device)
    return summarize(data, ds.n_classes), data


def analyze_run(run_dir: str | Path, *, limit: int = 1000, device: str | None = None) -> dict:
    """Analyse a run directory; writes ``analysis.json`` and the PNG figures into it."""
    from spikeprop import runs
    from spikeprop.train import load_run

    if limit < 1:
        raise SpikepropError("--limit must be >= 1")
    config, ds, net, rule, _ = load_run(run_dir, device=device)
    summary, data = analyze(net, rule, ds, limit=limit, device=config.device)
    run_dir = Path(run_dir)
    plot_raster(data["raster"], int(data["labels"][0]), run_dir / FIGURES[0])
    plot_sparsity(summary, run_dir / FIGURES[1])
    plot_ensembles(summary, run_dir / FIGURES[2])
    summary = {"rule": config.rule, "dataset": config.dataset, **summary, "files": [ANALYSIS, *FIGURES]}
    runs.write_json(run_dir / ANALYSIS, json_safe(summary))
    return summary


def json_safe(obj):
    """``obj`` with NaN (a metric with no defined value, e.g. Hoyer of a silent layer) as None."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
