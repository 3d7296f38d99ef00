"""The only module that imports Lava (lava-nc 0.10.0): the float mapping, processes, runs, the 3.11 shim.

``run(network, x)`` runs a ``FixedNetwork`` (fixed_pt) or a ``FloatNetwork`` (floating_pt,
``floating_pt_network`` maps a trained float network to one) on Lava's CPU simulator, for inputs
``x`` [T, B, n_in] (what the source sends: integer payloads or floats), and returns time-major
results like every other backend. The child process that runs Lava reads the network from the
file ``hardware.loihi.save`` writes.

Graph, per sample window of T steps::

    RingBuffer(payloads) -> [Dense -> LIFReset] x L -> Dense -> LIFReset (read-out integrator)
                                      |                                  |
                               sink RingBuffer (spikes)          Read(v, once per sample)

Samples run back to back in ONE compiled network: layer i (0-based, the read-out is i = L)
integrates sample s's local step k at global step ``s·T + k + i + 2``, so each LIF is a
``LIFReset(reset_interval=T, reset_offset=(i + 2) mod T)`` that zeroes u and v at its sample's
first step (the Dense buffers are not reset: they already carry the new sample). That is the
per-sample zero-state form ``spikeprop.network.simulate`` and ``hardware.emulator.emulate`` compute.
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

from hardware import loihi
from hardware.loihi import FLOAT_UNREACHABLE, FixedNetwork, FloatLayer, FloatNetwork
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
# The float mapping


def floating_pt_network(net, steps: int, *, graded_input: bool, input_bits: int = 0) -> FloatNetwork:
    """A trained ``spikeprop.network.Network`` as Lava floating_pt parameters (float64).

    Weights are the ones ``simulate`` uses (after ``net.weight_transform``); the read-out is a
    non-spiking integrator (du = 1, dv = 0, an unreachable threshold) whose v after T steps is
    T·logits. graded_input, input_bits: how the source sends the input (graded values need
    message bits on the first Dense; binary spikes none)."""
    if len(net.recurrent):
        raise SpikepropError("recurrent layers cannot run on Lava yet (their W_rec would be dropped)")

    def f64(t) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    weights = [net.effective_weight(w) for w in net.weights]
    layers = tuple(FloatLayer(f64(w), float(p.du), float(p.dv), float(p.vth), loihi.neuron_bias(syn, f64(b)), syn)
                   for w, b, p, syn in zip(weights, net.biases, net.params, net.synapses))
    readout = FloatLayer(f64(net.effective_weight(net.readout.weight)), 1.0, 0.0, FLOAT_UNREACHABLE, f64(net.readout.bias))
    return FloatNetwork(layers, readout, int(steps), graded_input, input_bits)


# --------------------------------------------------------------------------------------------
# Running networks on Lava's CPU simulator

ROOT = Path(__file__).resolve().parent.parent
# Generous default limit: start-up, compile (~0.3 s per chunk), ~1 ms per simulated step per
# layer and ~15 µs per value read back (Var.get sends one element per message), each with a
# factor of about 5 for a busy 2-core machine; a hang is still reported, not waited on.
TIMEOUT_BASE_S = 120.0
TIMEOUT_PER_CHUNK_S = 2.0
TIMEOUT_PER_STEP_S = 0.005
TIMEOUT_PER_READ_S = 1e-4
EXIT_WORKER_ERROR = 3  # the child's status when Lava raised (its runtime is then unusable)
EXIT_SIGNAL_BASE = 128  # a process ended by signal N exits with 128 + N (the shell's convention)
TEMP_PREFIX = "spikeprop-lava-"  # each run's temporary directory (network, input, results, the child's log)
WATCHDOG_POLL_S = 0.1  # how often the child checks that its parent is alive: the delay before cleanup


class LavaResult(NamedTuple):
    """Results of ``run``, time-major and sample-aligned (each layer in its local clock, as
    ``simulate`` and ``emulate`` give them).

    spikes: per hidden layer [T, B, n] bool (None with ``record_spikes=False``); v_out: the
    read-out's v at the end of each sample [B, C]; u, v: per layer including the read-out
    [T, B, n] after the step's reset (only with ``record_uv``); timing: seconds for build,
    compile, runtime start, run, read, per chunk summed.
    """

    spikes: list[np.ndarray] | None
    v_out: np.ndarray
    u: list[np.ndarray] | None
    v: list[np.ndarray] | None
    timing: dict


def default_timeout(network: FixedNetwork | FloatNetwork, B: int, T: int, *, record_spikes: bool, record_uv: bool,
                    chunk: int) -> float:
    """Seconds after which a run of B samples counts as a silent hang (constants above)."""
    layers = network.layers
    chunks = -(-B // chunk)
    steps = B * T + chunks * (len(layers) + 1)
    neurons = sum(la.n_out for la in layers)
    reads = steps * neurons * record_spikes + (2 * steps * (neurons + network.readout.n_out) if record_uv else 0)
    return (TIMEOUT_BASE_S + TIMEOUT_PER_CHUNK_S * chunks + TIMEOUT_PER_STEP_S * steps * (len(layers) + 1)
            + TIMEOUT_PER_READ_S * reads)


def run(network: FixedNetwork | FloatNetwork, x, *, record_spikes: bool = True, record_uv: bool = False,
        chunk: int = 500, timeout: float | None = None) -> LavaResult:
    """Run B samples ``x`` [T, B, n_in] back to back on Lava's CPU simulator
    (``Loihi2SimCfg(select_tag=network.precision)``).

    x holds what the source sends: integer payloads for a FixedNetwork (graded values or 0/1,
    ``FixedNetwork.payload``), floats for a FloatNetwork. ``chunk`` samples share one compiled
    network (``chunk=1`` compiles once per sample: the naive baseline). ``record_spikes=False``
    reads back only the read-out voltages (Lava's Var reads cost ~15 µs per value, so reading every
    spike dominates a long run). Runs in a child process with a timeout (module docstring); raises
    SpikepropError on a hang or a Lava error, after killing the child and all its workers.
    """
    x = np.asarray(x)
    if x.ndim > 3:  # an image [T, B, C, H, W]: the first Dense reads it flattened in C-H-W order
        x = x.reshape(*x.shape[:2], -1)
    n_in = network.layers[0].n_in
    if x.ndim != 3 or x.shape[2] != n_in:
        raise SpikepropError(f"inputs must be [T, B, {n_in}]; got {x.shape}")
    # What Lava would round, clip or hang on is refused here, before a process starts.
    problems = loihi.check_params(network) if isinstance(network, FixedNetwork) else loihi.chain_problems(network)
    if problems:
        raise SpikepropError("Lava would not run this network as written: " + "; ".join(problems))
    if chunk < 1:
        raise SpikepropError("chunk must be >= 1")
    T, B, _ = x.shape
    if timeout is None:
        timeout = default_timeout(network, B, T, record_spikes=record_spikes, record_uv=record_uv, chunk=chunk)
    with _terminate_raises(), tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        tmp = Path(tmp)
        loihi.save(network, tmp / "network.npz")
        # An input that repeats over time (direct encoding: a stride-0 time axis) travels as one step.
        constant = T > 1 and x.strides[0] == 0
        np.save(tmp / "x.npy", np.ascontiguousarray(x[:1] if constant else x))
        (tmp / "run.json").write_text(json.dumps({"shape": list(x.shape), "record_spikes": record_spikes,
                                                  "record_uv": record_uv, "chunk": chunk}))
        out = tmp / "out.npz"
        _run_child(tmp, out, timeout)
        with np.load(out, allow_pickle=False) as z:
            timing = json.loads(str(z["timing"]))
            n_all = len(network.layers) + 1
            spikes = [z[f"s{i}"].astype(bool) for i in range(len(network.layers))] if record_spikes else None
            u = [z[f"u{i}"] for i in range(n_all)] if record_uv else None
            v = [z[f"v{i}"] for i in range(n_all)] if record_uv else None
            return LavaResult(spikes, z["v_out"], u, v, timing)


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


# The child's program: ``_child_main(run_dir, out, parent pid)``.
CHILD_CODE = "import sys; from hardware.lava import _child_main; _child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))"


def _run_child(run_dir: Path, out: Path, timeout: float, code: str | None = None) -> None:
    """Run ``CHILD_CODE`` (or ``code``) on (run_dir, out, our pid) in a new process group; kill the
    group on timeout or error."""
    code = code or CHILD_CODE
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = run_dir / "child.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir), str(out), str(os.getpid())], stdout=logf,
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


def _child_main(run_dir: str, out_path: str, parent: int) -> None:
    """Entry point of the child process: read the network and input, build, run, write results;
    never returns. ``parent``: the pid of the process that started it; a watchdog thread cleans up
    if it dies."""
    run_dir = Path(run_dir)
    threading.Thread(target=_watch_parent, args=(parent, run_dir), name="spikeprop-watchdog", daemon=True).start()
    try:
        network = loihi.load(run_dir / "network.npz")
        opts = json.loads((run_dir / "run.json").read_text())
        x = np.broadcast_to(np.load(run_dir / "x.npy"), tuple(opts["shape"]))  # [T, B, n_in]; a view when sent as one step
        results, timing = [], {}
        for start in range(0, x.shape[1], opts["chunk"]):
            built = build(network, x[:, start : start + opts["chunk"]], record_spikes=opts["record_spikes"],
                          record_uv=opts["record_uv"])
            res, t = run_built(built)
            results.append(res)
            for k, val in t.items():
                timing[k] = timing.get(k, 0.0) + val
        arrays = {k: np.concatenate([r[k] for r in results], axis=0 if k == "v_out" else 1) for k in results[0]}
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


def to_lava_time(x: np.ndarray, steps: int, dtype) -> np.ndarray:
    """Lava's time-last layout, the only place spikeprop's [T, B, n] meets it: x [T, B, n] ->
    [n, steps] with sample b's step t at column b·T + t (samples back to back, zero padding after)."""
    T, B, n = x.shape
    data = np.zeros((n, steps), dtype=dtype)
    for b in range(B):  # sample by sample: a time-constant x stays a view (no [B·T, n] copy)
        data[:, b * T : (b + 1) * T] = x[:, b].T
    return data


