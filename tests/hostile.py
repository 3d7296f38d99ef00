"""Hostile inputs: every flag and file field with wrong types, NaN, infinities, zero and huge values,
truncated and bit-flipped files. One table, used twice:

- ``tests/test_hostile.py`` runs every case in-process through ``spikeprop.cli.main``;
- ``scripts/hostile_inputs.py`` runs every case as a real ``spikeprop`` process and counts the
  outcomes (clean one-line error / traceback / exit 0 on nonsense).

A case is ``argv`` (with ``{run}``, ``{tmp}``, ``{file}`` placeholders), an optional ``setup(tmp,
run) -> file`` that damages a copy of a small trained run or writes a file, and a phrase the
one-line error must contain. Every case must end with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import gzip
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A tiny digits run every case starts from (a copy of it): trained once per session.
RUN_ARGS = ["--hidden", "8", "--steps", "2", "--epochs", "1", "--no-progress"]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    phrase: str
    setup: Callable[[Path, Path], Path | None] | None = None

    def resolve(self, tmp: Path, run: Path) -> list[str]:
        file = self.setup(tmp, run) if self.setup else None
        return [a.format(run=run, tmp=tmp, file=file) for a in self.argv]


CASES: list[Case] = []


def case(id: str, argv: str | list[str], phrase: str, setup=None) -> None:
    CASES.append(Case(id, tuple(argv.split() if isinstance(argv, str) else argv), phrase, setup))


# --- train flags: numbers out of range, wrong values ------------------------------------------
OUT = "--out {tmp}/new --no-progress"
for flag, values, phrase in [
    ("--lr", ["inf", "nan", "0", "-1", "1e400"], "--lr"),
    ("--vth", ["inf", "nan", "0", "-1", "1e7"], "--vth"),
    ("--du", ["nan", "-0.1", "2"], "--du"),
    ("--dv", ["nan", "1.5", "-inf"], "--dv"),
    ("--steps", ["0", "-1", "1000000"], "--steps"),
    ("--epochs", ["0", "-5"], "--epochs"),
    ("--batch-size", ["0", "10000000"], "--batch-size"),
    ("--seed", ["99999999999999999999", "-1"], "--seed"),
    ("--device", ["meta", "banana", "cuda:x", "5"], "--device"),
    ("--hidden", ["1000000000", "0,5"], "hidden"),
]:
    for v in values:
        case(f"train {flag} {v}", f"train {flag} {v} {OUT}", phrase)
case("train --hidden 1,,2", f"train --hidden 1,,2 {OUT}", "layer sizes")
case("train --hidden x", f"train --hidden x {OUT}", "layer sizes")
case("train --hidden too big to train", f"train --hidden 200000,200000 {OUT}", "GiB")
case("train --out ''", ["train", "--out", "", "--no-progress"], "empty path")
case("train --data-dir ''", ["train", "--data-dir", "", "--out", "{tmp}/x"], "empty path")
case("train --config ''", ["train", "--config", "", "--out", "{tmp}/x"], "empty path")
for rule, flag, values in [
    ("sigprop", "--sigprop-tau", ["0", "nan", "-1", "inf"]),
    ("sigprop", "--sigprop-readout-lr", ["0", "nan"]),
    ("bptt", "--bptt-alpha", ["nan", "0", "-2"]),
    ("pepita", "--pepita-momentum", ["1", "-0.5"]),
    ("pepita", "--pepita-F-scale", ["0", "inf"]),
    ("pepita", "--pepita-wm-pre-steps", ["-1"]),
    ("ff", "--ff-label-scale", ["0"]),
    ("ff", "--ff-alpha", ["inf"]),
    ("ff", "--ff-theta", ["-1"]),
    ("dfa", "--dfa-readout-lr", ["0"]),
    ("f3", "--f3-readout-lr", ["nan"]),
]:
    for v in values:
        case(f"train --rule {rule} {flag} {v}", f"train --rule {rule} {flag} {v} {OUT}", flag)
case("train flag of another rule", f"train --rule bptt --sigprop-tau 0.2 {OUT}", "belong")


# --- train --config FILE.toml: wrong types, tables, encodings --------------------------------
def toml(text: str | bytes):
    def setup(tmp: Path, run: Path) -> Path:
        path = tmp / "c.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return setup


for text, phrase in [
    ('hidden = "abc"', "--hidden"), ("hidden = 5", "--hidden"), ("hidden = []", "--hidden"),
    ("hidden = [0]", "--hidden"), ("hidden = [1.5]", "--hidden"), ("hidden = [true]", "--hidden"),
    ("steps = 2.5", "--steps"), ('steps = "10"', "--steps"), ("steps = true", "--steps"),
    ("epochs = 1.5", "--epochs"), ('lr = "fast"', "--lr"), ("lr = nan", "--lr"), ("lr = inf", "--lr"),
    ("device = 5", "--device"), ('dataset = ["x"]', "dataset"), ('seed = "x"', "--seed"),
    ("rule = 5", "rule"), ('rule = "nope"', "unknown rule"), ("batch_size = true", "--batch-size"),
    ('[sigprop]\ntau = "abc"', "--sigprop-tau"), ("[sigprop]\ntau = 0", "--sigprop-tau"),
    ("[sigprop]\nnope = 1", "no option"), ("[bptt]\nalpha = 2.0", "[bptt]"), ("[foo]\nx = 1", "not a rule"),
    ('encoding = "morse"', "--encoding"), ('quantize = "int4"', "--quantize"), ('data_dir = 5', "--data-dir"),
    ("colour = 3", "unknown key"), ("steps = [", "not valid TOML"),
]:
    case(f"toml {text!r}", "train --config {file} --out {tmp}/new --no-progress", phrase, toml(text))
case("toml not UTF-8", "train --config {file} --out {tmp}/x", "UTF-8", toml(b"steps = 5\n# \xff\xfe\n"))
case("toml is a directory", "train --config {tmp} --out {tmp}/x", "directory")
case("toml missing", "train --config {tmp}/none.toml --out {tmp}/x", "does not exist")


# --- run directories: config.json, checkpoint.pt, metrics.jsonl damaged -------------------------
def edit_config(change: Callable[[dict], object]):
    def setup(tmp: Path, run: Path) -> None:
        path = run / "config.json"
        raw = json.loads(path.read_text())
        out = change(raw)  # a string replaces the file, another value the JSON, None keeps the edited raw
        path.write_text(out if isinstance(out, str) else json.dumps(raw if out is None else out))

    return setup


def _set(**kv):
    return lambda raw: raw.update(kv)


CONFIG_CASES = [
    ("config.json is a list", lambda raw: [1, 2], "table of settings"),
    ("config.json is 5", lambda raw: 5, "table of settings"),
    ("config.json is null", lambda raw: "null", "table of settings"),
    ("config.json is {}", lambda raw: {}, "lacks"),
    ("config.json lacks steps", lambda raw: raw.pop("steps") and None, "lacks steps"),
    ("config.json edited steps", _set(steps=3), "other settings"),
    ("config.json edited vth", _set(vth=0.5), "other settings"),
    ("config.json edited rule", _set(rule="bptt"), "has no option"),
    ("config.json edited rule and options", _set(rule="dfa", rule_options={}), "other settings"),
    ("config.json edited hidden", _set(hidden=[9]), "other settings"),
    ("config.json steps string", _set(steps="2"), "--steps"),
    ("config.json NaN", lambda raw: json.dumps(raw).replace('"lr": 0.001', '"lr": NaN'), "corrupt"),
    ("config.json unknown key", _set(colour=1), "unknown key"),
    ("config.json not JSON", lambda raw: "{not json", "corrupt"),
]
for name, change, phrase in CONFIG_CASES:
    case(f"evaluate: {name}", "evaluate {run}", phrase, edit_config(change))
    case(f"resume: {name}", "train --resume {run} --epochs 2 --no-progress", phrase, edit_config(change))


def edit_checkpoint(change: Callable[[dict], dict | None], fmt: int | None = None):
    def setup(tmp: Path, run: Path) -> None:
        import torch

        path = run / "checkpoint.pt"
        state = torch.load(path, weights_only=True)
        out = change(state)
        state = state if out is None else out
        if fmt is not None:
            state["format"] = fmt
        torch.save(state, path)

    return setup


def _drop(*keys):
    return lambda s: [s.pop(k) for k in keys] and None


def flip_tensor_byte(tmp: Path, run: Path) -> None:
    path = run / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def write_bytes(data: bytes):
    def setup(tmp: Path, run: Path) -> None:
        (run / "checkpoint.pt").write_bytes(data)

    return setup


def truncate_checkpoint(tmp: Path, run: Path) -> None:
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:300])


CHECKPOINT_CASES = [
    ("checkpoint lacks network", edit_checkpoint(_drop("network")), "lacks network"),
    ("checkpoint lacks epoch", edit_checkpoint(_drop("epoch")), "lacks epoch"),
    ("checkpoint epoch -1", edit_checkpoint(lambda s: s.update(epoch=-1)), "epoch"),
    ("checkpoint epoch string", edit_checkpoint(lambda s: s.update(epoch="1")), "epoch"),
    ("checkpoint network is a list", edit_checkpoint(lambda s: s.update(network=[1])), "state dicts"),
    ("checkpoint of another shape", edit_checkpoint(lambda s: s["network"].update(
        {"weights.0": s["network"]["weights.0"][:4]}), fmt=1), "does not match"),
    ("checkpoint of another architecture", edit_checkpoint(
        lambda s: (s.pop("config"), s["architecture"].update(sizes=[64, 9, 10])) and None, fmt=1),
     "holds a network"),
    ("checkpoint format 7", edit_checkpoint(lambda s: None, fmt=7), "not a spikeprop checkpoint"),
    ("checkpoint bit flipped", flip_tensor_byte, "CRC"),
    ("checkpoint truncated", truncate_checkpoint, "corrupt"),
    ("checkpoint empty", write_bytes(b""), "corrupt"),
    ("checkpoint random bytes", write_bytes(bytes(range(256)) * 8), "corrupt"),
    ("checkpoint metrics rows wrong", edit_checkpoint(lambda s: s.update(metrics=[{"epoch": 3}])), "row 1"),
]
for name, setup, phrase in CHECKPOINT_CASES:
    case(f"evaluate: {name}", "evaluate {run}", phrase, setup)
    case(f"resume: {name}", "train --resume {run} --epochs 2 --no-progress", phrase, setup)


def old_format_with_metrics(text: str):
    """A format-1 checkpoint (it carries no metrics rows), so resume reads metrics.jsonl."""
    def setup(tmp: Path, run: Path) -> None:
        edit_checkpoint(_drop("metrics", "config"), fmt=1)(tmp, run)
        (run / "metrics.jsonl").write_text(text)

    return setup


for text, phrase in [("5\n", "not an object"), ('{"foo": 1}\n', "epoch 1"), ('{"epoch": 1}\n', "test_accuracy"),
                     ('{"epoch": 1, "test_accuracy": 7}\n', "test_accuracy"), ("{bad\n", "corrupt"),
                     ('{"epoch": 1, "test_accuracy": NaN}\n', "corrupt")]:
    case(f"resume: metrics.jsonl {text.strip()}", "train --resume {run} --epochs 2 --no-progress", phrase,
         old_format_with_metrics(text))

case("evaluate: run dir missing", "evaluate {tmp}/missing", "does not exist")
case("evaluate: run dir is a file", "evaluate {file}", "not a directory", toml("x = 1"))
case("evaluate: not a run dir", "evaluate {tmp}", "not a spikeprop run directory")
case("evaluate --limit 0", "evaluate {run} --limit 0", "--limit")
case("analyze --limit 0", "analyze {run} --limit 0", "--limit")
case("verify --limit 0", "verify {run} --limit 0", "--limit")
for v in ["nan", "0", "-1", "inf"]:
    case(f"verify --timeout {v}", f"verify {{run}} --timeout {v}", "timeout")
    case(f"export --dt {v}", f"export {{run}} --to nir --out {{tmp}}/n.nir --dt {v}", "dt")
case("resume with a changed flag", "train --resume {run} --hidden 8", "only --epochs and --device")
case("resume --overwrite", "train --resume {run} --overwrite", "only --epochs and --device")
case("resume: nothing to train", "train --resume {run} --no-progress", "nothing to train")


# --- OS errors: output paths that cannot be written -----------------------------------------
def a_file(tmp: Path, run: Path) -> Path:
    path = tmp / "plain.txt"
    path.write_text("x")
    return path


case("train --out is a file", "train --out {file} " + " ".join(RUN_ARGS), "not a directory", a_file)
case("train --out under a file", "train --out {file}/sub " + " ".join(RUN_ARGS), "not a directory", a_file)
case("train --overwrite a non-run dir", "train --out {tmp} --overwrite " + " ".join(RUN_ARGS), "not a spikeprop run")
case("train into an existing run", "train --out {run} " + " ".join(RUN_ARGS), "already holds a run")
case("export --out an existing directory", "export {run} --to lava --out {tmp}", "directory")
case("export --out under a file", "export {run} --to nir --out {file}/n.nir", "not a directory", a_file)


# --- IDX files --------------------------------------------------------------------------------
def idx_set(change: Callable[[Path], None]):
    def setup(tmp: Path, run: Path) -> Path:
        from spikeprop.data import write_idx

        d = tmp / "idx"
        d.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for split, n in (("train", 20), ("t10k", 10)):
            write_idx(d / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            write_idx(d / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
        change(d)
        return d

    return setup


def _zero_test(d: Path) -> None:
    from spikeprop.data import write_idx

    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(0))


def _overflow_header(d: Path) -> None:
    # dims 2**32-1 x 2**32-1 x 2**32-1 x 0: the product wraps to a small number in int64 arithmetic
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBB", 0, 8, 4) + struct.pack(">4I", *[2**32 - 1] * 3, 2**8))


def _other_size(d: Path) -> None:
    from spikeprop.data import write_idx

    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((10, 14, 14)))


def _gz_garbage(d: Path) -> None:
    (d / "train-labels-idx1-ubyte").unlink()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01")[:-6])


def _labels_11(d: Path) -> None:
    from spikeprop.data import write_idx

    write_idx(d / "train-labels-idx1-ubyte", np.full(20, 11))


IDX_CASES = [("zero test samples", _zero_test, "no samples"), ("header dims overflow", _overflow_header, "header says"),
             ("test images 14x14", _other_size, "14x14"), ("truncated gzip", _gz_garbage, "corrupt"),
             ("labels 11", _labels_11, "labels go up to")]
for name, change, phrase in IDX_CASES:
    case(f"idx: {name}", "train --dataset fashion-mnist --data-dir {file} --out {tmp}/x " + " ".join(RUN_ARGS), phrase,
         idx_set(change))
case("idx: --data-dir missing", "train --dataset mnist --data-dir {tmp}/none --out {tmp}/x", "not a directory")


# --- hardware.loihi files (export --to lava output, read by hardware.loihi.load) ------------------
def loihi_file(change: Callable[[dict, dict], None]):
    """A valid exported network file, then ``change(header, arrays)`` applied (a returned string
    replaces the header); the file goes to ``{file}``."""
    def setup(tmp: Path, run: Path) -> Path:
        import io

        from hardware.deploy import export_lava

        path = tmp / "net.npz"
        export_lava(run, path)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop("header")))
        out = change(header, arrays)  # a string replaces the whole header
        buf = io.BytesIO()
        np.savez(buf, header=np.array(out if isinstance(out, str) else json.dumps(header)), **arrays)
        path.write_bytes(buf.getvalue())
        return path

    return setup


def _h(**kv):
    return lambda h, a: h.update(kv)


def _l(**kv):
    return lambda h, a: h["layers"][0].update(kv)


LOIHI_CASES = [
    ("float weights", lambda h, a: a.update({"layer0.weights": a["layer0.weights"].astype(np.float32)}), "integers"),
    ("odd weight", lambda h, a: a["layer0.weights"].__setitem__((0, 0), 3), "even"),
    ("weight 300", lambda h, a: a["layer0.weights"].__setitem__((0, 0), 300), "even integers"),
    ("shape disagrees", lambda h, a: a.update({"layer0.weights": a["layer0.weights"][:, :5]}), "shape"),
    ("du 5000", _l(du=5000), "du = 5000"),
    ("negative vth", _l(vth=-1), "vth = -1"),
    ("vth float", _l(vth=1.5), "vth must be an integer"),
    ("weight_exp 100", _l(weight_exp=100), "weight_exp 100"),
    ("steps 0", _h(steps=0), "steps"),
    ("steps -3", _h(steps=-3), "steps"),
    ("unknown encoding", _h(encoding="morse"), "encoding"),
    ("input_scale nan", _h(input_scale=float("nan")), "input_scale"),
    ("input_bits 40", _h(input_bits=40), "payloads"),
    ("layers empty", _h(layers=[]), "non-empty"),
    ("header is a list", lambda h, a: "[1, 2]", "JSON object"),
    ("missing array", lambda h, a: a.pop("layer0.bias_mant"), "missing"),
    ("bias_exp 9", lambda h, a: a["layer0.bias_exp"].__setitem__(0, 9), "bias_exp"),
    ("chain broken", lambda h, a: (h["readout"].update(n_in=3), h["readout"]["synapse"].update(in_shape=[3]),
                                   a.update({"readout.weights": a["readout.weights"][:, :3]})), "next layer"),
    ("synapse disagrees with n_in", lambda h, a: h["readout"].update(n_in=3), "the layer says n_in"),
    ("synapse missing", lambda h, a: h["layers"][0].pop("synapse"), "synapse must be an object"),
    ("synapse kind unknown", lambda h, a: h["layers"][0]["synapse"].update(kind="pool"), "kind must be dense or conv2d"),
    ("synapse recurrent", lambda h, a: h["layers"][0]["synapse"].update(recurrent=True), "recurrent"),
    ("synapse in_shape not ints", lambda h, a: h["layers"][0]["synapse"].update(in_shape=["8"]), "in_shape must be"),
    ("version 3", lambda h, a: h.update(version=3), "version"),
]
for name, change, phrase in LOIHI_CASES:
    case(f"loihi file: {name}", ["python:hardware.loihi.load", "{file}"], phrase, loihi_file(change))


def _empty_file(tmp: Path, run: Path) -> Path:
    path = tmp / "empty.npz"
    path.write_bytes(b"")
    return path


case("loihi file: empty", ["python:hardware.loihi.load", "{file}"], "not a readable", _empty_file)


# --- NIR files ------------------------------------------------------------------------------------
def nir_file(change: Callable[[dict], None]):
    def setup(tmp: Path, run: Path) -> Path:
        import nir

        from hardware.deploy import export_nir

        path = tmp / "net.nir"
        export_nir(run, path)
        graph = nir.read(path)
        change(graph.nodes)
        nir.write(path, graph)
        return path

    return setup


def _nan_weight(nodes):
    nodes["fc1"].weight[0, 0] = np.nan


def _inf_threshold(nodes):
    nodes["lif1"].v_threshold[:] = np.inf


def _neg_tau(nodes):
    nodes["lif1"].tau[:] = -1.0


for name, change, phrase in [("NaN weight", _nan_weight, "NaN"), ("infinite threshold", _inf_threshold, "NaN or infinite"),
                             ("negative tau", _neg_tau, "outside [0, 1]")]:
    case(f"nir file: {name}", "import {file} --out {tmp}/imp", phrase, nir_file(change))
case("import --steps 0", "import {file} --out {tmp}/imp --steps 0", "--steps", nir_file(lambda n: None))
case("import --dt 0", "import {file} --out {tmp}/imp --dt 0", "--dt", nir_file(lambda n: None))
case("import a wrong dataset", "import {file} --out {tmp}/imp --dataset fashion-mnist", "64 inputs", nir_file(lambda n: None))
case("import into a file", "import {file} --out {file}", "not an empty directory", nir_file(lambda n: None))
case("import not a NIR file", "import {file} --out {tmp}/imp", "not a readable NIR", toml("x = 1"))


# --- more of the same, for every remaining flag and field ----------------------------------------
for text, phrase in [
    ("hidden = [1e9]", "--hidden"), ("steps = -1", "--steps"), ("steps = 1e9", "--steps"), ("seed = -1", "--seed"),
    ("seed = 1.5", "--seed"), ('vth = "1"', "--vth"), ("du = true", "--du"), ("epochs = 0", "--epochs"),
    ("batch_size = 0", "--batch-size"), ('[sigprop]\nvariant = "nope"', "--sigprop-variant"),
    ("[sigprop]\nrep = 5", "--sigprop-rep"), ('rule = "pepita"\n[pepita]\nwm_pre_steps = 1.5', "--pepita-wm-pre-steps"),
    ('rule = "ff"\n[ff]\nlabel_scale = -1', "--ff-label-scale"), ("[sigprop.deeper]\nx = 1", "no option"),
    ("[sigprop]\ntau = [0.1]", "--sigprop-tau"), ('neurons = "hh"', "--neurons"), ("dv = -inf", "--dv"),
    ("vth = 1e300", "--vth"), ("lr = 0", "--lr"), ('device = "cuda:"', "--device"), ("hidden = [[1]]", "--hidden"),
    ("hidden = [" + ", ".join(["4"] * 65) + "]", "1 to 64"), ("rule = true", "rule"), ("dataset = 7", "dataset"),
]:
    case(f"toml {text!r}", "train --config {file} --out {tmp}/new --no-progress", phrase, toml(text))

for name, change, phrase in [
    ("rule_options is a list", _set(rule_options=[1]), "rule_options"),
    ("hidden is a string", _set(hidden="8"), "--hidden"),
    ("device meta", _set(device="meta"), "--device"),
    ("seed 1e30", _set(seed=1e30), "--seed"),
    ("data_dir 5", _set(data_dir=5), "--data-dir"),
    ("dataset unknown", _set(dataset="cifar"), "--dataset"),
    ("rule option out of range", lambda raw: raw["rule_options"].update(tau=-1), "--sigprop-tau"),
    ("rule option unknown", lambda raw: raw["rule_options"].update(colour=1), "no option"),
    ("Infinity", lambda raw: json.dumps(raw).replace('"vth": 1.0', '"vth": Infinity'), "corrupt"),
]:
    case(f"evaluate: config.json {name}", "evaluate {run}", phrase, edit_config(change))
    case(f"resume: config.json {name}", "train --resume {run} --epochs 2 --no-progress", phrase, edit_config(change))
case("evaluate: config.json epochs 0", "evaluate {run}", "--epochs", edit_config(_set(epochs=0)))

for cmd in ("evaluate {run} --backend loihi", "analyze {run}", "export {run} --to lava --out {tmp}/n.npz",
            "export {run} --to nir --out {tmp}/n.nir", "verify {run}"):
    name = cmd.replace(" {run}", "").replace(" --out {tmp}/n.", " ").replace(" --to ", " to ")
    case(f"{name}: run dir missing", cmd.replace("{run}", "{tmp}/missing"), "does not exist")
    case(f"{name}: checkpoint bit flipped", cmd, "CRC", flip_tensor_byte)
    case(f"{name}: config.json edited steps", cmd, "other settings", edit_config(_set(steps=3)))
for flag in ("evaluate {run} --device meta", "analyze {run} --device banana", "train --resume {run} --device meta"):
    case(flag.replace(" {run}", ""), flag, "--device")
for argv, phrase in [
    ("train --rule nope", "--rule"), ("train --encoding morse", "--encoding"), ("train --neurons hh", "--neurons"),
    ("train --quantize int4", "--quantize"), ("train --dataset cifar", "--dataset"), ("export {run} --to onnx --out x", "--to"),
    ("export {run} --to nir", "--out"), ("evaluate {run} --backend gpu", "--backend"), ("import {tmp}/x.nir", "--out"),
    ("train --steps ten", "--steps"), ("train --seed 1.5", "--seed"), ("train --lr fast", "--lr"),
    ("train --sigprop-tau abc", "--sigprop-tau"), ("train --pepita-wm-pre-steps 2.5", "--pepita-wm-pre-steps"),
    ("evaluate {run} --limit x", "--limit"), ("verify {run} --timeout soon", "--timeout"),
    ("import {tmp}/x.nir --out {tmp}/y --steps 0", "--steps"),
    ("nonsense", "invalid choice"), ("train --epochs", "expected one argument"),
]:
    case(f"argv: {argv}", argv, phrase)
case("train --data-dir is a file", "train --dataset mnist --data-dir {file} --out {tmp}/x", "not a directory", toml("x"))
case("train: mnist without files", "train --dataset mnist --data-dir {tmp} --out {tmp}/x", "not found")
case("import: missing file", "import {tmp}/none.nir --out {tmp}/imp", "does not exist")


# --- temporal datasets: sequential Fashion-MNIST and event files (spikeprop.events) -------------------
for flag, values, phrase in [
    ("--bin-us", ["0", "-5", "1000000000000"], "--bin-us"),
    ("--downsample", ["0", "-1", "1000"], "--downsample"),
]:
    for v in values:
        case(f"train --dataset nmnist {flag} {v}", f"train --dataset nmnist {flag} {v} {OUT}", phrase)
for argv, phrase in [
    ("train --sequence diagonal", "--sequence"), ("train --bin-us 1e3", "--bin-us"), ("train --bin-us nan", "--bin-us"),
    ("train --downsample 2.5", "--downsample"), ("train --dataset events", "--dataset"),
]:
    case(f"argv: {argv}", argv, phrase)
for argv, phrase in [
    ("--dataset sequential-fashion-mnist --steps 10", "leave --steps out"),
    ("--dataset sequential-fashion-mnist --sequence pixels --steps 28", "T = 784"),
    ("--dataset sequential-fashion-mnist --encoding direct", "never a repeated image"),
    ("--dataset nmnist --encoding rate", "--encoding events"), ("--dataset shd --encoding sequence", "--encoding events"),
    ("--dataset digits --encoding sequence", "static"), ("--dataset fashion-mnist --encoding events", "static"),
    ("--dataset digits --sequence pixels", "--sequence applies"), ("--dataset mnist --bin-us 1000", "--bin-us applies"),
    ("--dataset sequential-fashion-mnist --downsample 2", "--downsample applies"),
    ("--dataset shd --model conv", "no convolutional recipe"), ("--dataset dvs-gesture --model conv", "no convolutional"),
    ("--dataset nmnist --data-dir {tmp}", "Nothing is downloaded"), ("--dataset shd --data-dir {tmp}", "zenkelab.org"),
    ("--dataset dvs-gesture --data-dir {tmp}", "figshare.com"), ("--dataset nmnist --data-dir {tmp}/none", "not a directory"),
]:
    case(f"train {argv}", f"train {argv} {OUT}", phrase)
for text, phrase in [
    ('dataset = "sequential-fashion-mnist"\nsequence = 5', "--sequence"),
    ('dataset = "sequential-fashion-mnist"\nsequence = "spiral"', "--sequence"),
    ('dataset = "sequential-fashion-mnist"\nsequence = ""', "--sequence"),
    ('dataset = "nmnist"\nbin_us = 1.5', "--bin-us"), ('dataset = "nmnist"\nbin_us = nan', "--bin-us"),
    ('dataset = "nmnist"\nbin_us = true', "--bin-us"), ('dataset = "nmnist"\nbin_us = "1000"', "--bin-us"),
    ('dataset = "nmnist"\nbin_us = 0', "--bin-us"), ('dataset = "nmnist"\nbin_us = 1e12', "--bin-us"),
    ('dataset = "dvs-gesture"\ndownsample = 2.5', "--downsample"), ('dataset = "dvs-gesture"\ndownsample = 0', "--downsample"),
    ('dataset = "dvs-gesture"\ndownsample = inf', "--downsample"), ('dataset = "shd"\ndownsample = 100000', "--downsample"),
    ('dataset = "nmnist"\nsteps = 0', "--steps"), ('dataset = "nmnist"\nencoding = "direct"', "--encoding events"),
]:
    case(f"toml {text!r}", "train --config {file} --out {tmp}/new --no-progress", phrase, toml(text))
for name, change, phrase in [
    ("sequence 5", _set(sequence=5), "--sequence"), ("bin_us -1", _set(bin_us=-1), "--bin-us"),
    ("downsample 0", _set(downsample=0), "--downsample"), ("encoding events on digits", _set(encoding="events"), "static"),
    ("bin_us on digits", _set(bin_us=1000), "--bin-us applies"),
    ("dataset nmnist, files missing", _set(dataset="nmnist", encoding="events", data_dir="/nonexistent"), "not a directory"),
]:
    case(f"evaluate: config.json {name}", "evaluate {run}", phrase, edit_config(change))


def event_files(name: str, damage: Callable[[Path], None]):
    """Small generated files of event dataset ``name`` under {file}, then ``damage(root / tonic folder)``."""
    def setup(tmp: Path, run: Path) -> Path:
        from spikeprop.events import EVENT_SETS
        from tests.eventfiles import MAKERS

        root = MAKERS[name](tmp / "events")
        damage(root / EVENT_SETS[name].tonic_class)
        return root

    return setup


def _truncate(pattern: str, keep: int):
    def damage(folder: Path) -> None:
        path = sorted(folder.glob(pattern))[0]
        path.write_bytes(path.read_bytes()[:keep])

    return damage


def _nmnist_off_sensor(folder: Path) -> None:
    from tonic.datasets import NMNIST
    from tonic.io import make_structured_array

    from spikeprop.events import write_nmnist_bin

    write_nmnist_bin(folder / "Train" / "0" / "00000.bin", make_structured_array([40], [3], [10], [1], dtype=NMNIST.dtype))


def _shd_label_99(folder: Path) -> None:
    import h5py

    with h5py.File(folder / "shd_train.h5", "r+") as f:
        f["labels"][0] = 99


def _empty_split(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder / "Test")
    (folder / "Test" / "0").mkdir(parents=True)


EVENT_CASES = [
    ("nmnist", "a .bin truncated mid-record", _truncate("Train/*/*.bin", 7), "corrupt or truncated"),
    ("nmnist", "an event off the 34x34 sensor", _nmnist_off_sensor, "outside the sensor"),
    ("nmnist", "no Test recordings", _empty_split, "holds no */*.bin"),
    ("dvs-gesture", "an .npy truncated", _truncate("ibmGestureTrain/*/*.npy", 60), "corrupt or truncated"),
    ("shd", "the train .h5 truncated", _truncate("shd_train.h5", 900), "corrupt or truncated"),
    ("shd", "the test .h5 empty", _truncate("shd_test.h5", 0), "corrupt or truncated"),
    ("shd", "a label of 99", _shd_label_99, "labels span"),
]
for name, what, damage, phrase in EVENT_CASES:
    case(f"event files: {name} {what}", f"train --dataset {name} --data-dir {{file}} --steps 4 --hidden 8 --epochs 1 {OUT}",
         phrase, event_files(name, damage))
case("sequential-fashion-mnist --rule ff", "train --dataset sequential-fashion-mnist --rule ff --data-dir {file} "
     + " ".join(RUN_ARGS[:2] + RUN_ARGS[4:]) + " --out {tmp}/x", "every step", idx_set(lambda d: None))
