"""The training loop: seeding, progress, metrics, atomic checkpoints and exact resume.

Randomness: one seed drives everything, through ``spikeprop.seeds``: the initial weights, the
order of epoch ``e`` and the encoder's spikes in it, the evaluation spikes, and each rule's own
draws are separate sub-streams of it, and rules keep their generators in their state. So a run
resumed from the checkpoint of epoch ``e`` replays epoch ``e + 1`` exactly as an uninterrupted
run does.
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import spikeprop
from spikeprop import PeerError, SpikepropError, runs, seeds
from spikeprop.config import TrainConfig
from spikeprop.data import Dataset, load
from spikeprop.distributed import Context, check_batches
from spikeprop.encoders import Encoder
from spikeprop.evaluate import accuracy, activity
from spikeprop.layers import parse_layers
from spikeprop.network import Network
from spikeprop.quantize import fake_quant_weight
from spikeprop.rules import RULES, Rule


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpikepropError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise SpikepropError(f"--device {device} is not usable: {e}") from None
    return device


# Bytes per trained weight while training: the value, its gradient and Adam's two moments (float32).
TRAINING_BYTES_PER_WEIGHT = 16


def available_memory(device: str) -> int | None:
    """Bytes the process may still allocate on ``device`` (None when the OS does not say)."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def input_shape(config: TrainConfig, ds: Dataset) -> tuple[int, ...]:
    """The shape of one network input: the dataset's sample, as the rule deploys it (FF's label planes)."""
    return RULES[config.rule].input_shape(config.rule_options, ds.sample_shape, ds.n_classes)


def check_size(config: TrainConfig, ds: Dataset) -> None:
    """Refuse a network whose weights alone would not fit in memory (a typo in --hidden), before allocating."""
    if config.layers is not None:
        layers = parse_layers(config.layers, input_shape(config, ds))
        sizes = [ds.n_features, *(s.n_out for s in layers), ds.n_classes]
        weights = sum(math.prod(s.weight_shape) for s in layers) + sizes[-2] * sizes[-1]
    else:
        sizes = [ds.n_features, *config.hidden, ds.n_classes]
        weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    need = weights * TRAINING_BYTES_PER_WEIGHT
    free = available_memory(config.device)
    if free is not None and need > free:
        raise SpikepropError(f"the network {'-'.join(map(str, sizes))} has {weights:,} weights and needs about "
                             f"{need / 2**30:.1f} GiB to train, but {config.device} has {free / 2**30:.1f} GiB free; "
                             "use smaller --hidden sizes")


def build_network(config: TrainConfig, ds: Dataset) -> Network:
    """The network of ``config`` for ``ds`` (initial weights from the seed), on the config's device."""
    check_size(config, ds)
    # --quantize loihi: train what Loihi 2 will run (spikeprop.quantize)
    transform = fake_quant_weight if config.quantize == "loihi" else None
    in_shape = input_shape(config, ds)
    if config.layers is not None:
        layers = parse_layers(config.layers, in_shape)  # shapes checked against the data here
        net = Network(layers, config.lif_params(), generator=seeds.generator(config.seed, "weights"),
                      weight_transform=transform, n_classes=ds.n_classes)
    else:
        net = Network([math.prod(in_shape), *config.hidden, ds.n_classes], config.lif_params(),
                      generator=seeds.generator(config.seed, "weights"), weight_transform=transform)
    return net.to(config.device)


def evaluation_encoder(config: TrainConfig, stream: str = "evaluation") -> Encoder:
    """The encoder of ``config`` with its generator on sub-stream ``stream`` of the seed."""
    return Encoder(config.encoding, config.steps, seeds.generator(config.seed, stream, device=config.device))


def build(config: TrainConfig, ds: Dataset) -> tuple[Network, Rule, Encoder]:
    """The network (initial weights from the seed), its encoder and its rule."""
    net = build_network(config, ds)
    encoder = evaluation_encoder(config)
    rule = RULES[config.rule](net, config, encoder)
    return net, rule, encoder


