"""Command line: ``spikeprop train | evaluate | export | import | analyze | verify``.

``main(argv=None) -> int`` so that tests call it in-process. Errors caused by the user's input
(``SpikepropError``) print one line and exit with status 2; nothing below this module sees
argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
import time
from pathlib import Path

from spikeprop import PEER_EXIT, PeerError, SpikepropError

# The heavy modules (torch, the rules, Lava) are imported inside ``main``, so that Ctrl-C while
# they load is answered like any other interrupt instead of with a traceback.

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _hidden(text: str) -> tuple[int, ...]:
    parts = [s.strip() for s in text.split(",")]
    try:
        sizes = tuple(int(s) for s in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of layer sizes, e.g. 500,500") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"'{text}': layer sizes must be positive, e.g. 500,500")
    return sizes


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {n}")
    return n


def _positive_float(text: str) -> float:
    import math

    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return x


def _nproc(text: str) -> int:
    from spikeprop.distributed import MAX_WORLD

    n = _positive_int(text)
    if n > MAX_WORLD:
        raise argparse.ArgumentTypeError(f"at most {MAX_WORLD} processes; got {n}")
    return n


def _timeout(text: str) -> float:
    from spikeprop.distributed import MAX_TIMEOUT_S

    x = _positive_float(text)
    if x > MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_TIMEOUT_S:.0f} seconds (7 days); got {text}")
    return x


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def _rule_flag(rule: str, key: str) -> str:
    return f"--{rule}-{key.replace('_', '-')}"


def _add_train(sub) -> None:
    from spikeprop.data import DATASETS, SEQUENCES
    from spikeprop.encoders import ENCODINGS
    from spikeprop.neurons import NEURON_KINDS
    from spikeprop.quantize import QUANTIZERS
    from spikeprop.rules import RULES

    p = sub.add_parser(
        "train", help="train a network into a run directory",
        description="Train a LIF network with a learning rule. Defaults come from the dataset's recipe "
                    "(models/), then --config FILE.toml, then these flags.",
    )
    p.add_argument("--rule", choices=sorted(RULES), help="learning rule (default: sigprop)")
    p.add_argument("--neurons", choices=NEURON_KINDS, help="lif: Lava LIF; if: Lava LIF with dv=0 (default: lif)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset (default: digits, embedded); temporal: "
                   "sequential-fashion-mnist (rows or pixels as currents per step), nmnist, dvs-gesture, shd (event "
                   "recordings binned into spike frames, read with tonic from --data-dir)")
    p.add_argument("--data-dir", type=_path, help="directory holding the IDX files of fashion-mnist, mnist or "
                   "sequential-fashion-mnist, or tonic's folders of an event dataset (DIR/NMNIST, DIR/DVSGesture, DIR/SHD; "
                   "default ~/.cache/spikeprop)")
    p.add_argument("--steps", type=int, help="time steps T per sample (an event dataset: its number of time bins; "
                   "sequential-fashion-mnist: fixed by --sequence)")
    p.add_argument("--sequence", choices=tuple(SEQUENCES), help="sequential-fashion-mnist: one row per step (T=28, "
                   "the default) or one pixel per step (T=784)")
    p.add_argument("--bin-us", type=int, metavar="US", help="event datasets: time bins of US microseconds from the "
                   "recording's start, the first --steps of them (default: --steps bins spanning each recording)")
    p.add_argument("--downsample", type=int, metavar="K", help="event datasets: divide the sensor's x and y by K "
                   "(dvs-gesture's recipe: 4, 128x128 -> 32x32; default 1)")
    p.add_argument("--hidden", type=_hidden, help="fully-connected hidden layer sizes, e.g. 500,500")
    p.add_argument("--layers", metavar="SPEC", help="the hidden stack: comma-separated tokens, e.g. 16c5s2,32c3s2,256 "
                   "(256: a Dense layer of 256; 16c5s2: a 5x5 convolution to 16 channels, stride 2, padding 2; "
                   "32c3p0: padding 0; a Dense after a convolution flattens it). Overrides --hidden")
    p.add_argument("--model", choices=("fc", "conv", "rec"), help="the dataset's recipe: fc (fully connected, the "
                   "default), conv (convolutional) or rec (recurrent); models/")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="samples per batch")
    p.add_argument("--lr", type=float, help="learning rate of the network's weights (Adam)")
    p.add_argument("--seed", type=int, help="the one seed behind weights, data order and spikes (default: 0)")
    p.add_argument("--encoding", choices=ENCODINGS, help="input encoding (default: direct)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--du", type=float, help="fraction of the synaptic current lost per step (1: none kept)")
    p.add_argument("--dv", type=float, help="fraction of the voltage lost per step (ignored by --neurons if)")
    p.add_argument("--vth", type=float, help="firing threshold")
    p.add_argument("--quantize", choices=QUANTIZERS, help="loihi: train with Loihi-2 8-bit weights (fake-quant, "
                   "straight-through) and 12-bit decays, so the fixed-point network keeps the accuracy (default: none)")
    p.add_argument("--out", type=_path, help="run directory (default: runs/<dataset>-<rule>-<neurons>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are deleted)")
    p.add_argument("--resume", metavar="RUN_DIR", type=_path,
                   help="continue an interrupted run (only --epochs and --device may change)")
    p.add_argument("--config", metavar="FILE.toml", type=_path, help="TOML file of settings; flags override it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--nproc", type=_nproc, metavar="N", help="train data-parallel in N processes on this machine "
                   "(torch.distributed, gloo on CPU; each takes batch-size / N samples of every batch, gradients "
                   "all-reduced: the same training as one process). Under torchrun leave it out (default: 1)")
    p.add_argument("--dist-timeout", type=_timeout, metavar="SECONDS", help="data-parallel: seconds a process waits "
                   "for the others in a collective before it gives up with an error (rank 0 evaluates each epoch "
                   "while the others wait; default 1800)")
    for name, cls in sorted(RULES.items()):
        g = p.add_argument_group(f"--rule {name}", cls.summary)
        for key, opt in cls.OPTIONS.items():
            g.add_argument(_rule_flag(name, key), dest=f"opt__{name}__{key}", type=opt.type, choices=opt.choices,
                           metavar=key.upper() if opt.choices is None else None,
                           help=f"{opt.help} (default: {opt.default}" + (f"; {opt.allowed})" if opt.allowed else ")"))
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="re-compute the test accuracy of a run from its checkpoint")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path)
    p.add_argument("--device", help="torch device (default: the run's)")
    p.add_argument("--limit", type=int, help="only the first N test samples")
    p.add_argument("--backend", choices=("float", "loihi"), default="float",
                   help="float: the trained network; loihi: its Loihi-2 fixed-point version in the bit-exact emulator")
    p.set_defaults(func=cmd_evaluate)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="run test samples through the float network, the fixed-point emulator and "
                       "Lava's CPU simulator (fixed_pt, floating_pt); compare spike for spike; writes verify.json",
                       description="Exits with status 1 when the emulator and Lava fixed_pt disagree.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path)
    p.add_argument("--limit", type=int, default=100, help="test samples to run")
    p.add_argument("--timeout", type=_positive_float, help="seconds before a Lava run counts as hung (default: from its size)")
    p.set_defaults(func=cmd_verify)


def _add_export(sub) -> None:
    from hardware.deploy import EXPORTERS  # the targets' table (spikeprop reaches hardware only inside functions)

    targets = "; ".join(f"--to {name}: {e.help}" for name, e in sorted(EXPORTERS.items()))
    p = sub.add_parser("export", help=f"write a run's network for another tool ({targets})")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path)
    p.add_argument("--to", required=True, choices=sorted(EXPORTERS), help="target format")
    p.add_argument("--out", required=True, type=_path, help="output file ("
                   + ", ".join(f"{e.suffix} for --to {name}" for name, e in sorted(EXPORTERS.items())) + ")")
    p.add_argument("--dt", type=_positive_float, help="--to nir: seconds per time step written into the graph (default: 1e-4)")
    p.set_defaults(func=cmd_export)


def _add_import(sub) -> None:
    from spikeprop.data import STATIC_DATASETS
    from spikeprop.encoders import ENCODINGS
    from spikeprop.rules import RULES

    p = sub.add_parser("import", help="read a NIR graph into a run directory (for evaluate, verify, export)",
                       description="Read a NIR graph (Input, Affine/Linear, LIF/IF/CubaLIF, read-out) into a run "
                                   "directory. Unset settings come from the graph's metadata, then the dataset's "
                                   "recipe; the dataset defaults by input size (64: digits, 784: fashion-mnist).")
    p.add_argument("nir_file", metavar="FILE.nir", type=_path)
    p.add_argument("--out", required=True, type=_path, help="run directory to create")
    p.add_argument("--dataset", choices=STATIC_DATASETS, help="dataset the network classifies")
    p.add_argument("--data-dir", type=_path, help="directory holding the IDX files of fashion-mnist or mnist")
    p.add_argument("--steps", type=_positive_int, help="time steps T per sample")
    p.add_argument("--encoding", choices=ENCODINGS, help="input encoding (default: the graph's, else direct)")
    p.add_argument("--rule", choices=sorted(RULES), help="rule recorded for train --resume (default: the graph's, else bptt)")
    p.add_argument("--dt", type=_positive_float, help="seconds per step (default: the graph's metadata dt, else 1e-4)")
    p.set_defaults(func=cmd_import)


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="sparsity, class ensembles and SynOps of a run; writes analysis.json and PNGs")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path)
    p.add_argument("--limit", type=int, default=1000, help="test samples to analyse")
    p.add_argument("--device", help="torch device (default: the run's)")
    p.set_defaults(func=cmd_analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikeprop",
        description="Train LIF spiking networks with forward-only learning rules and deploy them to Lava.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_import(sub)
    _add_analyze(sub)
    _add_verify(sub)
    return parser


def resolve_train_config(args: argparse.Namespace):
    """Defaults < dataset recipe < --config file < flags, as one frozen TrainConfig."""
    from models import recipe
    from spikeprop.config import FIELDS, TrainConfig, read_toml
    from spikeprop.data import fixed_steps
    from spikeprop.validate import string

    flags = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    flag_opts: dict[str, dict] = {}
    for k, v in vars(args).items():
        if k.startswith("opt__") and v is not None:
            _, rule, key = k.split("__")
            flag_opts.setdefault(rule, {})[key] = v
    toml = read_toml(args.config) if args.config else {"rule_tables": {}}
    tables = toml.pop("rule_tables")
    source = f"config file {args.config}" if args.config else "configuration"
    rule = flags.get("rule", toml.get("rule", TrainConfig.rule))
    dataset = flags.get("dataset", toml.get("dataset", TrainConfig.dataset))
    model = flags.get("model", toml.get("model", TrainConfig.model))
    try:  # the recipe is looked up by these three: check them before anything else
        string("rule", rule), string("dataset", dataset), string("model", model)
        base = recipe(dataset, rule, model)
    except SpikepropError as e:
        raise SpikepropError(f"{source}: {e}") from None
    if "layers" in flags and "hidden" in flags:
        raise SpikepropError("give --layers or --hidden, not both (--layers 500,500 is --hidden 500,500)")
    for other in set(flag_opts) - {rule}:
        names = ", ".join(_rule_flag(other, k) for k in flag_opts[other])
        raise SpikepropError(f"{names} belong(s) to --rule {other}, but the rule is {rule}")
    for other in set(tables) - {rule}:
        raise SpikepropError(f"{args.config}: table [{other}] holds options of --rule {other}, but the rule is {rule}")
    if "hidden" in flags or "hidden" in toml and "layers" not in flags:
        base.pop("layers", None)  # fully-connected sizes asked for: the recipe's stack does not apply
    options = {**base.pop("rule_options", {}), **tables.get(rule, {}), **flag_opts.get(rule, {})}
    values = {**base, **toml, **flags, "rule_options": options}
    fixed = fixed_steps(dataset, values.get("sequence", TrainConfig.sequence))
    if fixed is not None and "steps" not in values:
        values["steps"] = fixed  # T is the dataset's (28 rows or 784 pixels); a different --steps is an error
    return TrainConfig.from_dict(values, source=source)


def _train_target(args: argparse.Namespace, world_size: int):
    """The config, run directory and resume flag of ``train``'s flags, for ``world_size`` processes."""
    from spikeprop.config import TrainConfig
    from spikeprop.runs import CONFIG, check_run_dir, read_json

    if args.resume:
        run_dir = check_run_dir(args.resume)
        given = [k for k, v in vars(args).items()
                 if v not in (None, False) and k not in ("resume", "epochs", "device", "command", "func", "no_progress",
                                                         "nproc", "dist_timeout", "argv")]
        if given:
            raise SpikepropError(f"--resume continues {run_dir} with its own settings; only --epochs and --device "
                                 f"may change, and --nproc and --dist-timeout (got: "
                                 f"{', '.join('--' + g.replace('_', '-').replace('opt--', '') for g in given)})")
        raw = read_json(run_dir / CONFIG)
        if isinstance(raw, dict):
            if args.epochs is not None:
                raw["epochs"] = args.epochs
            if args.device is not None:
                raw["device"] = args.device
            raw["world_size"] = world_size  # a run may resume with another number of processes
        return TrainConfig.from_run(raw, str(run_dir / CONFIG)), run_dir, True
    config = resolve_train_config(args)
    if world_size != 1:
        config = dataclasses.replace(config, world_size=world_size)
    if args.out:
        run_dir = Path(args.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{config.dataset}-{config.rule}-{config.neurons}-{stamp}"
    return config, run_dir, False


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from spikeprop import distributed
    from spikeprop.train import train

    world = distributed.env_world()
    launched = os.environ.get(distributed.LAUNCHED)
    if world is not None and launched is None and args.nproc is not None:
        raise SpikepropError(f"--nproc starts its own processes; under torchrun (WORLD_SIZE {world[1]} in the "
                             "environment) leave it out: torchrun's --nproc-per-node sets them")
    if world is None and args.nproc is not None and args.nproc > 1:
        return _launch_train(args)
    n = 1 if world is None else world[1]
    if args.dist_timeout is not None and n == 1:
        raise SpikepropError("--dist-timeout applies to data-parallel training (--nproc N with N > 1, or torchrun)")
    config, run_dir, resume = _train_target(args, n)
    progress = False if args.no_progress else None
    overwrite = bool(args.overwrite) and not resume
    rank = 0 if world is None else world[0]
    if rank == 0:
        stack = f"layers {config.layers}" if config.layers else f"hidden {','.join(map(str, config.hidden))}"
        procs = f", {n} processes" if n > 1 else ""
        print(f"spikeprop train: rule {config.rule}, neurons {config.neurons}, dataset {config.dataset}, "
              f"{stack}, T={config.steps}, {config.epochs} epochs{procs} -> {run_dir}")
    if n == 1:
        summary = train(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)
    else:
        timeout = args.dist_timeout if args.dist_timeout is not None else distributed.DEFAULT_TIMEOUT_S
        ctx = distributed.Context.init(rank, n, timeout, config.device)
        finished = False
        try:
            summary = train(config, run_dir, resume=resume, overwrite=overwrite, progress=progress, dist=ctx)
            finished = True
        finally:
            ctx.close(synchronize=finished)
        if rank != 0:
            distributed.exit_now(0)
    sps = summary["samples_per_second"]
    print(f"test accuracy {summary['test_accuracy']:.4f} ({summary['dataset']}, {summary['rule']}, "
          f"{'-' if sps is None else f'{sps:.0f}'} samples/s, peak memory {summary['peak_memory_mib']:.0f} MiB)")
    print(f"run directory: {run_dir}")
    if n > 1:
        distributed.exit_now(0)
    return 0


def _launch_train(args: argparse.Namespace) -> int:
    """``train --nproc N``: check the settings here, then run N workers of the same command line."""
    import sys

    from spikeprop import distributed

    config, run_dir, resume = _train_target(args, args.nproc)
    distributed.check_batches(config.batch_size, 0, args.nproc)  # the last batch is checked once the data is loaded
    extra = [] if resume or args.out else ["--out", str(run_dir)]  # one run directory for every rank
    cmd = [sys.executable, "-m", "spikeprop", *args.argv, *extra]
    return distributed.launch(cmd, args.nproc)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikeprop.evaluate import accuracy
    from spikeprop.train import load_run

    if args.limit is not None and args.limit < 1:
        raise SpikepropError("--limit must be >= 1")
    if args.backend == "loihi":
        from hardware.deploy import evaluate_run

        acc, n, fnet = evaluate_run(args.run_dir, limit=args.limit)
        source = fnet.source or {}
        print(f"test accuracy {acc:.4f} on {n} {source.get('dataset', '')} test samples "
              f"(backend: loihi, Loihi-2 fixed point in the bit-exact emulator)")
        return 0
    config, ds, net, rule, encoder = load_run(args.run_dir, device=args.device)
    acc = accuracy(rule.predict, ds, "test", device=config.device, limit=args.limit)
    n = len(ds.test_x) if args.limit is None else min(args.limit, len(ds.test_x))
    print(f"test accuracy {acc:.4f} on {n} {config.dataset} test samples (backend: float, {config.device})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hardware.deploy import export_run

    for line in export_run(args.run_dir, args.out, args.to, dt=args.dt):
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise SpikepropError("--limit must be >= 1")
    from hardware.deploy import VERIFY, format_report, verify_run

    report = verify_run(args.run_dir, limit=args.limit, timeout=args.timeout)
    print(format_report(report))
    print(f"wrote {Path(args.run_dir) / VERIFY}")
    return 0 if report["bit_exact"] else 1


def cmd_import(args: argparse.Namespace) -> int:
    from hardware.deploy import import_run

    config = import_run(args.nir_file, args.out, dataset=args.dataset, data_dir=args.data_dir, steps=args.steps,
                        encoding=args.encoding, rule=args.rule, dt=args.dt)
    print(f"imported {args.nir_file}: hidden {','.join(map(str, config['hidden']))}, neurons {config['neurons']}, "
          f"{config['dataset']}, T={config['steps']}, encoding {config['encoding']} -> run directory {args.out}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from spikeprop.analysis import analyze_run

    result = analyze_run(args.run_dir, limit=args.limit, device=args.device)
    for layer in result["layers"]:
        print(f"layer {layer['layer']}: firing rate {layer['firing_rate']:.4f}, silent {layer['silent_fraction']:.3f}, "
              f"Hoyer (counts) {layer['hoyer_counts']:.3f}, Hoyer (voltage) {layer['hoyer_voltage']:.3f}, "
              f"ensembles (voltage) mean size {layer['ensembles']['voltage']['size_mean']:.1f}, "
              f"mean Jaccard overlap {layer['ensembles']['voltage']['jaccard_mean']:.3f}")
    print(f"SynOps per sample {result['synops_per_sample']:.0f}; wrote {', '.join(result['files'])} in {args.run_dir}")
    return 0


def _interrupted(command: str | None) -> str:
    if command == "train":
        return ("interrupted; the last completed epoch is in the checkpoint (continue with "
                "--resume RUN_DIR)")
    return "interrupted"


def _os_error(e: OSError) -> str:
    """One line for an OS error: what failed on which path (a full disk says so)."""
    where = f" {e.filename}" if e.filename else ""
    what = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or type(e).__name__
    return f"cannot access{where}: {what}"


def _rank() -> str:
    """`` (rank r)`` in a data-parallel worker other than rank 0 (whose messages are the run's)."""
    import os

    rank = os.environ.get("RANK")
    return f" (rank {rank})" if "WORLD_SIZE" in os.environ and rank not in (None, "0") else ""


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        command = args.command
        return args.func(args)
    except PeerError:  # another rank of a data-parallel run failed and printed why
        return PEER_EXIT
    except SpikepropError as e:  # before OSError: a RunFileError is both
        print(f"spikeprop {command}{_rank()}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"spikeprop {command}: error: {_os_error(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"spikeprop{' ' + command if command else ''}: {_interrupted(command)}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
