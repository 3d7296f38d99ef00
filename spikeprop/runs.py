"""The run directory: the contract between ``train`` and every later command.

    runs/<name>/
      config.json      every resolved setting, plus library versions
      checkpoint.pt    network + rule state (optimizers, extra tensors) + progress; atomic
      metrics.jsonl    one JSON object per completed epoch
      summary.json     final figures (test_accuracy as a fraction, samples_per_second, ...)

Every file is written to a temporary name in the same directory and then renamed over the
old one, so an interrupted write leaves the previous version intact.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from spikeprop import SpikepropError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SpikepropError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpikepropError(f"{path} is corrupt ({e}); restore it or re-run the command that wrote it") from None


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: str | Path, map_location: str = "cpu") -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise SpikepropError(f"{path} does not exist: {run_dir} holds no trained network")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpikepropError(f"{path} is corrupt or truncated ({first}); re-train or restore it") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SpikepropError(f"{path} is not a spikeprop checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory as a Path, or a clear error if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise SpikepropError(f"run directory {run_dir} does not exist")
    if not (path / CONFIG).is_file():
        raise SpikepropError(f"{run_dir} is not a spikeprop run directory (no {CONFIG})")
    return path


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise SpikepropError(f"{path} line {i + 1} is corrupt; delete that line to continue") from None
    return rows


def write_metrics(run_dir: str | Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl with ``rows`` (atomically; rows are small, one per epoch)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())