def restore_network(config: TrainConfig, net: Network, ckpt: dict, source: Path) -> None:
    """Load a checkpoint's weights into a freshly built network, after checking that the checkpoint
    was trained with ``config`` (``config.json``): an edited ``steps``, ``vth`` or rule would
    otherwise change every result silently."""
    stored = ckpt.get("config")
    if stored is not None:
        now = config.architecture_key()
        diff = sorted(k for k in set(now) | set(stored) if now.get(k) != stored.get(k))
        if diff:
            detail = ", ".join(f"{k}: {stored.get(k)!r} in the checkpoint, {now.get(k)!r} in {runs.CONFIG}" for k in diff[:4])
            raise SpikepropError(f"{source / runs.CHECKPOINT} was trained with other settings than {source / runs.CONFIG} "
                                 f"says ({detail}); restore {runs.CONFIG} or re-train")
    elif ckpt.get("architecture") != net.describe():  # format 1: only the architecture was recorded
        raise SpikepropError(f"{source / runs.CHECKPOINT} holds a network {ckpt.get('architecture')} but "
                             f"{source / runs.CONFIG} describes {net.describe()}; restore {runs.CONFIG} or re-train")
    _load_state(lambda: net.load_state_dict(ckpt["network"]), source)


def _load_state(load, source: Path) -> None:
    try:
        load()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpikepropError(f"{source / runs.CHECKPOINT} does not match {runs.CONFIG}: {first}") from None


def restore(config: TrainConfig, net: Network, rule: Rule, ckpt: dict, source: Path) -> None:
    """``restore_network``, then the rule's state (optimizers, generator, extra tensors)."""
    restore_network(config, net, ckpt, source)
    _load_state(lambda: rule.load_state_dict(ckpt["rule"]), source)


def net_layers(net: Network) -> str:
    """The hidden stack as a --layers spec (a fully-connected network's too)."""
    from spikeprop.layers import describe

    return describe(net.synapses)


def peak_memory_mib() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict:
    return {"spikeprop": spikeprop.__version__, "torch": torch.__version__, "python": platform.python_version()}


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool | None = None, log: Callable[[str], None] = print, dist: Context | None = None) -> dict:
    """Train ``config`` into ``run_dir`` (created, or continued when ``resume``); return the summary.

    The process holds the run directory's lock throughout. ``overwrite`` first deletes the run
    already there (only a spikeprop run directory or an empty one). ``dist``: this process is one
    rank of a data-parallel group (``spikeprop.distributed``); rank 0 holds the lock, writes the
    run directory and returns the summary, the other ranks return ``{"rank": r}``.
    """
    run_dir = Path(run_dir)
    if dist is not None:
        return _train_distributed(config, run_dir, resume, overwrite, progress, log, dist)
    check_device(config.device)
    ds = load(config.dataset, config.data_dir, **config.data_options())
    net, rule, encoder = build(config, ds)
    with runs.RunLock(run_dir) as lock:
        if overwrite:
            _overwrite(run_dir, lock)
        return _train_locked(config, run_dir, ds, net, rule, encoder, resume, progress, log)


def _overwrite(run_dir: Path, lock: runs.RunLock) -> None:
    if any(e.name != runs.LOCK for e in run_dir.iterdir()) and not (run_dir / runs.CONFIG).is_file():
        raise SpikepropError(f"--overwrite: {run_dir} is not a spikeprop run directory; refusing to delete it")
    lock.clear()


