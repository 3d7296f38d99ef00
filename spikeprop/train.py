"""The training loop: seeding, progress, metrics, atomic checkpoints and exact resume.

Randomness: one seed drives everything. The initial weights come from ``Generator(seed)``; the
order of epoch ``e`` and the encoder's spikes in it come from generators seeded with
``(seed, e)``, and rules keep their own generators in their state. So a run resumed from the
checkpoint of epoch ``e`` replays epoch ``e + 1`` exactly as an uninterrupted run does.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import spikeprop
from spikeprop import SpikepropError, runs
from spikeprop.config import TrainConfig
from spikeprop.data import Dataset, load
from spikeprop.encoders import Encoder
from spikeprop.evaluate import accuracy, activity
from spikeprop.network import Network
from spikeprop.quantize import fake_quant_weight
from spikeprop.rules import RULES, Rule

EPOCH_SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs map to distinct generator seeds


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * EPOCH_SEED_STRIDE + epoch) * 8 + stream


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpikepropError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as e:
        raise SpikepropError(f"--device {device} is not usable: {e}") from None
    return device


def build(config: TrainConfig, ds: Dataset) -> tuple[Network, Rule, Encoder]:
    """The network (initial weights from the seed), its encoder and its rule."""
    g = torch.Generator().manual_seed(config.seed)
    net = Network([ds.n_features, *config.hidden, ds.n_classes], config.lif_params(), generator=g)
    net.to(config.device)
    if config.quantize == "loihi":
        net.weight_transform = fake_quant_weight  # train what Loihi 2 will run (spikeprop.quantize)
    enc_gen = torch.Generator(device=config.device).manual_seed(epoch_seed(config.seed, 0, 1))
    encoder = Encoder(config.encoding, config.steps, enc_gen)
    rule = RULES[config.rule](net, config, encoder)
    return net, rule, encoder


def peak_memory_mib() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict:
    return {"spikeprop": spikeprop.__version__, "torch": torch.__version__, "python": platform.python_version()}


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Train ``config`` into ``run_dir`` (created, or continued when ``resume``); return the summary."""
    run_dir = Path(run_dir)
    check_device(config.device)
    ds = load(config.dataset, config.data_dir)
    net, rule, encoder = build(config, ds)
    start_epoch, train_time, samples_seen = 0, 0.0, 0
    if resume:
        ckpt = runs.load_checkpoint(run_dir, map_location=config.device)
        net.load_state_dict(ckpt["network"])
        rule.load_state_dict(ckpt["rule"])
        start_epoch, train_time, samples_seen = ckpt["epoch"], ckpt["train_time_s"], ckpt["samples_seen"]
        rows = [r for r in runs.read_metrics(run_dir) if r["epoch"] <= start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch}")
    else:
        if (run_dir / runs.CHECKPOINT).exists():
            raise SpikepropError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = []
    runs.write_json(run_dir / runs.CONFIG, {**config.to_dict(), "versions": versions()})
    runs.write_metrics(run_dir, rows)

    show = sys.stderr.isatty() if progress is None else progress
    n = len(ds.train_x)
    test_acc = rows[-1]["test_accuracy"] if rows else None
    for epoch in range(start_epoch + 1, config.epochs + 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 0)))
        encoder.generator.manual_seed(epoch_seed(config.seed, epoch, 1))
        sums: dict[str, float] = {}
        n_batches = 0
        t0 = time.perf_counter()
        bar = tqdm(range(0, n, config.batch_size), desc=f"epoch {epoch}/{config.epochs}", disable=not show,
                   leave=False, unit="batch")
        for i in bar:
            idx = order[i : i + config.batch_size]
            x = ds.intensities(ds.train_x[idx]).to(config.device)
            y = ds.train_y[idx].to(config.device)
            # Rules with per-sample state (F3's delayed-error buffer) also get the dataset rows.
            metrics = rule.train_step(x, y, index=idx) if getattr(rule, "needs_index", False) else rule.train_step(x, y)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            if "loss" in metrics:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        samples_seen += n
        encoder.generator.manual_seed(epoch_seed(config.seed, 0, 2))  # evaluation spikes: same every epoch
        test_acc = accuracy(rule.predict, ds, "test", device=config.device)
        row = {"epoch": epoch, "test_accuracy": test_acc, "epoch_time_s": epoch_time,
               **{k: v / n_batches for k, v in sums.items()}}
        rows.append(row)
        runs.save_checkpoint(run_dir, {
            "epoch": epoch, "train_time_s": train_time, "samples_seen": samples_seen,
            "architecture": net.describe(), "network": net.state_dict(), "rule": rule.state_dict(),
        })
        runs.write_metrics(run_dir, rows)
        extra = f"  train {row['train_accuracy']:.4f}" if "train_accuracy" in row else ""
        log(f"epoch {epoch}/{config.epochs}  loss {row.get('loss', float('nan')):.4f}{extra}  "
            f"test {test_acc:.4f}  ({epoch_time:.1f} s)")

    if test_acc is None:
        raise SpikepropError(f"nothing to train: the run already has {start_epoch} of {config.epochs} epochs")
    encoder.generator.manual_seed(epoch_seed(config.seed, 0, 2))
    act = activity(net, encoder, ds, device=config.device)
    summary = {
        "test_accuracy": test_acc,
        "rule": config.rule, "neurons": config.neurons, "dataset": config.dataset,
        "steps": config.steps, "epochs": config.epochs, "hidden": list(config.hidden),
        "encoding": config.encoding, "seed": config.seed, "device": config.device,
        "samples_per_second": samples_seen / train_time if train_time > 0 else None,
        "train_time_s": train_time,
        "peak_memory_mib": peak_memory_mib(),
        "firing_rate": act["firing_rate"], "silent_fraction": act["silent_fraction"],
        "synops_per_sample": act["synops_per_sample"],
    }
    if config.device.startswith("cuda"):
        summary["peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    runs.write_json(run_dir / runs.SUMMARY, summary)
    return summary


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[TrainConfig, Dataset, Network, Rule, Encoder]:
    """Rebuild a trained run (config, dataset, network, rule, encoder) from its directory."""
    run_dir = runs.check_run_dir(run_dir)
    raw = runs.read_json(run_dir / runs.CONFIG)
    raw.pop("versions", None)
    if device is not None:
        raw["device"] = device
    config = TrainConfig.from_dict(raw)
    check_device(config.device)
    ckpt = runs.load_checkpoint(run_dir, map_location=config.device)
    ds = load(config.dataset, config.data_dir)
    net, rule, encoder = build(config, ds)
    try:
        net.load_state_dict(ckpt["network"])
        rule.load_state_dict(ckpt["rule"])
    except (RuntimeError, KeyError) as e:
        raise SpikepropError(f"{run_dir / runs.CHECKPOINT} does not match {runs.CONFIG}: {e}") from None
    encoder.generator.manual_seed(epoch_seed(config.seed, 0, 2))
    return config, ds, net, rule, encoder
