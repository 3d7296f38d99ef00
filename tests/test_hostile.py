"""Every hostile input of ``tests/hostile.py`` is a one-line error with exit status 2, in-process.

``scripts/hostile_inputs.py`` runs the same table as real ``spikeprop`` processes and counts them.
"""

import importlib
import shutil

import pytest

from spikeprop import SpikepropError
from spikeprop.cli import main
from tests.hostile import CASES, RUN_ARGS


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "--out", str(run), *RUN_ARGS]) == 0
    return run


def run_case(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of one case; ``python:module.function ARG`` calls a library function."""
    if argv[0].startswith("python:"):
        module, _, name = argv[0][len("python:"):].rpartition(".")
        try:
            getattr(importlib.import_module(module), name)(*argv[1:])
        except SpikepropError as e:
            return 2, f"error: {e}"
        return 0, ""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def is_clean_error(code: int, err: str) -> bool:
    """Status 2, no traceback, and one error line (argparse may put its usage lines before it)."""
    lines = err.strip().splitlines()
    return code == 2 and bool(lines) and "Traceback" not in err and "error:" in lines[-1] \
        and sum("error:" in line for line in lines) == 1


def test_the_table_is_large():
    assert len(CASES) >= 280 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_a_one_line_error(case, tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # binned event frames stay in the test's folder
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = case.resolve(tmp_path, run)
    capsys.readouterr()
    code, err = run_case(argv, capsys)
    assert is_clean_error(code, err), (code, err)
    assert case.phrase.lower() in err.lower(), err