def _train_distributed(config, run_dir, resume, overwrite, progress, log, dist: Context) -> dict:
    """``train`` as one rank of a data-parallel group: every rank sets up, rank 0 takes the run
    directory (lock, checkpoint, config.json) and broadcasts what the others need; a setup error of
    any rank ends every rank (one line, printed by the rank that had it)."""
    if config.world_size != dist.world:
        raise SpikepropError(f"the settings say world_size {config.world_size}, but {dist.world} processes run")
    error, start, ds, net, rule, encoder = None, None, None, None, None, None
    with contextlib.ExitStack() as stack:
        try:
            check_device(config.device)
            ds = load(config.dataset, config.data_dir, **config.data_options())
            check_batches(config.batch_size, len(ds.train_x), dist.world)
            net, rule, encoder = build(config, ds)
            if dist.rank == 0:
                lock = stack.enter_context(runs.RunLock(run_dir))
                if overwrite:
                    _overwrite(run_dir, lock)
                start = _prepare(config, run_dir, net, rule, resume, log)
        except SpikepropError as e:
            error = str(e)
        dist.agree(error)
        # Rank 0's settings and starting point (a resumed checkpoint's state) reach every rank.
        mine = config.to_dict()
        shared = dist.broadcast((mine, start) if dist.rank == 0 else None)
        theirs, start = shared
        error = None
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            error = (f"rank {dist.rank} was started with other settings than rank 0 "
                     f"({', '.join(f'{k}: {mine.get(k)!r} here, {theirs.get(k)!r} on rank 0' for k in diff[:3])}); "
                     "start every process with the same flags")
        elif dist.rank != 0 and start["state"] is not None:
            try:
                restore(config, net, rule, start["state"], run_dir)
            except SpikepropError as e:
                error = str(e)
        dist.agree(error)
        start["state"] = None
        if dist.rank != 0:
            log, progress = (lambda _: None), False
        return _epochs(config, run_dir, ds, net, rule, encoder, start, progress, log, dist)


def _prepare(config, run_dir, net, rule, resume, log) -> dict:
    """Take over ``run_dir`` (locked by the caller): restore a resumed run's checkpoint or check
    that none is there; write config.json and metrics.jsonl. The starting point of the epochs."""
    start_epoch, train_time, samples_seen, state = 0, 0.0, 0, None
    if resume:
        ckpt = runs.load_checkpoint(run_dir, map_location=config.device)
        restore(config, net, rule, ckpt, run_dir)
        start_epoch, train_time, samples_seen = ckpt["epoch"], ckpt["train_time_s"], ckpt["samples_seen"]
        # The checkpoint is the commit point: its rows are the run's metrics (a kill after the
        # checkpoint and before metrics.jsonl is repaired here).
        rows = ckpt["metrics"] if "metrics" in ckpt else [r for r in runs.read_metrics(run_dir) if r["epoch"] <= start_epoch]
        if len(rows) != start_epoch:
            raise SpikepropError(f"{run_dir / runs.METRICS} has {len(rows)} rows for {start_epoch} trained epochs; "
                                 "restore it or re-train")
        if start_epoch >= config.epochs and (run_dir / runs.SUMMARY).is_file():
            raise SpikepropError(f"nothing to train: {run_dir} already has {start_epoch} of {config.epochs} epochs "
                                 "(give --epochs N to train more)")
        log(f"resuming {run_dir} after epoch {start_epoch}")
        state = {k: ckpt[k] for k in ("config", "architecture", "network", "rule") if k in ckpt}
    else:
        if (run_dir / runs.CHECKPOINT).exists():
            raise SpikepropError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --out")
        rows = []
    start_run(run_dir, config)
    runs.write_metrics(run_dir, rows)
    return {"epoch": start_epoch, "train_time_s": train_time, "samples_seen": samples_seen, "rows": rows,
            "state": state}


def checkpoint_state(config: TrainConfig, net: Network, rule: Rule, *, epoch: int, train_time_s: float,
                     samples_seen: int, metrics: list[dict]) -> dict:
    """What ``checkpoint.pt`` holds after ``epoch`` epochs (the one place its schema is spelled)."""
    return {"epoch": epoch, "train_time_s": train_time_s, "samples_seen": samples_seen, "metrics": list(metrics),
            "config": config.architecture_key(), "architecture": net.describe(),
            "network": net.state_dict(), "rule": rule.state_dict()}