def from_lava_time(arr: np.ndarray, layer: int, T: int, B: int) -> np.ndarray:
    """The inverse for layer ``layer``'s record [steps, n] in global steps: [T, B, n] in the layer's
    local clock (sample b's local step t is global step b·T + t + layer + 1)."""
    return arr[layer + 1 : layer + 1 + B * T].reshape(B, T, -1).transpose(1, 0, 2)


class Built(NamedTuple):
    """A compiled-to-be Lava graph for one chunk of samples (``build``), run by ``run_built``."""

    source: object
    sinks: list
    lifs: list
    monitors: list
    reader: object
    tag: str
    T: int
    B: int
    L: int
    total: int
    warm: int
    build_s: float
    shapes: list  # each layer's population shape in spikeprop's order ((n,) or (C, H, W))


def lava_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Lava's shape of a population or port: a feature map (C, H, W) is (X, Y, C) = (W, H, C) in
    Lava (lava/proc/conv: "(W, H, C) format"); a flat population keeps its (n,)."""
    return tuple(shape) if len(shape) == 1 else (shape[2], shape[1], shape[0])


def whc_order(shape: tuple[int, ...]) -> np.ndarray:
    """``perm`` with ``flat_whc = flat_chw[perm]``: Lava's C-order flattening of a (W, H, C) map
    (what ``OutPort.flatten()`` sends) in terms of PyTorch's C-H-W flattening (the identity for a flat shape)."""
    n = int(np.prod(shape))
    return np.arange(n) if len(shape) == 1 else np.arange(n).reshape(shape).transpose(2, 1, 0).reshape(-1)


