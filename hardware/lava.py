"""The only module that imports Lava (lava-nc 0.10.0): processes, runs, and the Python 3.11 shim.

Graph, per sample window of T steps (``research/lava.md`` §1.5, §3.6)::

    RingBuffer(payloads) -> [Dense -> LIFReset] x L -> Dense -> LIFReset (read-out integrator)
                                      |                                  |
                               sink RingBuffer (spikes)          Read(v, once per sample)

Samples run back to back in ONE compiled network: layer i (0-based, the read-out is i = L)
integrates sample s's local step k at global step ``s·T + k + i + 2``, so each LIF is a
``LIFReset(reset_interval=T, reset_offset=(i + 2) mod T)`` that zeroes u and v at its sample's
first step (the Dense buffers are not reset: they already carry the new sample). That is the
per-sample zero-state form ``spikeprop.network.simulate`` and ``hardware.loihi.emulate`` compute.
One run lasts ``N·T + L + 1`` steps (the input is padded with zeros).

Lava hangs silently after a worker error and ``stop()`` then hangs too (lava#231), so every run
happens in a child process in its own process group, with a timeout; on timeout or error the
whole group is killed (no worker outlives it) and a SpikepropError says what happened.
However the calling process dies, nothing of the run outlives it: SIGTERM (and Ctrl-C) raise in
its main thread while Lava runs, so the same cleanup runs (the group killed, the temporary
directory removed); after a SIGKILL the child's watchdog thread sees that its parent is gone,
stops and kills its process group (Lava's workers and itself), unlinks their shared memory and
removes the run's temporary directory.

lava-nc 0.10.0 declares Python <3.11. On 3.11 one import fails: in
``lava.magma.compiler.var_model`` the dataclasses ``CoreEncoder``, ``ChipEncoder`` and
``AxonEncoder`` use ``ByteEncoder()`` instances as field defaults, and 3.11 rejects a default
whose class is unhashable (``ValueError: mutable default ... ByteEncoder``). ``import_lava``
applies a shim before the first import: while ``var_model`` is imported, ``dataclasses.dataclass``
is wrapped so that the class ``ByteEncoder`` of that module alone gets ``unsafe_hash=True`` (it
stays mutable, exactly as on 3.10). Nothing on disk changes; Lava's forked workers inherit the
patched module.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hardware.loihi import Layer
from spikeprop import SpikepropError

VAR_MODEL = "lava.magma.compiler.var_model"


def _apply_py311_shim() -> None:
    if sys.version_info < (3, 11) or VAR_MODEL in sys.modules:
        return
    original = dataclasses.dataclass

    def patched(cls=None, /, **kwargs):
        def wrap(c):
            if c.__name__ == "ByteEncoder" and c.__module__ == VAR_MODEL:
                kwargs.setdefault("unsafe_hash", True)
            return original(c, **kwargs)

        return wrap if cls is None else wrap(cls)

    dataclasses.dataclass = patched
    try:
        sys.modules.pop(VAR_MODEL, None)  # a failed earlier attempt may have left a half module
        module = importlib.import_module(VAR_MODEL)
    finally:
        dataclasses.dataclass = original
    module.dataclass = original


def import_lava():
    """Import Lava (with the 3.11 shim) and return the ``lava`` package.

    Raises SpikepropError with the install command when lava-nc is missing.
    """
    try:
        importlib.import_module("lava")
    except ImportError:
        raise SpikepropError("Lava is not installed: run scripts/install.sh (it installs lava-nc 0.10.0)") from None
    _apply_py311_shim()
    import lava.magma.core.run_configs  # noqa: F401  (fails here if the shim did not work)

    return sys.modules["lava"]


# --------------------------------------------------------------------------------------------
# Running networks on Lava's CPU simulator

TAGS = ("fixed_pt", "floating_pt")
ROOT = Path(__file__).resolve().parent.parent
# Generous default limit: start-up, compile (~0.3 s per chunk), ~1 ms per simulated step per
# layer and ~15 µs per value read back (Var.get sends one element per message, lava.md §3.4),
# each with a factor of about 5 for a busy 2-core machine; a hang is still reported, not waited on.
TIMEOUT_BASE_S = 120.0
TIMEOUT_PER_CHUNK_S = 2.0
TIMEOUT_PER_STEP_S = 0.005
TIMEOUT_PER_READ_S = 1e-4
EXIT_WORKER_ERROR = 3  # the child's status when Lava raised (its runtime is then unusable)
EXIT_SIGNAL_BASE = 128  # a process ended by signal N exits with 128 + N (the shell's convention)
TEMP_PREFIX = "spikeprop-lava-"  # each run's temporary directory (spec, results, the child's log)
WATCHDOG_POLL_S = 0.1  # how often the child checks that its parent is alive: the delay before cleanup


class LavaResult(NamedTuple):
    """Results of ``run``, sample-aligned (local time, as ``emulate`` and ``simulate`` give them).

    spikes: per hidden layer [N, T, n] bool (None with ``record_spikes=False``); v_out: the read-out's v at the end of each sample
    [N, C]; u, v: per layer including the read-out [N, T, n] after the step's reset (only with
    ``record_uv``); timing: seconds for build, compile, runtime start, run, read, per chunk summed.
    """

    spikes: list[np.ndarray] | None
    v_out: np.ndarray
    u: list[np.ndarray] | None
    v: list[np.ndarray] | None
    timing: dict


def run(layers: list[Layer], readout: Layer, x: np.ndarray, *, tag: str, graded: bool, input_bits: int = 8,
        record_spikes: bool = True, record_uv: bool = False, chunk: int = 500,
        timeout: float | None = None) -> LavaResult:
    """Run N samples x [N, T, n_in] on Lava's CPU simulator (``Loihi2SimCfg(select_tag=tag)``).

    x holds integer payloads (fixed_pt; graded or 0/1) or floats (floating_pt). ``chunk`` samples
    share one compiled network (``chunk=1`` compiles once per sample: the naive baseline).
    ``record_spikes=False`` reads back only the read-out voltages (Lava's Var reads cost ~15 µs
    per value, lava.md §3.4, so reading every spike dominates a long run).
    Runs in a child process with a timeout (module docstring); raises SpikepropError on a hang or
    a Lava error, after killing the child and all its workers.
    """
    if tag not in TAGS:
        raise SpikepropError(f"unknown Lava tag '{tag}' (choose from: {', '.join(TAGS)})")
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != layers[0].n_in:
        raise SpikepropError(f"inputs must be [N, T, {layers[0].n_in}]; got {x.shape}")
    if chunk < 1:
        raise SpikepropError("chunk must be >= 1")
    N, T, _ = x.shape
    if timeout is None:
        chunks = -(-N // chunk)
        steps = N * T + chunks * (len(layers) + 1)
        neurons = sum(la.n_out for la in layers)
        reads = steps * neurons * record_spikes + (2 * steps * (neurons + readout.n_out) if record_uv else 0)
        timeout = (TIMEOUT_BASE_S + TIMEOUT_PER_CHUNK_S * chunks + TIMEOUT_PER_STEP_S * steps * (len(layers) + 1)
                   + TIMEOUT_PER_READ_S * reads)
    with _terminate_raises(), tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        spec, out = Path(tmp) / "spec.npz", Path(tmp) / "out.npz"
        # An input that repeats over time (direct encoding: a stride-0 time axis) travels as one step.
        constant = T > 1 and x.strides[1] == 0
        header = {"tag": tag, "graded": graded, "input_bits": input_bits, "record_uv": record_uv, "chunk": chunk,
                  "record_spikes": record_spikes, "shape": list(x.shape),
                  "layers": [_layer_header(la) for la in [*layers, readout]]}
        arrays = {"header": np.array(json.dumps(header)), "x": x[:, :1] if constant else x}
        for i, la in enumerate([*layers, readout]):
            arrays[f"w{i}"], arrays[f"bm{i}"], arrays[f"be{i}"] = la.weights, la.bias_mant, la.bias_exp
        np.savez(spec, **arrays)
        _run_child(spec, out, timeout)
        with np.load(out, allow_pickle=False) as z:
            timing = json.loads(str(z["timing"]))
            n_all = len(layers) + 1
            spikes = [z[f"s{i}"].astype(bool) for i in range(len(layers))] if record_spikes else None
            u = [z[f"u{i}"] for i in range(n_all)] if record_uv else None
            v = [z[f"v{i}"] for i in range(n_all)] if record_uv else None
            return LavaResult(spikes, z["v_out"], u, v, timing)


def _layer_header(la: Layer) -> dict:
    """Scalars keep their kind: fixed_pt needs Python ints (a float vth breaks its worker, lava.md §1.1)."""
    def num(y):
        return int(y) if isinstance(y, (int, np.integer)) else float(y)

    return {"weight_exp": int(la.weight_exp), "du": num(la.du), "dv": num(la.dv), "vth": num(la.vth)}


@contextmanager
def _terminate_raises():
    """While a Lava run is under way, SIGTERM raises ``SystemExit(128 + SIGTERM)`` in the main
    thread, so that ``_run_child``'s cleanup (kill the process group) and the temporary
    directory's removal run before the process exits with the status SIGTERM gives. Only in the
    main thread and only where SIGTERM still has its default action (a handler someone else
    installed, or an ignored SIGTERM, is left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(EXIT_SIGNAL_BASE + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_child(spec: Path, out: Path, timeout: float) -> None:
    """Run ``_child_main(spec, out, our pid)`` in a new process group; kill the group on timeout or error."""
    code = "import sys; from hardware.lava import _child_main; _child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = spec.parent / "child.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-c", code, str(spec), str(out), str(os.getpid())], stdout=logf,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SpikepropError(f"Lava did not finish within {timeout:.0f} s (a silent hang); its processes were "
                                 "killed") from None
        except BaseException:
            _kill_group(proc)
            raise
        _kill_group(proc)  # a worker that outlived the child (it should not) goes too
    if rc != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        detail = " | ".join(line.strip() for line in tail) or "no output"
        raise SpikepropError(f"Lava failed (exit status {rc}); its processes were killed. Last output: {detail}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (Lava's workers included) and unlink the shared-memory
    segments its processes had mapped: killed, they cannot release them (a clean run releases
    its own, so after one there is nothing left to do)."""
    members = _group_members(proc.pid)
    segments = _shared_memory(members)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for path in segments:
        Path(path).unlink(missing_ok=True)


def _group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp
                pids.append(int(entry.name))
    return pids


def _shared_memory(pids: list[int]) -> set[str]:
    """The POSIX shared-memory files (/dev/shm/psm_*, Python's SharedMemory) mapped by ``pids``."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if path.startswith("/dev/shm/psm_") and not path.endswith("(deleted)"):
                found.add(path)
    return found


def _watch_parent(parent: int, run_dir: Path) -> None:
    """The child's watchdog thread: once ``parent`` is gone (the child was re-parented), stop
    every other process of our group (Lava's workers: stopped, they map no new shared memory),
    kill them, unlink the shared memory the group had mapped, remove the run's temporary
    directory ``run_dir`` (the parent can no longer), then kill the group, this process included."""
    while os.getppid() == parent:
        time.sleep(WATCHDOG_POLL_S)
    me, group = os.getpid(), os.getpgrp()
    others = [pid for pid in _group_members(group) if pid != me]
    _signal_each(others, signal.SIGSTOP)
    segments = _shared_memory([me, *others])
    _signal_each(others, signal.SIGKILL)
    for path in segments:
        Path(path).unlink(missing_ok=True)
    if run_dir.name.startswith(TEMP_PREFIX):  # only ever the directory ``run`` made
        shutil.rmtree(run_dir, ignore_errors=True)
    os.killpg(group, signal.SIGKILL)


def _signal_each(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _child_main(spec_path: str, out_path: str, parent: int) -> None:
    """Entry point of the child process: build, run, write results; never returns.

    ``parent``: the pid of the process that started it; a watchdog thread cleans up if it dies."""
    threading.Thread(target=_watch_parent, args=(parent, Path(spec_path).parent), name="spikeprop-watchdog",
                     daemon=True).start()
    try:
        with np.load(spec_path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            x = np.broadcast_to(z["x"], tuple(header["shape"]))  # [N, T, n_in]; a view when sent as one step
            layers = [Layer(z[f"w{i}"], h["weight_exp"], h["du"], h["dv"], h["vth"], z[f"bm{i}"], z[f"be{i}"])
                      for i, h in enumerate(header["layers"])]
        results, timing = [], {}
        for start in range(0, x.shape[0], header["chunk"]):
            res, t = _run_chunk(layers, x[start : start + header["chunk"]], header)
            results.append(res)
            for k, val in t.items():
                timing[k] = timing.get(k, 0.0) + val
        arrays = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        arrays["timing"] = np.array(json.dumps(timing))
        np.savez(out_path, **arrays)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # No stop(): after a worker error it hangs (lava#231). The parent kills our workers.
        os._exit(EXIT_WORKER_ERROR)
    sys.stdout.flush()
    os._exit(0)


def _run_chunk(layers: list[Layer], x: np.ndarray, header: dict) -> tuple[dict, dict]:
    """Build the graph for x [N, T, n_in], run it once, read back; in the child process."""
    import_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import Read
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.monitor.process import Monitor

    t0 = time.perf_counter()
    N, T, n_in = x.shape
    L = len(layers) - 1  # hidden layers; layers[-1] is the read-out
    total = N * T + L + 1
    fixed = header["tag"] == "fixed_pt"
    # Lava's layout is time-last: [n_in, steps]. The only place spikeprop's [T, B, N] meets it.
    data = np.zeros((n_in, total), dtype=np.int32 if fixed else np.float64)
    for s in range(N):  # sample by sample: a time-constant x stays a view (no [N·T, n_in] copy)
        data[:, s * T : (s + 1) * T] = x[s].T
    src = Source(data=data)
    prev, sinks, lifs, monitors = src.s_out, [], [], []
    for i, la in enumerate(layers):
        kw = {"weights": la.weights.astype(np.int32 if fixed else np.float64),
              "num_message_bits": header["input_bits"] if i == 0 and header["graded"] else 0}
        if fixed:
            kw["weight_exp"] = int(la.weight_exp)
        dense = Dense(**kw)
        lif = LIFReset(shape=(la.n_out,), du=la.du, dv=la.dv, vth=la.vth,
                       bias_mant=la.bias_mant.astype(np.int32 if fixed else np.float64), bias_exp=la.bias_exp.astype(np.int32),
                       reset_interval=T, reset_offset=(i + 2) % T)
        prev.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        if i < L and header["record_spikes"]:
            sink = Sink(shape=(la.n_out,), buffer=total)
            lif.s_out.connect(sink.a_in)
            sinks.append(sink)
        if header["record_uv"]:
            for var in (lif.u, lif.v):
                m = Monitor()
                m.probe(var, total)
                monitors.append((m, lif, var.name))
        lifs.append(lif)
        prev = lif.s_out
    # The read-out's v after its last step of sample s is read in post-management at global
    # step (s+1)·T + L + 1; reads happen when (t - 1) mod T == L mod T, and the first
    # 1 + L // T reads precede sample 0 (warm-up reads).
    warm = 1 + L // T
    reader = Read(buffer=N + warm, interval=T, offset=L % T)
    reader.connect_var(lifs[-1].v)
    cfg = Loihi2SimCfg(select_tag=header["tag"])
    t1 = time.perf_counter()
    executable = src.compile(run_cfg=cfg)
    t2 = time.perf_counter()
    src.create_runtime(executable=executable)
    t3 = time.perf_counter()
    src.run(condition=RunSteps(num_steps=total))
    t4 = time.perf_counter()

    def local(arr: np.ndarray, i: int) -> np.ndarray:
        """[total, n] in global steps -> [N, T, n] in layer i's local clock (index s·T + k + i + 1)."""
        return arr[i + 1 : i + 1 + N * T].reshape(N, T, -1)

    out = {f"s{i}": local(sink.data.get().T, i).astype(np.int8) for i, sink in enumerate(sinks)}
    out["v_out"] = reader.data.get()[:, warm : warm + N].T
    for m, lif, name in monitors:
        i = lifs.index(lif)
        out[f"{name}{i}"] = local(m.get_data()[lif.name][name], i)
    t5 = time.perf_counter()
    src.stop()
    timing = {"build_s": t1 - t0, "compile_s": t2 - t1, "start_s": t3 - t2, "run_s": t4 - t3, "read_s": t5 - t4,
              "stop_s": time.perf_counter() - t5, "steps": total}
    return out, timing
