"""Data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Every rank holds the whole dataset, the same network and the same rule, and computes the same
epoch order from the one seed. Each global batch of ``--batch-size`` samples is cut into
``world_size`` contiguous shards in rank order (``shard_sizes``: as even as possible, so that the
last, shorter batch of an epoch is split too); rank ``r`` runs the rule on its shard. What makes
the result that of one process on the global batch:

* Gradients. Every rule's gradient is a mean over its batch of per-sample contributions (the
  membrane-local rules' per-layer signals ``dz / B`` and the read-out's cross-entropy, BPTT's
  loss). Rank ``r`` computes the mean over its ``n_r`` samples; ``reduce`` multiplies it by
  ``n_r / B`` and all-reduces the sum: the global mean. The batch metrics are reduced the same way.
* Random numbers. Every rank draws the random numbers of the *global* batch from the same
  generator and keeps its slice: the rate encoder all-gathers the intensities it encodes, draws
  the global batch's spikes and keeps its rows (``Encoder.dist``); FF draws the global batch's
  wrong labels (hard negatives: from the all-gathered read-out scores). Generators therefore stay
  in step on every rank, and the spikes are those of one process.
* Cross-sample terms. SigProp's loss compares each sample with the label embeddings of the whole
  batch: the labels are all-gathered and each rank computes its rows of the [B, B] logits. F³'s
  per-sample error buffer is replicated: each step's errors and dataset rows are all-gathered and
  written on every rank.

Rank 0 alone writes the run directory and evaluates the test split (the other ranks wait in their
next collective); a checkpoint to resume from is read by rank 0 and broadcast. Collectives time
out after ``--dist-timeout`` seconds, and a peer that dies or stops answering ends every rank with
a one-line error; the last checkpoint rank 0 committed is kept.

Processes are started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
in the environment) or by ``spikeprop train --nproc N`` (``launch``), which starts N local workers
with that environment, stops them all when one fails and exits with a one-line error.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

import torch

from spikeprop import PEER_EXIT, PeerError, SpikepropError

MAX_WORLD = 1024
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo; the other ranks wait this long for rank 0's evaluation
MAX_TIMEOUT_S = 7 * 86400.0
LAUNCHED = "SPIKEPROP_LAUNCHED"  # set by ``launch`` in its workers: the N of --nproc N
GRACE_S = 10.0  # how long ``launch`` lets the others end on their own after one failed


def shard_sizes(n: int, world: int) -> list[int]:
    """The shard sizes of a batch of ``n`` samples over ``world`` ranks: contiguous, rank order, as even as possible."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def check_batches(batch_size: int, n_train: int, world: int) -> None:
    """Refuse a world size that does not divide the batch, or leaves a rank without samples in the
    epoch's last, shorter batch."""
    if world < 1 or world > MAX_WORLD:
        raise SpikepropError(f"the number of processes must be 1 to {MAX_WORLD}; got {world}")
    if batch_size % world:
        raise SpikepropError(f"{world} processes do not divide --batch-size {batch_size}: each process takes "
                             f"batch-size / processes samples of every batch; use a multiple of {world}")
    last = n_train % batch_size
    if 0 < last < world:
        raise SpikepropError(f"the last batch of each epoch has {last} of the {n_train} training samples, fewer than "
                             f"the {world} processes; pick a --batch-size that leaves 0 or at least {world}")