def start_run(run_dir: Path, config: TrainConfig) -> None:
    """Write ``config.json`` (the resolved settings and the library versions)."""
    runs.write_json(run_dir / runs.CONFIG, {**config.to_dict(), "versions": versions()})


def _epoch_metrics(sums: dict[str, float], n_batches: int) -> dict[str, float]:
    return {k: v / n_batches for k, v in sums.items()}


def _check_finite(metrics: dict, epoch: int, batch: int, last_good: int, dist: Context | None = None) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        # data-parallel: the metrics are the global batch's, every rank stops here; rank 0 says why
        kind = SpikepropError if dist is None or dist.rank == 0 else PeerError
        raise kind(f"epoch {epoch}, batch {batch}: {', '.join(bad)} became {metrics[bad[0]]} (training "
                             f"diverged); the checkpoint of epoch {last_good} is kept. Lower --lr or the rule's "
                             "learning rates")


def _train_locked(config, run_dir, ds, net, rule, encoder, resume, progress, log) -> dict:
    start = _prepare(config, run_dir, net, rule, resume, log)
    start["state"] = None
    return _epochs(config, run_dir, ds, net, rule, encoder, start, progress, log, None)


def _epochs(config, run_dir, ds, net, rule, encoder, start, progress, log, dist: Context | None) -> dict:
    """The epochs after ``start`` and the summary. Data-parallel (``dist``): each rank trains on its
    shard of every batch; rank 0 evaluates, writes the checkpoint, the metrics and the summary, and
    every epoch ends with a sync point that stops every rank if rank 0 could not commit it."""
    start_epoch, train_time, samples_seen, rows = start["epoch"], start["train_time_s"], start["samples_seen"], start["rows"]
    writer = dist is None or dist.rank == 0
    if dist is not None:
        rule.dist = encoder.dist = dist
    show = sys.stderr.isatty() if progress is None else progress
    n = len(ds.train_x)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        order = torch.randperm(n, generator=seeds.generator(config.seed, "order", epoch))
        encoder.generator.manual_seed(seeds.stream(config.seed, "encoder", epoch))
        sums: dict[str, float] = {}
        n_batches = 0
        t0 = time.perf_counter()
        bar = tqdm(range(0, n, config.batch_size), desc=f"epoch {epoch}/{config.epochs}", disable=not show,
                   leave=False, unit="batch")
        for i in bar:
            idx = order[i : i + config.batch_size]
            if dist is not None:  # this rank's rows of the global batch
                idx = idx[dist.shard(len(idx))]
            x = ds.intensities(ds.train_x[idx]).to(config.device)
            y = ds.train_y[idx].to(config.device)
            # Rules with per-sample state (F3's delayed-error buffer) also get the dataset rows.
            metrics = rule.train_step(x, y, index=idx) if rule.needs_index else rule.train_step(x, y)
            n_batches += 1
            _check_finite(metrics, epoch, n_batches, epoch - 1, dist)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            if "loss" in metrics:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
            kind = SpikepropError if writer else PeerError
            raise kind(f"epoch {epoch}: the weights became non-finite (training diverged); the checkpoint "
                                 f"of epoch {epoch - 1} is kept. Lower --lr or the rule's learning rates")
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        samples_seen += n
        if not writer:
            dist.agree(None)  # rank 0 evaluates and commits the epoch
            continue
        error = None
        try:
            if dist is not None:
                encoder.dist = None  # rank 0 evaluates the whole test split alone, as one process does
            encoder.generator.manual_seed(seeds.stream(config.seed, "evaluation"))  # evaluation spikes: same every epoch
            test_acc = accuracy(rule.predict, ds, "test", device=config.device)
            row = {"epoch": epoch, "test_accuracy": test_acc, "epoch_time_s": epoch_time, **_epoch_metrics(sums, n_batches)}
            rows.append(row)
            runs.save_checkpoint(run_dir, checkpoint_state(config, net, rule, epoch=epoch, train_time_s=train_time,
                                                           samples_seen=samples_seen, metrics=rows))
            runs.write_metrics(run_dir, rows)
        except (SpikepropError, OSError) as e:
            if dist is None:
                raise
            error = str(e) if isinstance(e, SpikepropError) else f"epoch {epoch}: {e}"
        finally:
            if dist is not None:
                encoder.dist = dist
        if dist is not None:
            dist.agree(error)
        extra = f"  train {row['train_accuracy']:.4f}" if "train_accuracy" in row else ""
        log(f"epoch {epoch}/{config.epochs}  loss {row.get('loss', float('nan')):.4f}{extra}  "
            f"test {test_acc:.4f}  ({epoch_time:.1f} s)")

    if not writer:
        dist.agree(None)  # rank 0 writes the summary
        return {"rank": dist.rank}
    error = None
    try:
        if not rows:
            raise SpikepropError(f"nothing to train: the run has 0 of {config.epochs} epochs")
        summary = _summary(config, run_dir, ds, net, rule, encoder, rows, train_time, samples_seen)
    except (SpikepropError, OSError) as e:
        if dist is None:
            raise
        error = str(e)
    if dist is not None:
        dist.agree(error)
    return summary


