#!/usr/bin/env python
"""Emulator vs Lava's CPU simulator, and Lava compile-once vs compile-per-sample, in one run.

    .venv/bin/python scripts/bench_lava.py [RUN_DIR] [--lava-samples 100] [--naive-samples 10] [--out FILE.json]

RUN_DIR defaults to runs/quickstart (the README's first command); without it a 5-epoch digits
run is trained into a temporary directory. Measured on the same quantized network and inputs:

- emulator: the whole test set through ``hardware.emulator.emulate`` in batches of 500 as
  ``spikeprop evaluate --backend loihi`` runs it, best of 7 (the machine is shared, and the
  fastest repeat is the one least disturbed by other jobs), with 1 torch thread and again with
  ``--threads`` (default: every core, as Lava's simulator uses them: one OS process per Lava
  process); the 1000x target is checked on the 1-thread figure;
- Lava fixed_pt, compile once: ``--lava-samples`` samples back to back in one compiled network
  (``hardware.lava.run``), reading back the read-out voltages (what evaluation needs); per
  sample = the whole call (child process, import, build, compile, run, read-back) / samples, and
  the steady part (run + read) / samples; again reading every hidden spike too (what ``verify``
  does: Lava's Var reads cost ~15 µs per value);
- Lava fixed_pt, naive: one build + compile + run per sample (``chunk=1``), ``--naive-samples``,
  read-out voltages only.

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware import lava  # noqa: E402
from hardware.deploy import EVAL_BATCH, load_deployment, quantize_deployment  # noqa: E402
from hardware.emulator import emulate  # noqa: E402
from spikeprop.cli import main as cli  # noqa: E402

EMULATOR_REPEATS = 7


def bench(run_dir: str, lava_samples: int, naive_samples: int, threads: int) -> dict:
    torch.set_num_threads(1)
    dep = load_deployment(run_dir)
    config, ds = dep.config, dep.dataset
    fnet, _ = quantize_deployment(dep, run_dir)
    x_all = dep.encode(ds.intensities(ds.test_x))  # as evaluate_run: direct encoding keeps a stride-0 time axis
    payload_all = fnet.payload(x_all)
    n_test = payload_all.shape[1]

    chunks = [payload_all[:, i : i + EVAL_BATCH] for i in range(0, n_test, EVAL_BATCH)]

    def emulate_all() -> torch.Tensor:  # as `spikeprop evaluate --backend loihi` does, in batches
        return torch.cat([emulate(fnet, c).v_out for c in chunks])

    emulate(fnet, payload_all[:, :10])  # warm-up
    emu_s = min(_timed(emulate_all) for _ in range(EMULATOR_REPEATS))
    torch.set_num_threads(threads)
    emu_mt_s = min(_timed(emulate_all) for _ in range(EMULATOR_REPEATS))
    torch.set_num_threads(1)
    emu_acc = float((emulate_all().argmax(1) == ds.test_y).float().mean())

    def lava_run(n: int, chunk: int, spikes: bool) -> dict:
        x = payload_all[:, :n].numpy()
        t0 = time.perf_counter()
        res = lava.run(fnet, x, chunk=chunk, record_spikes=spikes)
        wall = time.perf_counter() - t0
        emu_v = emulate(fnet, payload_all[:, :n]).v_out.numpy()
        steady = res.timing["run_s"] + res.timing["read_s"]
        return {"samples": n, "wall_s": wall, "ms_per_sample": 1e3 * wall / n, "samples_per_s": n / wall,
                "steady_ms_per_sample": 1e3 * steady / n, "timing": res.timing, "spikes_read": spikes,
                "identical_to_emulator": bool((res.v_out == emu_v).all())}

    readout_only = lava_run(lava_samples, lava_samples, spikes=False)
    with_spikes = lava_run(lava_samples, lava_samples, spikes=True)
    naive = lava_run(naive_samples, 1, spikes=False)
    emu_ms = 1e3 * emu_s / n_test
    return {
        "run_dir": str(run_dir), "dataset": config.dataset, "steps": fnet.steps,
        "sizes": [fnet.layers[0].n_in, *[la.n_out for la in fnet.layers], fnet.readout.n_out],
        "emulator": {"samples": n_test, "wall_s": emu_s, "ms_per_sample": emu_ms, "samples_per_s": n_test / emu_s,
                     "accuracy": emu_acc, "torch_threads": 1},
        "emulator_threads": {"samples": n_test, "wall_s": emu_mt_s, "ms_per_sample": 1e3 * emu_mt_s / n_test,
                             "samples_per_s": n_test / emu_mt_s, "torch_threads": threads},
        "lava_compile_once": readout_only,
        "lava_compile_once_with_spikes": with_spikes,
        "lava_compile_per_sample": naive,
        "speedup_emulator_vs_lava": readout_only["ms_per_sample"] / emu_ms,
        "speedup_emulator_vs_lava_steady": readout_only["steady_ms_per_sample"] / emu_ms,
        "speedup_emulator_vs_lava_with_spikes": with_spikes["ms_per_sample"] / emu_ms,
        "speedup_emulator_threads_vs_lava": readout_only["ms_per_sample"] / (1e3 * emu_mt_s / n_test),
        "speedup_compile_once_vs_per_sample": readout_only["samples_per_s"] / naive["samples_per_s"],
        "load_average": os.getloadavg(),
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def table(r: dict) -> str:
    rows = [("emulator (torch, 1 thread)", r["emulator"]),
            (f"emulator (torch, {r['emulator_threads']['torch_threads']} threads)", r["emulator_threads"]),
            ("Lava fixed_pt, compile once", r["lava_compile_once"]),
            ("  the same, reading every spike", r["lava_compile_once_with_spikes"]),
            ("Lava fixed_pt, compile per sample", r["lava_compile_per_sample"])]
    lines = [f"{r['dataset']} {'-'.join(map(str, r['sizes']))}, T={r['steps']}", "",
             f"{'backend':<36} {'samples':>8} {'wall s':>8} {'ms/sample':>10} {'samples/s':>10}"]
    lines += [f"{name:<36} {b['samples']:>8} {b['wall_s']:>8.2f} {b['ms_per_sample']:>10.3f} {b['samples_per_s']:>10.1f}"
              for name, b in rows]
    same = all(b.get("identical_to_emulator", True) for _, b in rows)
    lines += ["",
              f"emulator vs Lava compile once (whole call per sample):      {r['speedup_emulator_vs_lava']:.0f}x",
              f"  the same, emulator on {r['emulator_threads']['torch_threads']} threads:"
              f"{'':<{28 - len(str(r['emulator_threads']['torch_threads']))}}{r['speedup_emulator_threads_vs_lava']:.0f}x",
              f"emulator vs Lava compile once (steady run + read only):     {r['speedup_emulator_vs_lava_steady']:.0f}x",
              f"emulator vs Lava compile once reading every spike:          {r['speedup_emulator_vs_lava_with_spikes']:.0f}x",
              f"Lava compile once vs compile per sample (samples/s):        {r['speedup_compile_once_vs_per_sample']:.1f}x",
              f"Lava read-out voltages identical to the emulator's:         {same}",
              f"load average (1, 5, 15 min) at the end:                     {', '.join(f'{x:.2f}' for x in r['load_average'])}"]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default="runs/quickstart")
    p.add_argument("--lava-samples", type=int, default=100)
    p.add_argument("--naive-samples", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the second emulator timing")
    p.add_argument("--out", default="bench_lava.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    run_dir = args.run_dir
    with tempfile.TemporaryDirectory() as tmp:
        if not (Path(run_dir) / "checkpoint.pt").is_file():
            print(f"{run_dir} holds no trained run: training a 5-epoch digits run first", file=sys.stderr)
            run_dir = str(Path(tmp) / "run")
            if cli(["train", "--epochs", "5", "--out", run_dir, "--no-progress"]) != 0:
                sys.exit(1)
        result = bench(run_dir, args.lava_samples, args.naive_samples, args.threads)
    print(table(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
