"""Faults: kills at any moment, two processes on one run directory, full disks, read-only paths.

The kill tests run ``spikeprop train`` as a real process and signal it while it trains; whatever
step the signal lands in, ``--resume`` must finish with the weights of an uninterrupted run.
"""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikeprop import runs
from spikeprop.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden", "32", "--steps", "4", "--encoding", "rate", "--no-progress"]


def spikeprop_process(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "spikeprop", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def metric_rows(run: Path) -> int:
    try:
        return len((run / runs.METRICS).read_text().splitlines())
    except OSError:
        return 0


def weights(run: Path) -> dict:
    return runs.load_checkpoint(run)["network"]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    untimed = lambda run: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in runs.read_metrics(run)]  # noqa: E731
    assert untimed(a) == untimed(b)
    assert runs.read_json(a / runs.SUMMARY)["test_accuracy"] == runs.read_json(b / runs.SUMMARY)["test_accuracy"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "full"
    assert main(["train", "--out", str(out), "--epochs", "3", *TINY]) == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_signal_mid_run_then_resume_gives_the_uninterrupted_run(sig, uninterrupted, tmp_path):
    run = tmp_path / "run"
    proc = spikeprop_process("train", "--out", str(run), "--epochs", "3", *TINY)
    wait_for(lambda: metric_rows(run) >= 1 or proc.poll() is not None, what="the first epoch")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the run finished before the signal: nothing was interrupted"
    assert "Traceback" not in err
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "--resume" in err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, uninterrupted)
    assert not list(run.glob(".*.tmp"))


def test_a_second_process_on_the_same_run_directory_is_refused_and_a_killed_owner_leaves_no_stale_lock(tmp_path, capsys):
    run = tmp_path / "run"
    owner = spikeprop_process("train", "--out", str(run), "--epochs", "200", *TINY)
    try:
        wait_for(lambda: metric_rows(run) >= 1, what="the owner's first epoch")
        assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 2
        assert "in use by another spikeprop process" in capsys.readouterr().err
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        owner.kill()
        owner.communicate()
    done = runs.load_checkpoint(run)["epoch"]
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--no-progress"]) == 0
    assert runs.load_checkpoint(run)["epoch"] == done + 1
    assert [r["epoch"] for r in runs.read_metrics(run)] == list(range(1, done + 2))


def test_ctrl_c_while_starting_up_prints_no_traceback(tmp_path):
    proc = spikeprop_process("train", "--out", str(tmp_path / "run"), *TINY)
    time.sleep(0.3)  # inside the imports (torch alone takes longer than this)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err


def test_a_kill_between_checkpoint_and_metrics_is_repaired_on_resume(uninterrupted, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = runs.write_metrics

    def dies_after_epoch_2(run_dir, rows):  # call 1: the empty table at the start; call k + 1: after epoch k
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(run_dir, rows)

    monkeypatch.setattr(runs, "write_metrics", dies_after_epoch_2)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "3", *TINY]) == 130
    monkeypatch.setattr(runs, "write_metrics", original)
    assert runs.load_checkpoint(run)["epoch"] == 2 and len(runs.read_metrics(run)) == 1  # the row of epoch 2 is lost
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, uninterrupted)


def test_a_one_epoch_run_killed_before_its_summary_is_finished_by_resume(tmp_path, monkeypatch):
    original = runs.write_json

    def no_summary(path, obj):
        if Path(path).name == runs.SUMMARY:
            raise KeyboardInterrupt
        original(path, obj)

    monkeypatch.setattr(runs, "write_json", no_summary)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 130
    monkeypatch.setattr(runs, "write_json", original)
    assert not (run / runs.SUMMARY).exists() and runs.load_checkpoint(run)["epoch"] == 1
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    summary = runs.read_json(run / runs.SUMMARY)
    assert summary["test_accuracy"] == runs.read_metrics(run)[-1]["test_accuracy"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 0
    stale = [run / ".checkpoint.pt.abc123.tmp", run / ".metrics.jsonl.x.tmp", run / ".summary.json.y.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    foreign = run / ".verify.json.z.tmp"  # another command's file in flight: not ours to delete
    foreign.write_text("{}")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert not any(p.exists() for p in stale) and foreign.exists()


def test_a_full_disk_during_the_checkpoint_keeps_the_last_one(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 0
    before = (run / runs.CHECKPOINT).read_bytes()
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{runs.CHECKPOINT}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "disk is full" in err and str(run / runs.CHECKPOINT) in err
    assert (run / runs.CHECKPOINT).read_bytes() == before and not list(run.glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0


@pytest.mark.parametrize("command", ["train", "resume", "import", "export", "analyze"])
def test_a_read_only_directory_is_a_one_line_error(command, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 0
    nir_file = tmp_path / "net.nir"
    assert main(["export", str(run), "--to", "nir", "--out", str(nir_file)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    import tempfile

    def read_only(*args, **kwargs):  # what mkstemp meets in a read-only directory (as root, chmod cannot show it)
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    argv = {"train": ["train", "--out", str(tmp_path / "new"), "--epochs", "1", *TINY],
            "resume": ["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
            "import": ["import", str(nir_file), "--out", str(tmp_path / "imported")],
            "export": ["export", str(run), "--to", "lava", "--out", str(tmp_path / "net.npz")],
            "analyze": ["analyze", str(run), "--limit", "20"]}[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only" in err.lower(), err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_really_read_only_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 0
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
        assert "permission denied" in capsys.readouterr().err.lower()
    finally:
        run.chmod(stat.S_IRWXU)


def test_a_diverging_run_stops_with_the_epoch_and_batch_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from spikeprop.rules import RULES

    run = tmp_path / "run"
    original = RULES["sigprop"].train_step
    calls = {"n": 0}
    per_epoch = -(-1437 // 32)

    def diverges_in_epoch_2(self, x, y):
        calls["n"] += 1
        out = original(self, x, y)
        return {**out, "loss": float("nan")} if calls["n"] == per_epoch + 3 else out

    monkeypatch.setattr(RULES["sigprop"], "train_step", diverges_in_epoch_2)
    assert main(["train", "--out", str(run), "--epochs", "3", "--hidden", "16", "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "epoch 2, batch 3" in err and "checkpoint of epoch 1 is kept" in err
    assert runs.load_checkpoint(run)["epoch"] == 1
    text = (run / runs.METRICS).read_text() + (run / runs.CONFIG).read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_files_are_written_with_the_usual_permissions(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", *TINY]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for name in (runs.CONFIG, runs.CHECKPOINT, runs.METRICS, runs.SUMMARY):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~mask, name
    json.loads((run / runs.CONFIG).read_text())