def env_world() -> tuple[int, int] | None:
    """(rank, world size) from torchrun's environment, or None outside a distributed launch."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE"):
        text = os.environ.get(name)
        try:
            values[name] = int(text)
        except (TypeError, ValueError):
            raise SpikepropError(f"the environment's {name} must be an integer (torchrun sets it); got {text!r}") from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if not 1 <= world <= MAX_WORLD or not 0 <= rank < world:
        raise SpikepropError(f"the environment gives RANK {rank} of WORLD_SIZE {world}; need 0 <= RANK < WORLD_SIZE <= {MAX_WORLD}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise SpikepropError(f"the environment has WORLD_SIZE but no {name}; start the processes with torchrun "
                                 "or spikeprop train --nproc N")
    return rank, world


class Context:
    """One rank of a process group: the shards of the current batch and the collectives the rules use."""

    def __init__(self, rank: int, world: int, timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "cpu"):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.device = device
        self.sizes = [0] * world

    # -- the process group -------------------------------------------------------------------

    @classmethod
    def init(cls, rank: int, world: int, timeout_s: float, device: str) -> Context:
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local if device == "cuda" else torch.device(device))
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError, OSError) as e:
            raise SpikepropError(f"rank {rank} of {world}: cannot join the process group at "
                                 f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({_first(e)})") from None
        ctx = cls(rank, world, timeout_s, device)
        if device == "cuda":
            ctx.device = f"cuda:{torch.cuda.current_device()}"
        return ctx

    def close(self, synchronize: bool = False) -> None:
        """Leave the group. After a finished run every rank first meets the others, so that no rank
        tears down its gloo connections (or rank 0 its TCP store) while another still uses them."""
        import torch.distributed as dist

        if dist.is_initialized():
            if synchronize:
                try:
                    dist.barrier()
                except RuntimeError:
                    pass  # a rank that is gone by now has nothing left to send
            dist.destroy_process_group()

    def _collective(self, what: str, fn):
        try:
            return fn()
        except RuntimeError as e:
            raise SpikepropError(f"rank {self.rank} of {self.world}: {what} failed: another process died or stopped "
                                 f"answering within --dist-timeout {self.timeout_s:g} s ({_first(e)})") from None

    # -- shards ------------------------------------------------------------------------------

    def shard(self, n: int) -> slice:
        """Start a batch of ``n`` samples: this rank's rows of it."""
        self.sizes = shard_sizes(n, self.world)
        lo = sum(self.sizes[: self.rank])
        return slice(lo, lo + self.sizes[self.rank])

    @property
    def rows(self) -> slice:
        lo = sum(self.sizes[: self.rank])
        return slice(lo, lo + self.sizes[self.rank])

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (its rows of the current batch, dim 0) concatenated in rank order: the global batch's."""
        import torch.distributed as dist

        if t.shape[0] != self.sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {self.sizes[self.rank]} rows of the batch, not {t.shape[0]}")
        kind = t.dtype
        t = t.to(torch.uint8) if kind == torch.bool else t  # gloo has no bool all-gather
        width = max(self.sizes)
        padded = t.new_zeros(width, *t.shape[1:])
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._collective("all-gather", lambda: dist.all_gather(parts, padded.contiguous()))
        return torch.cat([p[:n] for p, n in zip(parts, self.sizes)]).to(kind)

    # -- reductions --------------------------------------------------------------------------

    def reduce(self, params: Sequence[torch.nn.Parameter], metrics: dict[str, float]) -> dict[str, float]:
        """Turn this rank's mean gradients and metrics over its shard into the global batch's (module docstring)."""
        import torch.distributed as dist

        w = self.sizes[self.rank] / self.total
        keys = sorted(metrics)
        small = torch.tensor([metrics[k] * w for k in keys] + [float(p.grad is not None) for p in params],
                             dtype=torch.float64)
        self._collective("all-reduce of the metrics", lambda: dist.all_reduce(small))
        has = small[len(keys):] > 0
        flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p, h in zip(params, has) if h]
        if flat:
            buf = torch.cat(flat) * w
            self._collective("all-reduce of the gradients", lambda: dist.all_reduce(buf))
            at = 0
            for p, h in zip(params, has):
                if h:
                    p.grad = buf[at : at + p.numel()].view_as(p).clone()
                    at += p.numel()
        return {k: float(v) for k, v in zip(keys, small[: len(keys)])}

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (pickled: a checkpoint's state, the settings)."""
        import torch.distributed as dist

        box = [obj]
        self._collective("broadcast", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def agree(self, error: str | None) -> None:
        """A sync point: raise on every rank when any rank reports an error. The lowest rank with
        an error raises it (and prints it); every other rank raises a quiet ``PeerError``, so that
        an error all ranks meet alike is printed once."""
        import torch.distributed as dist

        errors = [None] * self.world
        self._collective("all-gather of the ranks' status", lambda: dist.all_gather_object(errors, error))
        bad = [(r, e) for r, e in enumerate(errors) if e is not None]
        if not bad:
            return
        r, e = bad[0]
        if r == self.rank:
            raise SpikepropError(e)
        raise PeerError(f"rank {r}: {e}")

    def barrier(self) -> None:
        import torch.distributed as dist

        self._collective("barrier", lambda: dist.barrier())


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def trained_parameters(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.nn.Parameter]:
    """The parameters of ``optimizers``, each once, in order."""
    seen, out = set(), []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


# -- the launcher of --nproc N ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(cmd: Sequence[str], nproc: int, *, env: dict | None = None, poll_s: float = 0.2) -> int:
    """Run ``cmd`` as ranks 0..nproc-1 of one process group on this machine (torchrun's environment).

    Returns 0 when every worker succeeds. When one fails the others get ``GRACE_S`` seconds to end
    on their own (they notice the lost peer), then are terminated; a worker that did not print its
    own error (killed by a signal, or an unexpected status) gets one line here. Returns the first
    failure's status (1 for a signal)."""
    port = free_port()
    base = {**os.environ, **(env or {}), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), LAUNCHED: str(nproc)}
    procs = []
    try:
        for r in range(nproc):
            procs.append(subprocess.Popen(list(cmd), env={**base, "RANK": str(r), "LOCAL_RANK": str(r),
                                                          "GROUP_RANK": "0"}))
        failed = False
        deadline = None
        stopped: set[int] = set()  # ranks this launcher terminated
        while True:
            codes = [p.poll() for p in procs]
            if not failed and any(c not in (None, 0) for c in codes):
                failed, deadline = True, time.monotonic() + GRACE_S
            if all(c is not None for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                for r, p in enumerate(procs):
                    if p.poll() is None:
                        stopped.add(r)
                        p.terminate()
                for p in procs:
                    try:
                        p.wait(timeout=GRACE_S)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    # The cause: a worker killed by a signal (not by this launcher), else one that reported its own
    # error, else any that failed.
    bad = [(r, c) for r, c in enumerate(codes) if c != 0 and r not in stopped] or \
          [(r, c) for r, c in enumerate(codes) if c != 0]
    r, c = next((rc for rc in bad if rc[1] < 0), None) or next((rc for rc in bad if rc[1] != PEER_EXIT), bad[0])
    if c < 0 or c not in (2, PEER_EXIT, 130):
        print(f"spikeprop train: error: rank {r} of {nproc} {_describe(c)}; the other processes were stopped "
              "(the last committed checkpoint is kept)", file=sys.stderr)
    return 1 if c < 0 else c


def exit_now(code: int) -> None:
    """End a data-parallel worker that has finished and left its group: flush, then ``os._exit``.
    Interpreter shutdown would run the C++ destructors of gloo's threads, which can abort a process
    that has already done everything ("terminate called without an active exception", SIGABRT:
    seen in 2 of 13 two-process test runs on a loaded 2-core machine)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