def to_lava_map(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-neuron array [..., n] in C-H-W order -> [..., *lava_shape(shape)]."""
    if len(shape) == 1:
        return a
    return np.moveaxis(a.reshape(*a.shape[:-1], *shape), (-3, -2, -1), (-1, -2, -3))


def from_lava_map(a: np.ndarray, shape: tuple[int, ...], axis_first: bool) -> np.ndarray:
    """The inverse on a record: [*lava_shape, steps] (``axis_first`` False: a sink's data) or
    [steps, *lava_shape] (True: a monitor's) -> [steps, n] in C-H-W order."""
    if not axis_first:
        a = np.moveaxis(a, -1, 0)
    if len(shape) == 1:
        return a.reshape(a.shape[0], -1)
    return np.moveaxis(a, (1, 2, 3), (3, 2, 1)).reshape(a.shape[0], -1)


def conv_matrix(syn, w: np.ndarray) -> np.ndarray:
    """A convolution's kernel unrolled into its connection matrix [n_out, n_in] (both C-H-W order):
    ``M @ s.flatten() == conv2d(s, w).flatten()`` (PyTorch's cross-correlation, zero padding)."""
    (c_in, h, wd), (kh, kw), (sh, sw), (ph, pw) = syn.in_shape, syn.kernel, syn.stride, syn.padding
    c_out, oh, ow = syn.out_shape
    m = np.zeros((c_out, oh, ow, c_in, h, wd), dtype=w.dtype)
    for ky in range(kh):
        ys = np.arange(oh) * sh + ky - ph
        yo = np.nonzero((ys >= 0) & (ys < h))[0]
        for kx in range(kw):
            xs = np.arange(ow) * sw + kx - pw
            xo = np.nonzero((xs >= 0) & (xs < wd))[0]
            for c in range(c_in):
                # m[o, yo, xo, c, ys[yo], xs[xo]] = w[o, c, ky, kx]
                m[:, yo[:, None], xo[None, :], c, ys[yo][:, None], xs[xo][None, :]] = w[:, c, ky, kx][:, None, None]
    return m.reshape(c_out * oh * ow, c_in * h * wd)


def conv_kernel_lava(w: np.ndarray) -> np.ndarray:
    """A PyTorch kernel [C_out, C_in, kH, kW] (cross-correlation) as Lava Conv's weight [C_out, kW, kH, C_in]:
    Lava's Conv is a true convolution (scipy.signal.convolve2d over (X, Y)), so the taps are flipped."""
    return np.ascontiguousarray(w.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :])


def build(network: FixedNetwork | FloatNetwork, x: np.ndarray, *, record_spikes: bool, record_uv: bool) -> Built:
    """The Lava processes of ``network`` for the samples x [T, B, n_in] (module docstring's graph);
    in the child process. ``hardware.lava`` is the one place a layer record becomes Lava processes.

    Each synapse becomes the process ``loihi.lava_process`` names: ``Dense``; ``Conv`` (its kernel
    flipped and transposed to Lava's [C_out, kW, kH, C_in]); or ``Sparse`` (the kernel unrolled,
    ``conv_matrix``). A convolution's LIF population has Lava's (W, H, C) shape; a Dense or Sparse
    reads a map through ``OutPort.flatten()`` (Lava's W-H-C order: its weight columns are permuted
    from PyTorch's C-H-W, ``whc_order``) and a Sparse's output is reshaped into its map. Records are
    turned back into C-H-W order, so results look like the emulator's."""
    import_lava()
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import Read
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.monitor.process import Monitor
    from lava.proc.sparse.process import Sparse
    from scipy.sparse import csr_matrix

    t0 = time.perf_counter()
    T, B, _ = x.shape
    layers = [*network.layers, network.readout]
    L = len(layers) - 1  # hidden layers; layers[-1] is the read-out
    total = B * T + L + 1
    fixed = isinstance(network, FixedNetwork)
    dtype = np.int32 if fixed else np.float64
    first = layers[0]
    in_shape = tuple(first.synapse.in_shape) if first.kind == "conv2d" else (first.n_in,)
    # The source sends the first layer's input in the shape its process reads: a map (W, H, C) for a Conv.
    src_shape = in_shape if loihi.lava_process(first) == "Conv" else (first.n_in,)
    src = Source(data=np.moveaxis(to_lava_map(to_lava_time(x, total, dtype).T, src_shape), 0, -1))
    prev, prev_shape = src.s_out, src_shape
    sinks, lifs, monitors, shapes = [], [], [], []
    for i, la in enumerate(layers):
        bits = network.input_bits if i == 0 and network.graded_input else 0
        process = loihi.lava_process(la)
        out_shape = la.out_shape
        w = la.weights.astype(dtype)
        exp = {"weight_exp": int(la.weight_exp)} if fixed else {}
        if process == "Conv":
            syn = la.synapse
            conn = Conv(weight=conv_kernel_lava(w), input_shape=lava_shape(syn.in_shape), padding=syn.padding[::-1],
                        stride=syn.stride[::-1], num_message_bits=bits, **exp)
            prev.connect(conn.s_in)
        else:
            matrix = conv_matrix(la.synapse, w) if process == "Sparse" else w
            # rows in the order the LIF is laid out, columns in the order the input arrives
            matrix = matrix[whc_order(out_shape)][:, whc_order(prev_shape)]
            conn = (Sparse(weights=csr_matrix(matrix), num_message_bits=bits, **exp) if process == "Sparse"
                    else Dense(weights=matrix, num_message_bits=bits, **exp))
            (prev.flatten() if len(prev_shape) > 1 else prev).connect(conn.s_in)
        if fixed:
            # Python ints: a float parameter under fixed_pt breaks Lava's worker (a silent hang)
            neuron = {"du": int(la.du), "dv": int(la.dv), "vth": int(la.vth),
                      "bias_mant": to_lava_map(la.bias_mant.astype(np.int32), out_shape),
                      "bias_exp": to_lava_map(la.bias_exp.astype(np.int32), out_shape)}
        else:
            neuron = {"du": float(la.du), "dv": float(la.dv), "vth": float(la.vth),
                      "bias_mant": to_lava_map(la.bias.astype(np.float64), out_shape),
                      "bias_exp": np.zeros(lava_shape(out_shape), dtype=np.int32)}
        lif = LIFReset(shape=lava_shape(out_shape), reset_interval=T, reset_offset=(i + 2) % T, **neuron)
        (conn.a_out.reshape(lava_shape(out_shape)) if process == "Sparse" else conn.a_out).connect(lif.a_in)
        if i < L and record_spikes:
            sink = Sink(shape=lava_shape(out_shape), buffer=total)
            lif.s_out.connect(sink.a_in)
            sinks.append(sink)
        if record_uv:
            for var in (lif.u, lif.v):
                m = Monitor()
                m.probe(var, total)
                monitors.append((m, lif, var.name))
        lifs.append(lif)
        shapes.append(out_shape)
        prev, prev_shape = lif.s_out, out_shape
    # The read-out's v after its last step of sample b is read in post-management at global
    # step (b+1)·T + L + 1; reads happen when (t - 1) mod T == L mod T, and the first
    # 1 + L // T reads precede sample 0 (warm-up reads).
    warm = 1 + L // T
    reader = Read(buffer=B + warm, interval=T, offset=L % T)
    reader.connect_var(lifs[-1].v)
    return Built(src, sinks, lifs, monitors, reader, network.precision, T, B, L, total, warm, time.perf_counter() - t0,
                 shapes)


def run_built(built: Built) -> tuple[dict, dict]:
    """Compile, run and read back a ``build``; returns time-major arrays and the timing."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    src, T, B = built.source, built.T, built.B
    t1 = time.perf_counter()
    executable = src.compile(run_cfg=Loihi2SimCfg(select_tag=built.tag))
    t2 = time.perf_counter()
    src.create_runtime(executable=executable)
    t3 = time.perf_counter()
    src.run(condition=RunSteps(num_steps=built.total))
    t4 = time.perf_counter()
    out = {f"s{i}": from_lava_time(from_lava_map(sink.data.get(), built.shapes[i], False), i, T, B).astype(np.int8)
           for i, sink in enumerate(built.sinks)}
    out["v_out"] = built.reader.data.get()[:, built.warm : built.warm + B].T
    for m, lif, name in built.monitors:
        i = built.lifs.index(lif)
        out[f"{name}{i}"] = from_lava_time(from_lava_map(m.get_data()[lif.name][name], built.shapes[i], True), i, T, B)
    t5 = time.perf_counter()
    src.stop()
    timing = {"build_s": built.build_s, "compile_s": t2 - t1, "start_s": t3 - t2, "run_s": t4 - t3, "read_s": t5 - t4,
              "stop_s": time.perf_counter() - t5, "steps": built.total}
    return out, timing
