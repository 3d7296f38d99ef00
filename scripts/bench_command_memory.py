#!/usr/bin/env python
"""Peak memory of whole ``spikeprop`` commands against T, beside the training step alone.

``scripts/bench_memory.py`` measures one training step in isolation. A user runs commands:
this script runs each of them as a fresh child process on the Fashion-MNIST 784-1000-10
network (the recipe: direct encoding, batch 128) and reads the child's peak resident memory
from ``os.wait4`` (Linux: the largest peak of the child and of every descendant it waited for,
so ``verify``'s Lava processes count too), at each T:

    train --epochs 1            training, the per-epoch test evaluation (rule.predict) and the summary
                                (evaluate.activity: firing rates and SynOps on 1000 test samples)
    evaluate                    the float network on the test set
    evaluate --backend loihi    quantization (calibration on 512 training samples) and the emulator
    analyze                     per-sample activity, sample 0's raster and SynOps on 1000 test samples
    verify --limit L            float, emulator, Lava fixed_pt and floating_pt on L test samples

and, beside them, the training step alone (``bench_memory.py``'s worker, same T, fresh process).

    .venv/bin/python scripts/bench_command_memory.py                                   # T = 25, 400; the full recipe
    .venv/bin/python scripts/bench_command_memory.py --train-samples 3000 --verify-limit 2   # faster

``--train-samples N`` trains on the first N training images (written as IDX files with
``spikeprop.data.write_idx`` into the work directory; the test set stays whole, so every command
after ``train`` sees the same data as with the full set). Memory does not depend on N beyond the
dataset's own 47 MB; the time does. ``verify`` steps Lava about 1 ms per time step and reads
every hidden spike back (~15 µs per value), about 7 s per sample and Lava tag at T=400 with 1000
neurons, hence the small default ``--verify-limit``.

Check (printed; the exit status is 1 when one fails): for every command and for the training
step alone, the peak at the largest T is at most 1.2x the peak at the smallest T (--rule sigprop;
``--rule bptt`` reports the baseline, whose memory legitimately grows with T, and checks nothing).
Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("train", "evaluate", "evaluate-loihi", "analyze", "verify")
STEP_ALONE = "training step alone"
MAX_RATIO = 1.2  # the flat-memory target: peak at the largest T over the peak at the smallest T
STEP_BATCHES = 3  # timed batches of the step-alone worker (bench_memory.py: peak memory is reached in one)


def run_child(argv: list[str], log: Path) -> tuple[float, float]:
    """Run ``argv`` as a fresh child (stdout and stderr to ``log``); return (peak RSS MiB, wall s).

    Raises SystemExit with the log's tail when the child fails."""
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"failed (exit status {proc.returncode}): {' '.join(argv)}\n{tail}")
    return usage.ru_maxrss / 1024.0, wall  # Linux reports ru_maxrss in KiB


def subset(source: str | None, n_train: int, out: Path) -> Path:
    """The first ``n_train`` Fashion-MNIST training images and the whole test set, as IDX files in ``out``."""
    sys.path.insert(0, str(ROOT))
    from spikeprop.data import IDX_FILES, load, write_idx

    ds = load("fashion-mnist", source)
    out.mkdir(parents=True, exist_ok=True)
    side = int(round(ds.n_features ** 0.5))
    arrays = {"train_images": ds.train_x[:n_train].numpy().reshape(-1, side, side),
              "train_labels": ds.train_y[:n_train].numpy(),
              "test_images": ds.test_x.numpy().reshape(-1, side, side), "test_labels": ds.test_y.numpy()}
    for key, stem in IDX_FILES.items():
        write_idx(out / stem, arrays[key])
    return out


def command_argv(command: str, run_dir: Path, T: int, rule: str, data_dir: str | None, verify_limit: int) -> list[str]:
    cli = [sys.executable, "-m", "spikeprop"]
    if command == "train":
        data = ["--data-dir", data_dir] if data_dir else []
        return [*cli, "train", "--dataset", "fashion-mnist", *data, "--rule", rule, "--epochs", "1", "--steps", str(T),
                "--out", str(run_dir), "--overwrite", "--no-progress"]
    if command == "evaluate":
        return [*cli, "evaluate", str(run_dir)]
    if command == "evaluate-loihi":
        return [*cli, "evaluate", str(run_dir), "--backend", "loihi"]
    if command == "analyze":
        return [*cli, "analyze", str(run_dir)]
    if command == "verify":
        return [*cli, "verify", str(run_dir), "--limit", str(verify_limit)]
    raise ValueError(f"unknown command '{command}' (choose from: {', '.join(COMMANDS)})")


