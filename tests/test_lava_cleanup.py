"""`spikeprop verify` leaves no Lava process, shared memory or temporary directory behind, however it ends.

Each test starts `spikeprop verify RUN` as its own process with TMPDIR in the test's directory
(so the Lava run's temporary directory, and the command line of the Lava child and of every
worker it forks, name that directory), waits until Lava's workers run, signals the command and
checks that within a few seconds nothing of the run is left.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardware import lava
from spikeprop.cli import main

ROOT = Path(__file__).resolve().parent.parent
START_S = 60  # the longest wait for Lava's workers to appear (imports and compile on a busy machine)
GONE_S = 5  # how long cleanup may take after the signal
TEMP_PREFIX = "spikeprop-lava-"  # hardware.lava.run's temporary directories


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    # T = 40: Lava's run of the 360 test samples lasts well beyond GONE_S, so a worker that
    # outlived its parent would still be there when the test looks.
    run = tmp_path_factory.mktemp("verify") / "run"
    assert main(["train", "--hidden", "16", "--epochs", "1", "--steps", "40", "--out", str(run), "--no-progress"]) == 0
    return run


def live_processes(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(entry.name))
    return found


def start_verify(run: Path, tmp: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start `spikeprop verify` with TMPDIR=tmp; return it once the Lava child and a worker run."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "spikeprop", "verify", str(run), "--limit", "360"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and proc.poll() is None:
        pids = [pid for pid in live_processes(str(tmp)) if pid != proc.pid]
        if len(pids) >= 2:  # the child and at least one of its Lava workers
            return proc, pids
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"Lava's workers never appeared (status {proc.returncode}): {err[-2000:]}")


def assert_nothing_left(tmp: Path, segments: set[str]) -> None:
    deadline = time.monotonic() + GONE_S
    while time.monotonic() < deadline and (live_processes(str(tmp)) or list(tmp.glob(f"{TEMP_PREFIX}*"))):
        time.sleep(0.05)
    assert live_processes(str(tmp)) == []
    assert list(tmp.glob(f"{TEMP_PREFIX}*")) == []
    assert [s for s in segments if Path(s).exists()] == []


@pytest.mark.lava
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT], ids=["SIGTERM", "SIGKILL", "SIGINT"])
def test_verify_leaves_nothing_behind_when_signalled(tiny_run, tmp_path, sig):
    proc, pids = start_verify(tiny_run, tmp_path)
    assert list(tmp_path.glob(f"{TEMP_PREFIX}*"))  # the run's temporary directory exists
    segments = lava._shared_memory(pids)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGKILL: -signal.SIGKILL,
                               signal.SIGINT: 130}[sig]
    if sig == signal.SIGINT:  # verify has no checkpoint to resume from: no --resume advice
        assert "spikeprop verify: interrupted" in err and "--resume" not in err
    assert_nothing_left(tmp_path, segments)


def test_interrupted_evaluate_does_not_advise_resume(tiny_run, capsys, monkeypatch):
    from spikeprop import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_evaluate", interrupted)
    monkeypatch.setattr(cli, "cmd_train", interrupted)
    assert main(["evaluate", str(tiny_run)]) == 130
    err = capsys.readouterr().err
    assert "spikeprop evaluate: interrupted" in err and "--resume" not in err
    assert main(["train", "--out", str(tiny_run.parent / "other")]) == 130
    assert "continue with --resume RUN_DIR" in capsys.readouterr().err
