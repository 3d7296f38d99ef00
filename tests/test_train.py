"""The command line and the training harness: accuracy, run directory, seeding, resume, errors."""

import json
import os

import pytest
import torch

from spikeprop import runs
from spikeprop.cli import main
from tests.test_data import write_idx_set

SMALL = ["--hidden", "32", "--steps", "4", "--no-progress"]


def train(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["train", "--out", str(out), *args]) == 0
    return out


def states_equal(a, b):
    ca, cb = runs.load_checkpoint(a), runs.load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"]
    for key in ca["network"]:
        assert torch.equal(ca["network"][key], cb["network"][key]), key
    return ca, cb


@pytest.mark.parametrize("rule", ["sigprop", "bptt"])
def test_default_digits_run_reaches_target(tmp_path, rule, capsys):
    out = train(tmp_path, rule, "--rule", rule, "--neurons", "lif", "--no-progress")
    summary = runs.read_json(out / runs.SUMMARY)
    assert summary["test_accuracy"] >= 0.95, summary
    for key in ("test_accuracy", "rule", "neurons", "dataset", "steps", "epochs", "samples_per_second",
                "peak_memory_mib", "seed"):
        assert key in summary
    assert summary["rule"] == rule and summary["dataset"] == "digits"
    config = runs.read_json(out / runs.CONFIG)
    assert config["hidden"] == [256] and config["rule_options"]
    metrics = runs.read_metrics(out)
    assert [m["epoch"] for m in metrics] == list(range(1, summary["epochs"] + 1))
    assert "run directory" in capsys.readouterr().out
    # evaluate re-computes the same figure from the checkpoint
    assert main(["evaluate", str(out)]) == 0
    assert f"test accuracy {summary['test_accuracy']:.4f}" in capsys.readouterr().out


def test_sigprop_surrogate_variant_learns(tmp_path):
    out = train(tmp_path, "sur", "--rule", "sigprop", "--sigprop-variant", "surrogate", "--epochs", "3", *SMALL)
    assert runs.read_json(out / runs.SUMMARY)["test_accuracy"] > 0.7


def test_same_seed_gives_bit_identical_weights(tmp_path):
    for rule in ("sigprop", "bptt"):
        a = train(tmp_path, f"a-{rule}", "--rule", rule, "--epochs", "2", "--encoding", "rate", *SMALL)
        b = train(tmp_path, f"b-{rule}", "--rule", rule, "--epochs", "2", "--encoding", "rate", *SMALL)
        c = train(tmp_path, f"c-{rule}", "--rule", rule, "--epochs", "2", "--encoding", "rate", "--seed", "1", *SMALL)
        states_equal(a, b)
        assert not torch.equal(runs.load_checkpoint(a)["network"]["weights.0"],
                               runs.load_checkpoint(c)["network"]["weights.0"])


@pytest.mark.parametrize("rule", ["sigprop", "bptt"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, rule, monkeypatch):
    full = train(tmp_path, "full", "--rule", rule, "--epochs", "3", "--encoding", "rate", *SMALL)
    # Interrupt in the middle of epoch 2: the checkpoint of epoch 1 stays, resume finishes the run.
    from spikeprop.rules import RULES

    calls = {"n": 0}
    original = RULES[rule].train_step

    def flaky(self, x, y):
        calls["n"] += 1
        if calls["n"] == 60:
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(RULES[rule], "train_step", flaky)
    part = tmp_path / "part"
    assert main(["train", "--out", str(part), "--rule", rule, "--epochs", "3", "--encoding", "rate", *SMALL]) == 130
    assert runs.load_checkpoint(part)["epoch"] == 1
    monkeypatch.setattr(RULES[rule], "train_step", original)
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    ca, cb = states_equal(full, part)
    assert [m["epoch"] for m in runs.read_metrics(part)] == [1, 2, 3]
    assert runs.read_metrics(full)[-1]["test_accuracy"] == runs.read_metrics(part)[-1]["test_accuracy"]


def test_resume_can_extend_epochs(tmp_path):
    a = train(tmp_path, "a", "--epochs", "1", *SMALL)
    assert main(["train", "--resume", str(a), "--epochs", "2", "--no-progress"]) == 0
    assert runs.load_checkpoint(a)["epoch"] == 2


def test_toml_config_and_flag_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('rule = "bptt"\nhidden = [24, 12]\nsteps = 5\nepochs = 1\n[bptt]\nalpha = 3.0\n')
    out = train(tmp_path, "t", "--config", str(cfg), "--steps", "3", "--no-progress")
    config = runs.read_json(out / runs.CONFIG)
    assert config["rule"] == "bptt" and config["hidden"] == [24, 12] and config["steps"] == 3
    assert config["rule_options"]["alpha"] == 3.0


def test_if_neurons_record_zero_leak(tmp_path):
    out = train(tmp_path, "if", "--neurons", "if", "--epochs", "1", *SMALL)
    assert runs.read_json(out / runs.CONFIG)["dv"] == 0.0


def test_fashion_mnist_from_idx_files(tmp_path):
    data = tmp_path / "fm"
    data.mkdir()
    write_idx_set(data, n_train=64, n_test=32)
    out = train(tmp_path, "fm", "--dataset", "fashion-mnist", "--data-dir", str(data), "--epochs", "1",
                "--batch-size", "16", *SMALL)
    assert 0.0 <= runs.read_json(out / runs.SUMMARY)["test_accuracy"] <= 1.0


def test_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    runs.write_json(path, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        runs.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    assert "--dv=1.5 is outside" not in error_of(capsys, ["train", "--dv", "1.5", "--out", str(tmp_path / "x")])
    assert "du=" in error_of(capsys, ["train", "--du", "2", "--out", str(tmp_path / "x")])
    assert "does not exist" in error_of(capsys, ["evaluate", str(tmp_path / "missing")])
    assert "belong" in error_of(capsys, ["train", "--rule", "bptt", "--sigprop-tau", "0.2"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not found" in error_of(capsys, ["train", "--dataset", "mnist", "--data-dir", str(empty)])
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 3\n")
    assert "unknown key" in error_of(capsys, ["train", "--config", str(bad)])
    bad.write_text("steps = [\n")
    assert "not valid TOML" in error_of(capsys, ["train", "--config", str(bad)])
    run = train(tmp_path, "r", "--epochs", "1", *SMALL)
    assert "already holds a run" in error_of(capsys, ["train", "--out", str(run), *SMALL])
    assert "only --epochs and --device" in error_of(capsys, ["train", "--resume", str(run), "--hidden", "8"])
    (run / runs.CHECKPOINT).write_bytes((run / runs.CHECKPOINT).read_bytes()[:200])
    assert "corrupt" in error_of(capsys, ["evaluate", str(run)])
    assert "corrupt" in error_of(capsys, ["train", "--resume", str(run)])
    (run / runs.CONFIG).write_text("{not json")
    assert "corrupt" in error_of(capsys, ["evaluate", str(run)])


@pytest.mark.parametrize("argv", [["train", "--rule", "nope"], ["train", "--neurons", "hh"], ["train", "--hidden", "0"],
                                  ["train", "--hidden", "a,b"]])
def test_argparse_rejects_bad_choices(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "spikeprop train: error: argument" in capsys.readouterr().err


def test_help_documents_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--rule", "--neurons", "--dataset", "--data-dir", "--steps", "--hidden", "--epochs", "--batch-size",
                 "--lr", "--seed", "--encoding", "--device", "--out", "--resume", "--config", "--sigprop-variant"):
        assert flag in text
