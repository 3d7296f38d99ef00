#!/usr/bin/env python
"""Run every hostile input of ``tests/hostile.py`` as a real ``spikeprop`` process and count outcomes.

    .venv/bin/python scripts/hostile_inputs.py            # all cases (about 10 minutes on 2 cores)
    .venv/bin/python scripts/hostile_inputs.py --only toml # the cases whose id contains 'toml'

Each case starts from a copy of one small trained digits run. An outcome is *clean* when the
process exits with status 2, prints no traceback and exactly one error line (argparse may print
its usage first) containing the case's phrase; otherwise it is a *traceback*, an *exit 0 on
nonsense*, or *other* (a different status or message). Library-level cases (``python:module.fn``,
e.g. ``hardware.loihi.load``) run in a child Python that reports a SpikepropError as one line.
Exit status 1 when any case is not clean.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import CASES, RUN_ARGS  # noqa: E402

LIBRARY_CALL = """
import importlib, sys
from spikeprop import SpikepropError
module, _, name = sys.argv[1].rpartition(".")
try:
    getattr(importlib.import_module(module), name)(*sys.argv[2:])
except SpikepropError as e:
    print(f"{name}: error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def command(argv: list[str]) -> list[str]:
    if argv[0].startswith("python:"):
        return [sys.executable, "-c", LIBRARY_CALL, argv[0][len("python:"):], *argv[1:]]
    return [sys.executable, "-m", "spikeprop", *argv]


def classify(code: int, err: str, phrase: str) -> str:
    lines = err.strip().splitlines()
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        return "exit 0 on nonsense"
    errors = [line for line in lines if "error:" in line]
    if code == 2 and len(errors) == 1 and lines[-1] == errors[0] and phrase.lower() in err.lower():
        return "clean"
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run only the cases whose id contains this text")
    ap.add_argument("--verbose", action="store_true", help="print every case's outcome")
    args = ap.parse_args()
    cases = [c for c in CASES if args.only is None or args.only in c.id]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    counts: dict[str, int] = {}
    failures = []
    with tempfile.TemporaryDirectory(prefix="spikeprop-hostile-") as top:
        base = Path(top) / "base-run"
        subprocess.run([sys.executable, "-m", "spikeprop", "train", "--out", str(base), *RUN_ARGS], check=True,
                       env=env, capture_output=True, cwd=ROOT)
        for i, case in enumerate(cases):
            tmp = Path(top) / f"case{i}"
            tmp.mkdir()
            run = tmp / "run"
            shutil.copytree(base, run)
            argv = case.resolve(tmp, run)
            # binned event frames go to the case's folder, not the user's cache
            proc = subprocess.run(command(argv), env={**env, "XDG_CACHE_HOME": str(tmp / "cache")}, capture_output=True,
                                  text=True, cwd=ROOT, timeout=600)
            outcome = classify(proc.returncode, proc.stderr, case.phrase)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome != "clean":
                failures.append((case.id, outcome, proc.returncode, proc.stderr.strip().splitlines()[-3:]))
            if args.verbose:
                print(f"{outcome:<20} {case.id}")
            shutil.rmtree(tmp)
    total = len(cases)
    print(f"hostile inputs tried: {total}; answered cleanly: {counts.get('clean', 0)}")
    for outcome in ("traceback", "exit 0 on nonsense", "other"):
        if counts.get(outcome):
            print(f"  {outcome}: {counts[outcome]}")
    for cid, outcome, code, tail in failures:
        print(f"- {cid}: {outcome} (status {code}): {' | '.join(tail)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