def _summary(config, run_dir, ds, net, rule, encoder, rows, train_time, samples_seen) -> dict:
    """Write summary.json (the run's final figures) and return it."""
    if encoder.dist is not None:
        encoder.dist = None
    encoder.generator.manual_seed(seeds.stream(config.seed, "evaluation"))
    # activity of the deployed read-out path (FF: the neutral label in the input), as analyze measures it
    act = activity(net, lambda x: rule.deploy_input(rule.options, x, encoder, ds.n_classes), ds, device=config.device)
    summary = {
        "test_accuracy": rows[-1]["test_accuracy"],
        "rule": config.rule, "neurons": config.neurons, "dataset": config.dataset,
        "steps": config.steps, "epochs": config.epochs, "hidden": list(config.hidden), "layers": net_layers(net),
        "encoding": config.encoding, "seed": config.seed, "device": config.device,
        "world_size": config.world_size,
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


def read_config(run_dir: Path, device: str | None = None) -> TrainConfig:
    """The TrainConfig of a run directory (``config.json``, every field required), on ``device`` if given."""
    raw = runs.read_json(run_dir / runs.CONFIG)
    if device is not None and isinstance(raw, dict):
        raw = {**raw, "device": device}
    return TrainConfig.from_run(raw, str(run_dir / runs.CONFIG))


def load_network(run_dir: str | Path, device: str | None = None) -> tuple[TrainConfig, Dataset, Network]:
    """A trained run's config, dataset and network (weights loaded and checked), without a rule."""
    run_dir = runs.check_run_dir(run_dir)
    config = read_config(run_dir, device)
    check_device(config.device)
    ckpt = runs.load_checkpoint(run_dir, map_location=config.device)
    ds = load(config.dataset, config.data_dir, **config.data_options())
    net = build_network(config, ds)
    restore_network(config, net, ckpt, run_dir)
    return config, ds, net


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[TrainConfig, Dataset, Network, Rule, Encoder]:
    """Rebuild a trained run (config, dataset, network, rule, encoder) from its directory."""
    run_dir = runs.check_run_dir(run_dir)
    config = read_config(run_dir, device)
    check_device(config.device)
    ckpt = runs.load_checkpoint(run_dir, map_location=config.device)
    ds = load(config.dataset, config.data_dir, **config.data_options())
    net, rule, encoder = build(config, ds)
    restore(config, net, rule, ckpt, run_dir)
    return config, ds, net, rule, encoder
