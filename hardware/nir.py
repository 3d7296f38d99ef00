"""NIR export and import: spikeprop networks <-> Neuromorphic Intermediate Representation graphs.

NIR nodes are continuous-time. A spikeprop network is discrete (Lava's LIF, ``spikeprop.neurons``)::

    u[t] = u[t-1] (1 - du) + a[t]              a[t] = W s[t] (the Dense output)
    v[t] = v[t-1] (1 - dv) + u[t] + bias
    s[t] = v[t] > vth;  v[t] <- 0 where s[t]   (u is not reset)

The graph states the one discretisation under which its continuous parameters reproduce these
equations exactly (``to_continuous`` / ``to_discrete`` are the conversion, nothing else
converts): **forward Euler with the step ``dt`` written in the graph's metadata**, the current
updated before the voltage, which reads the new current::

    I[t] = I[t-1] + dt/tau_syn (-I[t-1] + w_in a[t])
    v[t] = v[t-1] + dt/tau_mem (v_leak - v[t-1] + r I[t])

so ``du = dt/tau_syn``, ``w_in = 1/du``, ``dv = dt/tau_mem``, ``r = 1/dv``, ``v_leak = bias/dv``.
These are the snnTorch conventions (``beta = 1 - dt/tau``, ``r = tau/dt``) with ``dt`` written
down instead of hard-coded; the default ``dt = 1e-4`` s is the value snnTorch's exporter and
importer hard-code, so its importer reads our LIF layers with the right ``beta``. A simulator
that discretises with ``exp(-dt/tau)`` instead gets ``1 - dv`` replaced by ``exp(-dv)`` (close,
not equal: NIR is not a bit-exact interchange).

Node per hidden layer, chosen by the decays:

- ``du = 1``, ``dv > 0``: ``Affine(W, bias) -> LIF(tau = dt/dv, r = 1/dv, v_leak = 0)``. With no
  synaptic memory, a bias in the Affine node adds ``bias`` to ``v`` every step, as Lava's does.
- ``du = 1``, ``dv = 0``: ``Affine(W, bias) -> IF(r = 1/dt)``.
- ``0 < du < 1``, ``dv > 0``: ``Linear(W) -> CubaLIF(tau_syn = dt/du, w_in = 1/du, tau_mem =
  dt/dv, r = 1/dv, v_leak = bias/dv)`` (a bias entering the current would be filtered by it).
- ``du < 1`` with ``dv = 0``, or ``du = 0``: not representable (an infinite time constant).

Reset: to zero (``v_reset = 0`` per neuron), strict threshold, the synaptic current is kept.
Every parameter is a per-neuron float64 array (a scalar shape breaks NIR's type inference,
research/lava.md §5.3); ``tau`` is nudged by at most a few ulps so that ``dt/tau`` gives back
the decay bit for bit, and where no float64 ``tau`` does, the importer takes the decimal of at most
12 digits within one ulp of ``dt/tau`` (``to_discrete``): every decay with a short decimal form
(0.045, Loihi's k/4096) comes back exactly, any other within two ulps.

Timing: ``Affine`` and ``Linear`` are instantaneous in NIR, so the graph has **no delay**: every
layer reads the previous layer's spikes of the same step, which is exactly ``simulate``'s
layer-local clock. Lava's Dense adds one step per hop; that is a pure shift of layer ``l``'s
clock by ``l + 1`` steps (``spikeprop.network.global_time``) and is not written as ``Delay``
nodes (the metadata says so).

Read-out: ``Affine(W_out, b_out) -> I(r = 1/dt) -> Output``: the integrator's voltage after T
steps is ``sum_t (W_out s[t] + b_out)``, T times spikeprop's class scores (same arg-max).

Import accepts chains of exactly these node types (``Linear`` or ``Affine`` before any neuron
node, read-out through ``I``, directly into ``Output`` (outputs averaged over time), or a spiking
last layer, whose spike counts are then the scores). Per-neuron gains (``w_in``, ``r``,
thresholds) are folded into the rows of the weights and biases, which leaves the spikes of the
equations unchanged. Anything else raises ``SpikepropError`` naming the node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import spikeprop
from spikeprop import SpikepropError
from spikeprop.files import prepare_parent
from spikeprop.network import Network
from spikeprop.neurons import LIFParams

DEFAULT_DT = 1e-4  # seconds per step: the dt snnTorch's NIR exporter and importer hard-code
CONVENTION = "spikeprop-nir/1"  # the metadata below; bump if the mapping ever changes
NUDGE_ULPS = 16  # how far _tau_for looks for a tau that gives the decay back exactly
SNAP_DIGITS = 12  # enough for every Loihi decay k/4096 (at most 12 significant digits)
GAIN_RTOL = 1e-9  # r*dt/tau within this of 1 is 1: float rounding of r = tau/dt, not a gain

SUPPORTED = ("Input", "Output", "Affine", "Linear", "LIF", "IF", "CubaLIF", "I")


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - nir is an install requirement
        raise SpikepropError("NIR support needs the 'nir' package: pip install nir") from None
    return nir


# ---------------------------------------------------------------------------------------------
# The one conversion between discrete decays and continuous time constants.


def _tau_for(decay: float, dt: float) -> float:
    """``tau`` near ``dt / decay`` whose ``dt / tau`` is ``decay`` exactly in float64, when one of the
    neighbouring floats gives it; otherwise the neighbour that comes closest (within an ulp)."""
    centre = dt / decay
    candidates = [centre]
    up = down = centre
    for _ in range(NUDGE_ULPS):
        up, down = np.nextafter(up, np.inf), np.nextafter(down, -np.inf)
        candidates += [up, down]
    return float(min(candidates, key=lambda tau: abs(dt / tau - decay)))


def to_continuous(params: LIFParams, dt: float) -> dict:
    """NIR's continuous constants of a discrete population under forward Euler with step ``dt``.

    Returns ``kind`` ('LIF', 'IF' or 'CubaLIF') and the scalars of that node: ``tau`` and ``r``
    (LIF: tau = dt/dv, r = 1/dv), ``r`` (IF: 1/dt), or ``tau_syn``, ``w_in`` (= dt/du, 1/du),
    ``tau_mem``, ``r`` (= dt/dv, 1/dv) for CubaLIF; ``v_threshold`` is ``vth`` in every case.
    The bias is not included: LIF/IF carry it in their Affine node, CubaLIF as ``v_leak = bias/dv``.
    """
    if not dt > 0:
        raise SpikepropError(f"dt must be > 0 seconds; got {dt}")
    du, dv, vth = params.du, params.dv, params.vth
    if du == 1.0:
        if dv == 0.0:
            return {"kind": "IF", "r": 1.0 / dt, "v_threshold": vth}
        return {"kind": "LIF", "tau": _tau_for(dv, dt), "r": 1.0 / dv, "v_threshold": vth}
    if du == 0.0 or dv == 0.0:
        raise SpikepropError(f"du={du}, dv={dv} has no NIR node: NIR's CubaLIF needs finite tau_syn and tau_mem "
                             "(du > 0 and dv > 0); NIR 1.0 has no current-based IF node")
    return {"kind": "CubaLIF", "tau_syn": _tau_for(du, dt), "w_in": 1.0 / du,
            "tau_mem": _tau_for(dv, dt), "r": 1.0 / dv, "v_threshold": vth}


def _shortest_near(x: float) -> float:
    """``x``, or the decimal of at most ``SNAP_DIGITS`` significant digits within one ulp of it.

    ``dt / (dt / d)`` can miss ``d`` by an ulp when no float64 ``tau`` inverts it exactly (about 7 %
    of three-decimal decays); the decays people choose (0.15, Loihi's k/4096) have short decimal
    forms, so this recovers them exactly, and leaves other values alone (a random float64 lies
    within an ulp of a 12-digit decimal with probability about 1e-4, and then moves by one ulp).
    """
    short = float(f"{x:.{SNAP_DIGITS}g}")
    return short if abs(short - x) <= np.spacing(x) else x


def to_discrete(tau_syn, tau_mem, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """The inverse: ``du = dt/tau_syn`` and ``dv = dt/tau_mem`` (``None``: no such leak, du = 1, dv = 0),
    each snapped to a short decimal within one ulp (``_shortest_near``)."""
    snap = np.vectorize(_shortest_near, otypes=[np.float64])
    du = np.asarray(1.0) if tau_syn is None else snap(dt / np.asarray(tau_syn, dtype=np.float64))
    dv = np.asarray(0.0) if tau_mem is None else snap(dt / np.asarray(tau_mem, dtype=np.float64))
    return du, dv


# ---------------------------------------------------------------------------------------------
# Export


def _metadata(dt: float, steps: int | None, extra: dict | None) -> dict:
    meta = {
        "convention": CONVENTION,
        "producer": f"spikeprop {spikeprop.__version__}",
        "dt": float(dt),
        "discretisation": "forward Euler with step dt; each step updates the synaptic current first and the "
                          "membrane voltage reads the new current: I += dt/tau_syn (w_in a - I); "
                          "v += dt/tau_mem (v_leak - v + r I)",
        "reset": "to zero: v <- v_reset (= 0) where v > v_threshold (strict); the synaptic current is not reset",
        "dense_delay_steps": 0,
        "timing": "Affine/Linear are instantaneous: each layer reads the previous layer's spikes of the same step. "
                  "Lava's Dense adds one step per hop, a pure shift that is not part of this graph",
        "readout": "the I node integrates W_out s + b_out; class scores = v_readout[T] / T",
    }
    if steps is not None:
        meta["steps"] = int(steps)
    meta.update(extra or {})
    return meta


def to_nir(net: Network, *, dt: float = DEFAULT_DT, steps: int | None = None, metadata: dict | None = None):
    """The NIR graph of ``net`` (module docstring: node types, parameters, conventions)."""
    if len(net.recurrent):
        raise SpikepropError("recurrent layers cannot be exported to NIR yet (their W_rec would be dropped)")
    conv = [syn.token() for syn in net.synapses if syn.kind != "dense"]
    if conv:
        raise SpikepropError(f"convolutional layers ({', '.join(conv)}) cannot be exported to NIR yet; "
                             "only fully-connected networks can")
    nir = _nir()
    nodes: dict = {"input": nir.Input(input_type={"input": np.array([net.sizes[0]])})}
    order = ["input"]
    # The weights as simulate runs them (fake-quantized when trained with --quantize loihi).
    transform = net.effective_weight
    for layer, (w, b, params) in enumerate(zip(net.weights, net.biases, net.params), start=1):
        w = transform(w).detach().cpu().numpy().astype(np.float32)
        b = b.detach().cpu().numpy().astype(np.float32)
        n = w.shape[0]
        c = to_continuous(params, dt)

        def full(value, n=n):
            return np.full(n, value, dtype=np.float64)

        zeros = np.zeros(n, dtype=np.float64)
        if c["kind"] == "IF":
            syn = nir.Affine(weight=w, bias=b)
            neuron = nir.IF(r=full(c["r"]), v_threshold=full(c["v_threshold"]), v_reset=zeros)
        elif c["kind"] == "LIF":
            syn = nir.Affine(weight=w, bias=b)
            neuron = nir.LIF(tau=full(c["tau"]), r=full(c["r"]), v_leak=zeros.copy(),
                             v_threshold=full(c["v_threshold"]), v_reset=zeros)
        else:
            syn = nir.Linear(weight=w)
            neuron = nir.CubaLIF(tau_syn=full(c["tau_syn"]), tau_mem=full(c["tau_mem"]), r=full(c["r"]),
                                 v_leak=b.astype(np.float64) / params.dv, v_threshold=full(c["v_threshold"]),
                                 v_reset=zeros, w_in=full(c["w_in"]))
        nodes[f"fc{layer}"], nodes[f"lif{layer}"] = syn, neuron
        order += [f"fc{layer}", f"lif{layer}"]
    w_out = transform(net.readout.weight).detach().cpu().numpy().astype(np.float32)
    b_out = net.readout.bias.detach().cpu().numpy().astype(np.float32)
    nodes["readout"] = nir.Affine(weight=w_out, bias=b_out)
    nodes["integrator"] = nir.I(r=np.full(w_out.shape[0], 1.0 / dt, dtype=np.float64))
    nodes["output"] = nir.Output(output_type={"output": np.array([w_out.shape[0]])})
    order += ["readout", "integrator", "output"]
    edges = list(zip(order[:-1], order[1:]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(dt, steps, metadata))


def export_nir(net: Network, path: str | Path, *, dt: float = DEFAULT_DT, steps: int | None = None,
               metadata: dict | None = None):
    """Write ``net`` as a NIR file (HDF5) at ``path``; returns the graph."""
    nir = _nir()
    graph = to_nir(net, dt=dt, steps=steps, metadata=metadata)
    path = Path(path)
    if path.is_dir():
        raise SpikepropError(f"cannot write {path}: it is a directory")
    prepare_parent(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        nir.write(tmp, graph)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return graph


# ---------------------------------------------------------------------------------------------
# Import


def load_nir(path: str | Path):
    """Read a NIR file into a ``nir.NIRGraph`` (a clear error for a missing or unreadable file)."""
    nir = _nir()
    path = Path(path)
    if not path.is_file():
        raise SpikepropError(f"{path} does not exist")
    try:
        return nir.read(path)
    except (OSError, KeyError, ValueError, TypeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpikepropError(f"{path} is not a readable NIR graph ({first})") from None


def _chain(graph) -> list[str]:
    """The node names from Input to Output of a graph that must be a simple chain."""
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    bad = [f"'{name}' ({kind})" for name, kind in kinds.items() if kind not in SUPPORTED]
    if bad:
        raise SpikepropError(f"unsupported NIR node(s): {', '.join(bad)}; spikeprop imports chains of "
                             f"{', '.join(SUPPORTED)}")
    inputs = [n for n, k in kinds.items() if k == "Input"]
    outputs = [n for n, k in kinds.items() if k == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise SpikepropError(f"the graph needs exactly one Input and one Output node; it has inputs {inputs} "
                             f"and outputs {outputs}")
    succ: dict[str, list[str]] = {n: [] for n in kinds}
    for a, b in graph.edges:
        succ[a].append(b)
    chain = [inputs[0]]
    while chain[-1] != outputs[0]:
        nxt = succ[chain[-1]]
        if len(nxt) != 1 or nxt[0] in chain:
            raise SpikepropError(f"node '{chain[-1]}' has successors {nxt}: spikeprop imports feed-forward chains "
                                 "(no branches, no recurrence)")
        chain.append(nxt[0])
    if len(chain) != len(kinds):
        rest = sorted(set(kinds) - set(chain))
        raise SpikepropError(f"node(s) {rest} are not on the path from Input to Output")
    return chain


def _arr(x, n: int, name: str, field: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpikepropError(f"node '{name}': {field} is not an array of numbers") from None
    if not np.all(np.isfinite(a)):
        raise SpikepropError(f"node '{name}': {field} holds NaN or infinite values")
    if a.ndim == 0:
        a = np.full(n, float(a))
    a = a.reshape(-1)
    if a.shape != (n,):
        raise SpikepropError(f"node '{name}': {field} has {a.size} values for {n} neurons")
    return a


def _uniform(values: np.ndarray, name: str, field: str) -> float:
    if not np.all(values == values[0]):
        raise SpikepropError(f"node '{name}': {field} differs between neurons; Lava (and spikeprop) keep one value "
                             "per population (split the layer to export it)")
    return float(values[0])


def _snap(gain: np.ndarray) -> np.ndarray:
    return np.where(np.abs(gain - 1.0) <= GAIN_RTOL, 1.0, gain)


def _neuron(node, name: str, n: int, dt: float) -> tuple[LIFParams, np.ndarray, np.ndarray, np.ndarray]:
    """Discrete (params, gain on the synaptic input, bias in v, threshold per neuron) of a neuron node."""
    kind = type(node).__name__
    v_reset = _arr(node.v_reset if node.v_reset is not None else 0.0, n, name, "v_reset")
    if np.any(v_reset != 0):
        raise SpikepropError(f"node '{name}' ({kind}) resets to v_reset != 0; Lava's LIF resets to 0")
    vth = _arr(node.v_threshold, n, name, "v_threshold")
    if kind == "IF":
        du, dv = 1.0, 0.0
        gain = dt * _arr(node.r, n, name, "r")
        bias = np.zeros(n)
    elif kind == "LIF":
        du = 1.0
        dv_all = to_discrete(None, _arr(node.tau, n, name, "tau"), dt)[1]
        dv = _uniform(dv_all, name, "tau")
        gain = dv_all * _arr(node.r, n, name, "r")
        bias = dv_all * _arr(node.v_leak, n, name, "v_leak")
    else:  # CubaLIF
        du_all, dv_all = to_discrete(_arr(node.tau_syn, n, name, "tau_syn"), _arr(node.tau_mem, n, name, "tau_mem"), dt)
        du, dv = _uniform(du_all, name, "tau_syn"), _uniform(dv_all, name, "tau_mem")
        gain = _snap(du_all * _arr(node.w_in, n, name, "w_in")) * _snap(dv_all * _arr(node.r, n, name, "r"))
        bias = dv_all * _arr(node.v_leak, n, name, "v_leak")
    for field, d in (("du", du), ("dv", dv)):
        if not 0.0 <= d <= 1.0:
            raise SpikepropError(f"node '{name}' ({kind}): {field} = dt/tau = {d:g} is outside [0, 1] with dt = {dt:g} s; "
                                 "a time constant shorter than dt is unstable under forward Euler (give a smaller --dt)")
    if np.any(vth <= 0):
        raise SpikepropError(f"node '{name}' ({kind}): v_threshold must be > 0")
    return LIFParams(du=du, dv=dv, vth=float(vth.max())), _snap(gain), bias, vth


def from_nir(graph, *, dt: float | None = None) -> Network:
    """A spikeprop ``Network`` from a NIR graph (module docstring: accepted chains, folding).

    dt: seconds per step; default the graph's ``metadata['dt']``, else ``DEFAULT_DT``.
    """
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        try:
            dt = float(meta.get("dt", DEFAULT_DT))
        except (TypeError, ValueError):
            raise SpikepropError(f"the graph's metadata dt {meta.get('dt')!r} is not a number; give --dt") from None
    if not (np.isfinite(dt) and dt > 0):
        raise SpikepropError(f"dt must be a finite number of seconds > 0; got {dt}")
    chain = _chain(graph)
    nodes = [(name, graph.nodes[name], type(graph.nodes[name]).__name__) for name in chain[1:-1]]
    n_in = int(np.prod(graph.nodes[chain[0]].input_type["input"]))
    layers = []  # (W, bias, params)
    readout = None
    i, n_prev = 0, n_in
    while i < len(nodes):
        name, node, kind = nodes[i]
        if kind not in ("Affine", "Linear"):
            raise SpikepropError(f"node '{name}' ({kind}) must follow an Affine or Linear node")
        w = np.asarray(node.weight, dtype=np.float64)
        if not np.all(np.isfinite(w)):
            raise SpikepropError(f"node '{name}': the weights hold NaN or infinite values")
        if w.ndim != 2 or w.shape[1] != n_prev:
            raise SpikepropError(f"node '{name}': weight shape {w.shape} does not take {n_prev} inputs")
        b = _arr(node.bias, w.shape[0], name, "bias") if kind == "Affine" else np.zeros(w.shape[0])
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        if nxt is None:  # scores straight out of the Affine node, averaged over time
            readout = (w, b)
            break
        if nxt[2] == "I":
            if i + 2 != len(nodes):
                raise SpikepropError(f"node '{nxt[0]}' (I): the integrator must be the read-out, right before Output")
            gain = _snap(dt * _arr(nxt[1].r, w.shape[0], nxt[0], "r"))
            readout = (w * gain[:, None], b * gain)
            break
        nname, nnode, nkind = nxt
        if nkind not in ("LIF", "IF", "CubaLIF"):
            raise SpikepropError(f"node '{nname}' ({nkind}) cannot follow '{name}' ({kind}); expected LIF, IF or "
                                 "CubaLIF (or I as the read-out)")
        params, gain, bias_v, vth = _neuron(nnode, nname, w.shape[0], dt)
        if np.any(b != 0) and params.du < 1.0:
            raise SpikepropError(f"node '{name}' has a bias that enters the synaptic current of '{nname}' (tau_syn > dt): "
                                 "Lava's bias enters the voltage; write it as v_leak and use Linear")
        # Every term of v is linear in (W, bias): scaling row i by k scales neuron i's voltage by k,
        # so thresholds are equalised by scaling rows with vth_ref / vth_i (spikes unchanged).
        scale = gain * (params.vth / vth)
        layers.append((w * scale[:, None], b * scale + bias_v * (params.vth / vth), params))
        n_prev = w.shape[0]
        i += 2
    if not layers:
        raise SpikepropError("the graph has no spiking layer (LIF, IF or CubaLIF)")
    if readout is None:  # the last layer spikes straight into Output: its counts are the scores
        n = n_prev
        readout = (np.eye(n), np.zeros(n))
    sizes = [n_in, *(w.shape[0] for w, _, _ in layers), readout[0].shape[0]]
    net = Network(sizes, [p for _, _, p in layers])
    with torch.no_grad():
        for layer, (w, b, _) in enumerate(layers):
            net.weights[layer].copy_(torch.from_numpy(w))
            net.biases[layer].copy_(torch.from_numpy(b))
        net.readout.weight.copy_(torch.from_numpy(readout[0]))
        net.readout.bias.copy_(torch.from_numpy(readout[1]))
    return net


def import_nir(path: str | Path, *, dt: float | None = None) -> Network:
    """Read a NIR file into a ``Network`` (``from_nir`` on ``load_nir``)."""
    return from_nir(load_nir(path), dt=dt)
