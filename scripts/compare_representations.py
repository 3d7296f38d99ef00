"""Do forward-only rules give sparse, class-specific spiking representations? (README: Representation analysis)

Tosato et al. ("Emergent representations in networks trained with the Forward-Forward
algorithm") found that Forward-Forward organises ANN hidden layers into
sparse, almost disjoint class ensembles, unlike backpropagation. This script trains sigprop, ff
(when registered) and bptt LIF networks of the same sizes with ``spikeprop train`` (the dataset's
recipe for everything not given here), runs ``spikeprop analyze`` on each, and writes a markdown
table and a figure comparing them::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/compare_representations.py \\
        --dataset fashion-mnist --hidden 256,256,256 --epochs 5 --out-dir runs/compare-fmnist

``--reuse`` takes the runs already in ``--out-dir`` instead of training them again.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from spikeprop import runs
from spikeprop.analysis import analyze, analyze_run, json_safe
from spikeprop.cli import main as spikeprop_main
from spikeprop.rules import RULES

COLORS = {"sigprop": "tab:blue", "ff": "tab:green", "ff+label": "yellowgreen", "bptt": "tab:red"}


def fmt(x, digits=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def ff_with_true_label(run_dir: Path, limit: int) -> dict:
    """FF's hidden activity when the input carries the sample's true label (its positive data)."""
    from spikeprop.train import load_run

    config, ds, net, rule, _ = load_run(run_dir)
    summary, _ = analyze(net, rule, ds, limit=limit, device=config.device, drive=lambda x, y: rule.encode(x, y))
    summary = json_safe(summary)
    runs.write_json(run_dir / "analysis-true-label.json", summary)
    return summary


def train_run(rule: str, args, run_dir: Path) -> None:
    if args.reuse and (run_dir / runs.SUMMARY).is_file():
        print(f"{rule}: reusing {run_dir}")
        return
    argv = ["train", "--rule", rule, "--dataset", args.dataset, "--hidden", args.hidden, "--steps", str(args.steps),
            "--epochs", str(args.epochs), "--seed", str(args.seed), "--out", str(run_dir), "--overwrite",
            "--no-progress"]
    if spikeprop_main(argv) != 0:
        raise SystemExit(f"training {rule} failed")


def table(results: dict[str, dict], summaries: dict[str, dict]) -> str:
    lines = ["| rule | test acc. | layer | firing rate | silent | Hoyer (counts) | Hoyer (voltage) | "
             "ensemble size (counts / voltage) | ensemble overlap (voltage, Jaccard) | SynOps / sample |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rule, res in results.items():
        for lay in res["layers"]:
            first, ens = lay["layer"] == 1, lay["ensembles"]
            synops = f"{res['synops_per_sample'] / 1e3:.0f}k" if first else ""
            lines.append(
                f"| {rule if first else ''} | {fmt(summaries[rule]['test_accuracy']) if first else ''} | {lay['layer']} | "
                f"{fmt(lay['firing_rate'])} | {fmt(lay['silent_fraction'], 2)} | {fmt(lay['hoyer_counts'])} | "
                f"{fmt(lay['hoyer_voltage'])} | {fmt(ens['counts']['size_mean'], 1)} / {fmt(ens['voltage']['size_mean'], 1)} "
                f"of {lay['neurons']} | {fmt(ens['voltage']['jaccard_mean'])} | {synops} |")
    return "\n".join(lines)


def figure(results: dict[str, dict], summaries: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = (("hoyer_counts", "Hoyer sparsity of spike counts"), ("hoyer_voltage", "Hoyer sparsity of voltage (rectified)"),
              ("firing_rate", "firing rate (spikes / neuron / step)"), ("jaccard", "voltage class-ensemble overlap (mean Jaccard)"))
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.0))
    n_rules = len(results)
    width = 0.8 / n_rules
    for ax, (key, name) in zip(axes, panels):
        for k, (rule, res) in enumerate(results.items()):
            layers = res["layers"]
            x = np.arange(1, len(layers) + 1) - 0.4 + width * (k + 0.5)
            vals = [lay["ensembles"]["voltage"]["jaccard_mean"] if key == "jaccard" else lay[key] for lay in layers]
            vals = [np.nan if v is None else v for v in vals]
            acc = summaries[rule]["test_accuracy"]
            ax.bar(x, vals, width, color=COLORS.get(rule), label=f"{rule} ({100 * acc:.1f} % test)")
        ax.set_xticks(range(1, len(next(iter(results.values()))["layers"]) + 1))
        ax.set_xlabel("hidden layer")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, 1 if key != "firing_rate" else None)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", default="sigprop,ff,bptt")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--hidden", default="256,256,256")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=1000, help="test samples analysed per run")
    p.add_argument("--out-dir", default="runs/compare-representations")
    p.add_argument("--figure", help="also copy the figure here (e.g. docs/representations.png)")
    p.add_argument("--reuse", action="store_true", help="take runs already in --out-dir")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out_dir)
    results, summaries = {}, {}
    for rule in [r.strip() for r in args.rules.split(",") if r.strip()]:
        if rule not in RULES:
            print(f"{rule}: not registered in this checkout (rules: {', '.join(sorted(RULES))}); skipped")
            continue
        run_dir = out / rule
        train_run(rule, args, run_dir)
        results[rule] = analyze_run(run_dir, limit=args.limit)
        summaries[rule] = runs.read_json(run_dir / runs.SUMMARY)
        if rule == "ff":  # FF's goodness decision sees the image with a label written in: analyse that too
            results["ff+label"], summaries["ff+label"] = ff_with_true_label(run_dir, args.limit), summaries[rule]
    if not results:
        print("no rule to compare", file=sys.stderr)
        return 1
    settings = (f"{args.dataset}, hidden {args.hidden}, T={args.steps}, {args.epochs} epochs, seed {args.seed}, "
                f"metrics on the first {args.limit} test samples (Hoyer and ensembles: the correctly classified ones)")
    md = f"{settings}\n\n{table(results, summaries)}\n"
    (out / "comparison.md").write_text(md)
    figure(results, summaries, out / "comparison.png", settings.split(", metrics")[0])
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        Path(args.figure).write_bytes((out / "comparison.png").read_bytes())
    print(md)
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
