"""The run directory: the contract between ``train`` and every later command.

    runs/<name>/
      config.json      every resolved setting, plus library versions
      checkpoint.pt    network + rule state (optimizers, extra tensors) + progress + the metrics rows; atomic
      metrics.jsonl    one JSON object per completed epoch (a copy of the checkpoint's rows)
      summary.json     final figures (test_accuracy as a fraction, samples_per_second, ...)
      .lock            held (flock) by the one process that trains or imports into the directory

Every file is written to a temporary name in the same directory and then renamed over the
old one, so an interrupted write leaves the previous version intact. An epoch is committed by
its checkpoint alone: the checkpoint carries every metrics row and the settings it was trained
with, so a process killed after the checkpoint and before ``metrics.jsonl`` loses nothing
(``train --resume`` rewrites the rows the checkpoint proves).
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from spikeprop import SpikepropError
from spikeprop.files import RunFileError, atomic_write_bytes, prepare_parent, reason

__all__ = ["RunFileError", "atomic_write_bytes", "prepare_parent"]  # re-exported: the run files' writer

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
# 2: the checkpoint also holds the settings it was trained with ("config") and the metrics rows.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
# The files a training process owns in its run directory; their temporary files (from a killed
# writer) are removed when the next process takes the lock.
OWNED = (CONFIG, CHECKPOINT, METRICS, SUMMARY)
CHECKPOINT_KEYS = ("epoch", "train_time_s", "samples_seen", "network", "rule")


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (no bare NaN or Infinity: they are not JSON); the caller maps them to null."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{path}: {e} (map non-finite values to None before writing)") from None
    atomic_write_bytes(path, (text + "\n").encode())


def _reject_constant(name: str):
    raise ValueError(f"the non-JSON number {name}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise SpikepropError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise SpikepropError(f"{path} is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SpikepropError(f"{path} is corrupt ({e}); restore it or re-run the command that wrote it") from None
    except OSError as e:
        raise SpikepropError(f"cannot read {path}: {reason(e)}") from None


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: str | Path, map_location: str = "cpu") -> dict:
    """The checkpoint of a run, after checking every CRC of its zip members (``torch.load`` does not:
    a flipped bit inside a tensor would load and evaluate) and its keys."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise SpikepropError(f"{path} does not exist: {run_dir} holds no trained network")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise SpikepropError(f"{path} is corrupt (the CRC of {bad} does not match: bit rot or a damaged copy); "
                                 "restore it or re-train")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except SpikepropError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            AttributeError, TypeError, IndexError, OverflowError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpikepropError(f"{path} is corrupt or truncated ({first}); re-train or restore it") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise SpikepropError(f"{path} is not a spikeprop checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise SpikepropError(f"{path} lacks {', '.join(missing)}: it is not a complete spikeprop checkpoint")
    if not isinstance(state["network"], dict) or not isinstance(state["rule"], dict):
        raise SpikepropError(f"{path}: 'network' and 'rule' must be state dicts")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise SpikepropError(f"{path}: epoch must be a non-negative integer; got {epoch!r}")
    if "metrics" in state:
        state["metrics"] = check_metrics(state["metrics"], f"{path} (its metrics rows)")
    return state


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory as a Path, or a clear error if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise SpikepropError(f"run directory {run_dir} does not exist" if not path.exists()
                             else f"{run_dir} is not a directory")
    if not (path / CONFIG).is_file():
        raise SpikepropError(f"{run_dir} is not a spikeprop run directory (no {CONFIG})")
    return path


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_metrics(rows: Any, source: str) -> list[dict]:
    """Metrics rows: dicts with epochs 1, 2, ... in order and a test accuracy in [0, 1]."""
    if not isinstance(rows, list):
        raise SpikepropError(f"{source}: metrics must be a list of rows")
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        if not isinstance(row, dict):
            raise SpikepropError(f"{where} is not an object: {row!r}")
        if row.get("epoch") != i + 1 or isinstance(row.get("epoch"), bool):
            raise SpikepropError(f"{where} must be epoch {i + 1}; got {row.get('epoch')!r}")
        acc = row.get("test_accuracy")
        if not _number(acc) or not 0.0 <= acc <= 1.0:
            raise SpikepropError(f"{where}: test_accuracy must be a fraction in [0, 1]; got {acc!r}")
    return rows


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpikepropError(f"cannot read {path}: {e}") from None
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, parse_constant=_reject_constant))
        except (json.JSONDecodeError, ValueError):
            raise SpikepropError(f"{path} line {i + 1} is corrupt; delete that line to continue") from None
    return check_metrics(rows, str(path))


def write_metrics(run_dir: str | Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl with ``rows`` (atomically; rows are small, one per epoch)."""
    text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


class RunLock:
    """Exclusive ownership of a run directory: ``flock`` on ``RUN_DIR/.lock``.

    The kernel releases the lock when its process ends, however it ends, so a killed run leaves
    no stale lock; a second process gets a clear error instead of interleaving its files with
    the first one's. On entry, the temporary files a killed writer left behind are removed.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise SpikepropError(f"{self.run_dir} exists and is not a directory; pick another --out")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise SpikepropError(f"cannot use {self.run_dir} as a run directory: {reason(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpikepropError(f"{self.run_dir} is in use by another spikeprop process (it holds {LOCK}); "
                                 "wait for it to finish or pick another --out") from None
        self._fd = fd
        for name in OWNED:
            for tmp in self.run_dir.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def clear(self) -> None:
        """Delete everything in the directory but the lock (``--overwrite``), holding the lock."""
        import shutil

        for entry in self.run_dir.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
