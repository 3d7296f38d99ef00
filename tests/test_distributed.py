"""Data-parallel training (spikeprop.distributed) with 2 gloo processes on CPU.

Tolerance: 2 processes compute each gradient as two half-batch sums that are then added by the
all-reduce, one process as one sum over the batch; float32 addition is not associative, so the
weights differ by rounding (about 1e-7 after one epoch, measured). ATOL = 1e-5 allows that
rounding to grow through one epoch of Adam steps while a real error (a wrong shard, a missing
all-reduce, a gradient not divided by the global batch) moves weights by ~1e-3 or more.
"""

import json
import subprocess
import sys

import pytest
import torch

from spikeprop import runs
from spikeprop.cli import main

ATOL = 1e-5
SMALL = ["--hidden", "32", "--steps", "4", "--no-progress"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "spikeprop", "train", *args], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def max_diff(a, b):
    ca, cb = runs.load_checkpoint(a), runs.load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"]
    return max(float((ca["network"][k] - cb["network"][k]).abs().max()) for k in ca["network"])


@pytest.mark.parametrize("rule,encoding", [("sigprop", "rate"), ("bptt", "rate"), ("f3", "direct")])
def test_two_processes_train_the_weights_of_one(tmp_path, rule, encoding):
    args = [*SMALL, "--rule", rule, "--encoding", encoding, "--epochs", "1"]
    assert main(["train", "--out", str(tmp_path / "one"), *args]) == 0
    r = cli("--out", str(tmp_path / "two"), *args, "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert max_diff(tmp_path / "one", tmp_path / "two") <= ATOL
    assert runs.read_json(tmp_path / "two" / runs.CONFIG)["world_size"] == 2
    assert runs.read_json(tmp_path / "two" / runs.SUMMARY)["world_size"] == 2
    one = runs.read_metrics(tmp_path / "one")[0]
    two = runs.read_metrics(tmp_path / "two")[0]
    assert abs(one["loss"] - two["loss"]) < 1e-4 and one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=0.01)


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes(tmp_path, first, then):
    args = [*SMALL, "--encoding", "rate"]
    assert main(["train", "--out", str(tmp_path / "ref"), *args, "--epochs", "2"]) == 0
    r = cli("--out", str(tmp_path / "run"), *args, "--epochs", "1", "--nproc", str(first))
    assert r.returncode == 0, r.stderr
    r = cli("--resume", str(tmp_path / "run"), "--epochs", "2", "--nproc", str(then))
    assert r.returncode == 0, r.stderr
    assert runs.read_json(tmp_path / "run" / runs.CONFIG)["world_size"] == then
    assert max_diff(tmp_path / "ref", tmp_path / "run") <= ATOL


def test_old_config_without_world_size_loads(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, "--epochs", "1"]) == 0
    cfg = json.loads((out / runs.CONFIG).read_text())
    del cfg["world_size"]
    (out / runs.CONFIG).write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0


@pytest.mark.parametrize("flags,message", [
    (["--nproc", "3"], "do not divide --batch-size 32"),
    (["--nproc", "0"], "must be >= 1"),
    (["--nproc", "x"], "not an integer"),
    (["--nproc", "100000"], "at most 1024"),
    (["--dist-timeout", "-1"], "finite number > 0"),
    (["--dist-timeout", "5"], "--dist-timeout applies to data-parallel"),
])
def test_bad_setups_give_one_line_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) if flags[1] in ("0", "x", "100000", "-1") else _nothing():
        code = main(["train", "--out", str(tmp_path / "r"), *SMALL, "--epochs", "1", *flags])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]  # argparse's errors come after its usage line
    assert not (tmp_path / "r" / runs.CHECKPOINT).exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_killed_rank_ends_the_run_and_keeps_the_checkpoint(tmp_path):
    """Rank 1 is SIGKILLed after the first checkpoint; the launcher must end (no hang), non-zero,
    with the epoch-1 checkpoint intact."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "spikeprop", "train", "--out", str(out), "--hidden", "64", "--steps", "8",
                          "--epochs", "400", "--no-progress", "--nproc", "2", "--dist-timeout", "30"],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / runs.CHECKPOINT).exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert (out / runs.CHECKPOINT).exists()
    from pathlib import Path

    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    rank1 = [k for k in kids if b"RANK=1\0" in Path(f"/proc/{k}/environ").read_bytes()]
    os.kill(int(rank1[0]), signal.SIGKILL)
    _, err = p.communicate(timeout=90)
    p.stderr.close()
    assert p.returncode != 0
    assert "rank 1 of 2 was killed by SIGKILL" in err, err
    ckpt = runs.load_checkpoint(out)
    assert ckpt["epoch"] >= 1 and all(torch.isfinite(v).all() for v in ckpt["network"].values())
