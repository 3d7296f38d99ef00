"""``spikeprop verify``: one batch of test samples through four backends, compared spike for spike.

(a) float: the trained network in ``spikeprop.network.simulate`` (float64, so that its sums
    match Lava's float64 up to summation order);
(b) emulator: ``hardware.loihi.emulate`` on the quantized network;
(c) Lava fixed_pt and (d) Lava floating_pt on the CPU simulator (``hardware.lava.run``).

(b) and (c) must agree bit for bit (every spike of every layer and the read-out's voltages);
(a) and (d) agree up to float summation order (research/lava.md §2.3). All backends see the
same encoded input (one draw of the rate encoder's spikes).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from hardware import lava
from hardware.loihi import check_fit, emulate, float_layers, margin_warnings, margins, quantize_run, resources, time_constant_map
from spikeprop.network import simulate
from spikeprop.runs import write_json

VERIFY = "verify.json"
DEFAULT_LIMIT = 100


def identical_trains(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of (sample, neuron) pairs whose whole spike train is the same; a, b: [N, T, n]."""
    return float(np.all(a == b, axis=1).mean())


@torch.no_grad()
def verify_run(run_dir: str | Path, limit: int = DEFAULT_LIMIT, timeout: float | None = None) -> dict:
    """Run the four backends on the first ``limit`` test samples; write RUN_DIR/verify.json; return it."""
    config, ds, net, encoder, fnet, cal = quantize_run(run_dir)
    n = min(limit, len(ds.test_x))
    y = ds.test_y[:n].numpy()
    # [T, N, n_in], drawn once; direct encoding's stays a stride-0 view (no T copies of the input)
    xin = encoder(ds.intensities(ds.test_x[:n]))
    x64 = time_constant_map(xin, torch.Tensor.double)
    backends: dict[str, dict] = {}

    t0 = time.perf_counter()
    net64 = copy.deepcopy(net).double()
    spikes: list[torch.Tensor | None] = [None] * net.n_layers  # [T, N, n] bool: the comparison needs only them

    def keep_spikes(layer, t, s_in, step):  # one buffer per layer, filled step by step
        if t == 0:
            spikes[layer] = torch.zeros((xin.shape[0], *step.s.shape), dtype=torch.bool)
        spikes[layer][t] = step.s

    ref = simulate(net64, x64, observer=keep_spikes)
    backends["float"] = _backend(ref.logits.numpy(), y, time.perf_counter() - t0, n)
    float_spikes = [s.permute(1, 0, 2).numpy() for s in spikes]

    t0 = time.perf_counter()
    payload = fnet.payload(xin)
    emu = emulate(fnet, payload, record=True, record_uv=False)
    backends["emulator"] = _backend(emu.v_out.numpy(), y, time.perf_counter() - t0, n)
    emu_spikes = [s.permute(1, 0, 2).numpy() for s in emu.spikes]

    t0 = time.perf_counter()
    fixed = lava.run(list(fnet.layers), fnet.readout, payload.permute(1, 0, 2).numpy(), tag="fixed_pt",
                     graded=fnet.graded_input, input_bits=fnet.input_bits, timeout=timeout)
    backends["lava_fixed_pt"] = _backend(fixed.v_out, y, time.perf_counter() - t0, n, fixed.timing)

    layers, readout = float_layers(net64)
    t0 = time.perf_counter()
    flt = lava.run(layers, readout, x64.permute(1, 0, 2).numpy(), tag="floating_pt",
                   graded=fnet.graded_input, input_bits=fnet.input_bits, timeout=timeout)
    backends["lava_floating_pt"] = _backend(flt.v_out, y, time.perf_counter() - t0, n, flt.timing)

    problems = check_fit(fnet, cal)
    emu_vs_fixed = [identical_trains(a, b) for a, b in zip(emu_spikes, fixed.spikes)]
    float_vs_floating = [identical_trains(a, b) for a, b in zip(float_spikes, flt.spikes)]
    readout_equal = bool(np.array_equal(emu.v_out.numpy(), fixed.v_out.astype(np.int64)))
    report = {
        "samples": n, "steps": fnet.steps, "dataset": config.dataset, "encoding": config.encoding,
        "quantize": config.quantize, "backends": backends,
        "identical_spike_trains": {"emulator_vs_lava_fixed_pt": emu_vs_fixed,
                                   "float_vs_lava_floating_pt": float_vs_floating},
        "readout_v_identical_emulator_vs_lava_fixed_pt": readout_equal,
        "bit_exact": readout_equal and all(f == 1.0 for f in emu_vs_fixed),
        "resources": resources(fnet),
        "fits_loihi2": not problems,
        "fit_problems": problems,
        "margins": margins(fnet, cal),
        "margin_warnings": margin_warnings(fnet, cal),
        "layers": [la.scalars() for la in fnet.layers], "readout": fnet.readout.scalars(),
    }
    write_json(Path(run_dir) / VERIFY, report)
    return report


def _backend(scores: np.ndarray, y: np.ndarray, wall: float, n: int, timing: dict | None = None) -> dict:
    out = {"accuracy": float((np.asarray(scores).argmax(1) == y).mean()), "wall_s": wall, "ms_per_sample": 1e3 * wall / n}
    if timing is not None:
        out["lava_timing"] = timing
    return out


def format_report(r: dict) -> str:
    """The readable table ``spikeprop verify`` prints."""
    names = {"float": "float network (float64)", "emulator": "fixed-point emulator",
             "lava_fixed_pt": "Lava CPU, fixed_pt", "lava_floating_pt": "Lava CPU, floating_pt"}
    lines = [f"{r['samples']} {r['dataset']} test samples, T={r['steps']}, encoding {r['encoding']}, "
             f"quantize {r['quantize']}", "",
             f"{'backend':<30} {'accuracy':>9} {'wall s':>8} {'ms/sample':>10}"]
    for key, b in r["backends"].items():
        lines.append(f"{names[key]:<30} {b['accuracy']:>9.4f} {b['wall_s']:>8.2f} {b['ms_per_sample']:>10.2f}")
    ident = r["identical_spike_trains"]
    lines += ["", f"{'identical spike trains':<30} " + " ".join(f"{'layer ' + str(i + 1):>9}"
                                                                 for i in range(len(ident['emulator_vs_lava_fixed_pt'])))]
    for key, label in (("emulator_vs_lava_fixed_pt", "emulator vs Lava fixed_pt"),
                       ("float_vs_lava_floating_pt", "float vs Lava floating_pt")):
        lines.append(f"{label:<30} " + " ".join(f"{f:>9.4f}" for f in ident[key]))
    same_v = r["readout_v_identical_emulator_vs_lava_fixed_pt"]
    lines.append(f"{'read-out v, emulator vs fixed_pt':<30} {'identical' if same_v else 'DIFFERENT'}")
    res = r["resources"]
    lines += ["", f"Loihi 2 resources: {res['cores']} cores ({res['chips']} chip), {res['neurons']} neurons, "
                  f"{res['synapses']} synapses  (" + ", ".join(f"{row['layer']}: {row['neurons']} neurons, "
                                                                f"{row['synapses']} synapses, {row['cores']} cores"
                                                                for row in res["layers"]) + ")"]
    if r["fit_problems"]:
        lines.append("does NOT fit Loihi 2: " + "; ".join(r["fit_problems"]))
    for w in r.get("margin_warnings", []):
        lines.append(f"warning: {w}")
    lines.append("bit-exact: emulator == Lava fixed_pt" if r["bit_exact"] else
                 "MISMATCH: the emulator and Lava fixed_pt disagree")
    return "\n".join(lines)
