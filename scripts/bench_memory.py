#!/usr/bin/env python
"""Peak memory and training throughput against T: sigprop vs BPTT (ours) vs snnTorch BPTT.

Every configuration runs in a fresh process (so peak resident memory is its own), on the same
network (784-1000-10 LIF, batch 128, direct encoding, Adam) with the same synthetic inputs in
[0, 1], for a fixed number of training batches after one warm-up batch.

    .venv/bin/python scripts/bench_memory.py                       # T = 25, 100, 400; JSON + PNG in bench-out/
    .venv/bin/python scripts/bench_memory.py --steps 25,100 --batches 3

Checks (printed, and the exit status is 1 when one fails):
  sigprop peak memory at the largest T <= 1.2x its peak at the smallest T;
  at T = 100: sigprop samples/s >= 1.5x ours BPTT, and >= snnTorch BPTT (when snntorch is installed).

This is the training step alone; scripts/bench_command_memory.py measures whole commands
(train, evaluate, analyze, verify) the same way, beside this step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("sigprop", "bptt", "snntorch-bptt")
SIZES = (784, 1000, 10)
BATCH = 128


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(impl: str, T: int, batches: int, device: str, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(batches + 1, BATCH, SIZES[0], generator=g).to(device)
    ys = torch.randint(0, SIZES[-1], (batches + 1, BATCH), generator=g).to(device)
    if impl == "snntorch-bptt":
        step = _snntorch_step(T, device)
    else:
        step = _spikeprop_step(impl, T, device)
    baseline = current_rss_mib()
    step(xs[0], ys[0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(1, batches + 1):
        step(xs[i], ys[i])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"impl": impl, "T": T, "batches": batches, "batch_size": BATCH, "device": device,
           "samples_per_second": batches * BATCH / elapsed, "peak_rss_mib": rss_mib(), "rss_before_training_mib": baseline}
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _spikeprop_step(rule: str, T: int, device: str):
    import torch

    from spikeprop.config import TrainConfig
    from spikeprop.encoders import Encoder
    from spikeprop.network import Network
    from spikeprop.rules import RULES

    config = TrainConfig(rule=rule, steps=T, hidden=SIZES[1:-1], lr=5e-4, device=device)
    net = Network(SIZES, config.lif_params(), generator=torch.Generator().manual_seed(0)).to(device)
    rule_obj = RULES[rule](net, config, Encoder("direct", T))
    return rule_obj.train_step


def _snntorch_step(T: int, device: str):
    """snnTorch tutorial-5 style BPTT: Linear -> Leaky -> Linear -> Leaky, CE on the output membrane summed over t."""
    import snntorch as snn
    import torch
    from snntorch import surrogate
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(SIZES[0], SIZES[1]), nn.Linear(SIZES[1], SIZES[2])
            grad = surrogate.atan()
            self.lif1 = snn.Leaky(beta=0.85, spike_grad=grad, reset_mechanism="zero")
            self.lif2 = snn.Leaky(beta=0.85, spike_grad=grad, reset_mechanism="zero")

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            mems = []
            for _ in range(T):
                spk1, mem1 = self.lif1(self.fc1(x), mem1)
                _, mem2 = self.lif2(self.fc2(spk1), mem2)
                mems.append(mem2)
            return torch.stack(mems)

    net = Net().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        mem = net(x)
        loss = sum(loss_fn(mem[t], y) for t in range(T))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def run_all(steps: list[int], batches: int, device: str, threads: int, impls: list[str]) -> list[dict]:
    rows = []
    for T in steps:
        for impl in impls:
            cmd = [sys.executable, __file__, "--worker", impl, "--steps", str(T), "--batches", str(batches),
                   "--device", device, "--threads", str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"worker {impl} T={T} failed")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {impl:14s} T={T:4d}  {row['samples_per_second']:9.1f} samples/s  peak RSS {row['peak_rss_mib']:7.0f} MiB",
                  flush=True)
    return rows


def checks(rows: list[dict], steps: list[int]) -> list[tuple[str, bool, str]]:
    by = {(r["impl"], r["T"]): r for r in rows}
    out = []
    lo, hi = min(steps), max(steps)
    if ("sigprop", lo) in by and ("sigprop", hi) in by:
        ratio = by["sigprop", hi]["peak_rss_mib"] / by["sigprop", lo]["peak_rss_mib"]
        out.append((f"sigprop peak memory T={hi} / T={lo} <= 1.2", ratio <= 1.2, f"{ratio:.3f}"))
    if 100 in steps and ("sigprop", 100) in by:
        sp = by["sigprop", 100]["samples_per_second"]
        if ("bptt", 100) in by:
            r = sp / by["bptt", 100]["samples_per_second"]
            out.append(("sigprop / BPTT (ours) samples/s at T=100 >= 1.5", r >= 1.5, f"{r:.2f}"))
        if ("snntorch-bptt", 100) in by:
            r = sp / by["snntorch-bptt", 100]["samples_per_second"]
            out.append(("sigprop / snnTorch BPTT samples/s at T=100 >= 1", r >= 1.0, f"{r:.2f}"))
    return out


def table(rows: list[dict], steps: list[int], impls: list[str]) -> str:
    by = {(r["impl"], r["T"]): r for r in rows}
    head = "| rule | " + " | ".join(f"T={T} peak MiB | T={T} samples/s" for T in steps) + " |"
    sep = "|---|" + "---:|---:|" * len(steps)
    lines = [head, sep]
    for impl in impls:
        cells = []
        for T in steps:
            r = by.get((impl, T))
            cells += [f"{r['peak_rss_mib']:.0f}", f"{r['samples_per_second']:.0f}"] if r else ["-", "-"]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], impls: list[str], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for impl in impls:
        pts = sorted((r["T"], r["peak_rss_mib"], r["samples_per_second"]) for r in rows if r["impl"] == impl)
        if not pts:
            continue
        Ts = [p[0] for p in pts]
        ax1.plot(Ts, [p[1] for p in pts], "o-", label=impl)
        ax2.plot(Ts, [p[2] for p in pts], "o-", label=impl)
    ax1.set(xlabel="time steps T", ylabel="peak resident memory (MiB)", title="memory vs T", xscale="log")
    ax2.set(xlabel="time steps T", ylabel="training samples / s", title="throughput vs T", xscale="log", yscale="log")
    Ts = sorted({r["T"] for r in rows})
    for ax in (ax1, ax2):
        ax.set_xticks(Ts)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"784-1000-10 LIF, batch {BATCH}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="25,100,400", help="comma-separated T values (or one T with --worker)")
    p.add_argument("--batches", type=int, default=5, help="timed training batches per configuration")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--out", default="bench-out/memory.json")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(worker(args.worker, int(args.steps), args.batches, args.device, args.threads)))
        return 0
    steps = [int(s) for s in args.steps.split(",")]
    impls = [i for i in args.impls.split(",") if i]
    if "snntorch-bptt" in impls:
        try:
            import snntorch  # noqa: F401
        except ImportError:
            print("snntorch is not installed (pip install -e '.[bench]'); skipping snntorch-bptt")
            impls.remove("snntorch-bptt")
    print(f"784-1000-10 LIF, batch {BATCH}, {args.batches} timed batches per configuration, device {args.device}")
    rows = run_all(steps, args.batches, args.device, args.threads, impls)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = checks(rows, steps)
    out.write_text(json.dumps({"rows": rows, "checks": [{"check": c, "pass": ok, "value": v} for c, ok, v in results]},
                              indent=2) + "\n")
    plot(rows, impls, out.with_suffix(".png"))
    print()
    print(table(rows, steps, impls))
    print()
    for c, ok, v in results:
        print(f"{'PASS' if ok else 'FAIL'}  {c}: {v}")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
