#!/usr/bin/env python
"""This checkout against an earlier commit, side by side in one run: emulator speed and training throughput.

    .venv/bin/python scripts/bench_against.py BASE_REV [--run-dir RUN] [--rounds 3] [--batches 20]

A refactoring must not make anything slower. BASE_REV is checked out into a temporary git worktree;
each round runs, in both trees alternately (so that a change in the machine's load hits both):

- ``scripts/bench_lava.py RUN --lava-samples 2 --naive-samples 1`` (each tree's own): the emulator's
  milliseconds per test sample (1 torch thread, best of 7), on the same run directory;
- ``scripts/bench_memory.py --worker RULE --steps T`` (each tree's own) for sigprop and bptt at
  T = 10 and 100: training samples per second on 784-1000-10, batch 128.

RUN must be readable by both trees (default: a digits run trained by BASE_REV's code, which the
current code reads too). Prints the median of the rounds per tree and their ratio (current / base;
above 1 is faster for throughput, below 1 is faster for milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING = [("sigprop", 10), ("sigprop", 100), ("bptt", 10), ("bptt", 100)]


def in_tree(tree: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, check=True, **kw)


def emulator_ms(tree: Path, run_dir: Path, out: Path) -> float:
    in_tree(tree, "scripts/bench_lava.py", str(run_dir), "--lava-samples", "2", "--naive-samples", "1", "--out", str(out))
    return json.loads(out.read_text())["emulator"]["ms_per_sample"]


def samples_per_second(tree: Path, rule: str, T: int, batches: int) -> float:
    res = in_tree(tree, "scripts/bench_memory.py", "--worker", rule, "--steps", str(T), "--batches", str(batches),
                  "--threads", "1")
    return json.loads(res.stdout.strip().splitlines()[-1])["samples_per_second"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", metavar="BASE_REV")
    p.add_argument("--run-dir", help="a run directory both trees read (default: a digits run trained by BASE_REV)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=20, help="timed training batches per measurement")
    p.add_argument("--out", default="bench-out/against.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spikeprop-against-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True)
        try:
            run_dir = Path(args.run_dir).resolve() if args.run_dir else tmp / "run"
            if not args.run_dir:
                in_tree(base, "-m", "spikeprop", "train", "--out", str(run_dir), "--no-progress")
            trees = {"base": base, "current": ROOT}
            results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
            for r in range(args.rounds):
                for name, tree in trees.items():
                    row = results[name]
                    row.setdefault("emulator ms/sample", []).append(emulator_ms(tree, run_dir, tmp / f"{name}.json"))
                    for rule, T in TRAINING:
                        row.setdefault(f"{rule} T={T} samples/s", []).append(
                            samples_per_second(tree, rule, T, args.batches))
                print(f"round {r + 1}/{args.rounds} done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    summary = {}
    print(f"\n{'measure':<28} {'base ' + args.base:>16} {'current':>12} {'current/base':>13}")
    for key in results["base"]:
        b, c = statistics.median(results["base"][key]), statistics.median(results["current"][key])
        summary[key] = {"base": b, "current": c, "ratio": c / b, "rounds": {k: results[k][key] for k in results}}
        print(f"{key:<28} {b:>16.4g} {c:>12.4g} {c / b:>13.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