def step_alone(rule: str, T: int, log: Path) -> tuple[float, float]:
    """bench_memory.py's worker: the training step alone, same network and batch, fresh process."""
    argv = [sys.executable, str(ROOT / "scripts" / "bench_memory.py"), "--worker", rule, "--steps", str(T),
            "--batches", str(STEP_BATCHES)]
    return run_child(argv, log)


def label(command: str, verify_limit: int) -> str:
    names = {"train": "train --epochs 1", "evaluate": "evaluate", "evaluate-loihi": "evaluate --backend loihi",
             "analyze": "analyze", "verify": f"verify --limit {verify_limit}"}
    return names.get(command, command)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="25,400", help="comma-separated T values (default: 25,400)")
    p.add_argument("--rule", default="sigprop", help="learning rule (default: sigprop; bptt: the baseline, no check)")
    p.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated subset of {', '.join(COMMANDS)}")
    p.add_argument("--data-dir", help="directory of the Fashion-MNIST IDX files (default: spikeprop's own search)")
    p.add_argument("--train-samples", type=int, help="train on the first N training images only (faster)")
    p.add_argument("--verify-limit", type=int, default=3, help="test samples for verify (default: 3)")
    p.add_argument("--work-dir", help="where run directories and logs go (default: a temporary directory)")
    p.add_argument("--out", default="bench-out/command-memory.json")
    args = p.parse_args(argv)
    steps = sorted(int(s) for s in args.steps.split(",") if s.strip())
    commands = [c for c in args.commands.split(",") if c]
    unknown = sorted(set(commands) - set(COMMANDS))
    if unknown or not commands:
        p.error(f"--commands: unknown {', '.join(unknown)} (choose from: {', '.join(COMMANDS)})")
    if commands[0] != "train":
        p.error("--commands must start with train (the other commands read its run directory)")
    if args.train_samples is not None and args.train_samples < 1:
        p.error("--train-samples must be >= 1")
    if len(steps) < 2:
        p.error("--steps needs at least two values to compare")

    with tempfile.TemporaryDirectory(prefix="spikeprop-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data_dir = args.data_dir
        if args.train_samples is not None:
            data_dir = str(subset(args.data_dir, args.train_samples, work / "data"))
        print(f"Fashion-MNIST 784-1000-10, rule {args.rule}, 1 epoch on "
              f"{args.train_samples or 'all'} training images; T = {', '.join(map(str, steps))}", flush=True)
        rows = []
        for T in steps:
            run_dir = work / f"run-T{T}"
            for command in commands:
                argv_c = command_argv(command, run_dir, T, args.rule, data_dir, args.verify_limit)
                peak, wall = run_child(argv_c, work / f"{command}-T{T}.log")
                rows.append({"command": label(command, args.verify_limit), "T": T, "peak_rss_mib": peak, "wall_s": wall,
                             "argv": argv_c[1:]})
                print(f"  T={T:4d}  {label(command, args.verify_limit):26s} peak RSS {peak:7.0f} MiB  ({wall:.0f} s)",
                      flush=True)
            peak, wall = step_alone(args.rule, T, work / f"step-T{T}.log")
            rows.append({"command": STEP_ALONE, "T": T, "peak_rss_mib": peak, "wall_s": wall})
            print(f"  T={T:4d}  {STEP_ALONE:26s} peak RSS {peak:7.0f} MiB  ({wall:.0f} s)", flush=True)

    lo, hi = steps[0], steps[-1]
    by = {(r["command"], r["T"]): r["peak_rss_mib"] for r in rows}
    names = [label(c, args.verify_limit) for c in commands] + [STEP_ALONE]
    checks = []
    print()
    print(f"| command | {' | '.join(f'T={T} peak MiB' for T in steps)} | T={hi} / T={lo} |")
    print("|---|" + "---:|" * (len(steps) + 1))
    for name in names:
        ratio = by[name, hi] / by[name, lo]
        print(f"| {name} | {' | '.join(f'{by[name, T]:.0f}' for T in steps)} | {ratio:.3f} |")
        if args.rule == "sigprop":
            checks.append({"check": f"{name}: peak T={hi} / T={lo} <= {MAX_RATIO}", "pass": ratio <= MAX_RATIO,
                           "value": round(ratio, 4)})
    print()
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rule": args.rule, "steps": steps, "train_samples": args.train_samples,
                               "verify_limit": args.verify_limit, "rows": rows, "checks": checks}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
