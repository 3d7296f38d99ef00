"""PEPITA (Dellaferrera & Kreiman, ICML 2022; Srinivasan et al., ICLR 2024) on LIF layers.

Two forward passes of the same batch with the same encoder randomness (research/rules.md §4.4,
§4.5). Pass 1 presents ``x`` and gives the output error ``e = softmax(logits) - onehot(y)`` [B, C]
of the read-out. Pass 2 presents the error-modulated input ``x_err = x - F e`` (``F`` [n_in, C]
fixed, ``F_ij ~ F_scale * U(-sqrt(6 / n_in), sqrt(6 / n_in))``; the sign is the ICLR code's, which
weight mirroring needs). Each hidden layer compares a representation of the two passes::

    dL/dz_l   := (ubar_l - ubar_l_err) f'(z_l) / B                     (rep 'current', the default)
    dL/dz_l   := (f(z_l) - f(z_l_err)) f'(z_l_err) / B                 (rep 'threshold')
    dL/dz_l   := (z_l - z_l_err) / B                                   (rep 'linear')
    dL/dz_l   := (r_l - r_l_err) / B                                   (rep 'rate', r = counts / T)
    dL/dW_l    = (dL/dz_l)^T mean_t eps_l[t]    (traces of pass 1's input, pre 'clean'; pass 2's, pre 'err')
    dL/dW_out  = e^T r_L / B,  dL/db_out = mean_b e     (pass 1: the read-out's cross-entropy gradient)

with ``z_l = mean_t v_l[t]`` (pre-reset voltage), ``ubar_l = mean_t u_l[t]`` (synaptic current) and
``f(z) = atan(pi (z - vth)) / pi + 1/2``. This is PEPITA's ``Delta W_l = (h_l - h_l_err) h_{l-1}^T``
with the presynaptic activity replaced by its exact eligibility trace (§1.2). Nothing goes
through a spike and nothing crosses a layer; memory is flat in T. Biases are not trained
(PEPITA has none). Adam replaces the paper's SGD with momentum (``--pepita-optimizer sgd`` is the
paper's; the read-out has its own Adam, ``readout_lr``).

Why the defaults deviate from the papers (784-1000-10, T = 10, Fashion-MNIST, batch 128, Adam
5e-4, F_scale 0.5; test accuracy by epoch, measured; shallow, i.e. a fixed random hidden layer:
0.818 / 0.834 after 1 / 2 epochs, ~0.84 after 20; DFA 0.847 / 0.852 / 0.860 after 1-3):

* For one hidden layer PEPITA is feedback alignment with the adaptive matrix ``B_eff = W_1 F``
  [n_1, C] (Srinivasan et al.): ``z - z_err ~ W_1 F e``. With the papers' presynaptic factor
  ``x_err = x - F e`` the update ``-(W_1 F e)(x - F e)^T`` contains ``+W_1 F e e^T F^T``, which
  multiplies ``B_eff`` by ``(1 + eta e e^T F^T F)`` every step: ``|W_1 F|`` grew from 1.5 to 31 in
  the first epoch, the pass-2 perturbation grew with it, and the layer drifted off its code
  (0.784 / 0.791 after 1 / 2 epochs). The read-out's alignment was right (positive): the
  symmetric part of ``W_out W_1 F`` had its largest eigenvalue +14 vs smallest -2.2, cos(W_out,
  B_eff^T) = +0.27; so no sign error, a growing feedback. With pass 1's traces (``pre clean``)
  ``|W_1 F|`` stays at 1.5-1.7, cos(W_out, B_eff^T) reaches +0.5 and the update goes downhill on
  the batch at every check (0.813 / 0.824 / 0.829 after 1-3 epochs).
* The mean membrane ``z`` is not monotonic in the input for a spiking neuron (the reset pulls it
  down as the rate rises), so ``z - z_err`` has the wrong sign for neurons that fire and the
  effective feedback to the rates is inconsistent (all with ``pre clean``: 'linear' 0.755 /
  0.735 / 0.763; 'threshold' gates it to neurons near the threshold: 0.813 / 0.824 / 0.829). The synaptic
  current is linear in the input (exactly ``W_1 F e`` for the first layer under ``direct``
  encoding) and ``f'(z)`` gates it as DFA's ``f'`` does ('current': 0.831 / 0.849 / 0.841, then
  0.852 / 0.867 / 0.870 / 0.878 / 0.876 after 4-8 epochs). Spike rates (rules.md §4.4) change
  in too few neurons at T = 10 ('rate': 0.780 / 0.799 / 0.807). With 'current' the feedback is
  still the network's own response to ``x - F e``, and it adapts with ``W_1`` (it is not a fixed
  random matrix: that would be DFA); for one layer with Adam ``F_scale`` then only scales the
  update and Adam removes it (F_scale 1.0: 0.831 / 0.847 / 0.839).
* Defaults ('current', 'clean', Adam 5e-4, readout_lr 1e-3, F_scale 0.5), 20 epochs: test 0.8878
  (seed 0) and 0.8858 (seed 1), above DFA (~0.87) and shallow (~0.84); in the first epoch
  cos(W_out, B_eff^T) rises to +0.46, the cosine between the hidden update and the read-out's
  error sent back through ``W_out^T`` gated by ``f'(z)`` to +0.56-0.60 (0.24-0.40 with the old
  defaults), ``|W_1 F|`` 1.45 -> 2.03. On digits (recipe): 0.964 after 30 epochs (old: 0.967).
  With these defaults, after 1-3 epochs: ``--pepita-output modulated`` 0.837 / 0.846 / 0.847 (it
  no longer diverges), ``--pepita-wm on`` 0.819 / 0.838 / 0.851, ``--pepita-wd 1e-4`` 0.830 /
  0.847 / 0.846. 20 epochs, seed 0: SGD with momentum 0.9 (``--pepita-optimizer sgd --lr 0.1``,
  the papers' optimizer) 0.8837; ``--pepita-output modulated`` (the ICLR code's read-out) 0.8791.
* ``pre err`` with 'current' is still worse (0.826 / 0.834 / 0.833; with SGD 0.1: 0.774 / 0.730
  / 0.767). SGD with momentum 0.9 (``--lr 0.1``, 'current', 'clean') learns as well as Adam
  (0.833 / 0.845 / 0.853 ... 0.873 / 0.873 after 7-8 epochs); lr 0.03: 0.851, 0.3: 0.827, 1.0:
  0.729 after 3. ``readout_lr`` 3e-4 / 3e-3 (SGD 0.1) gave 0.842 / 0.851 after 3 epochs.

The papers update the read-out with pass 2's rates (``--pepita-output modulated``: ``e^T r_L_err``,
or ``second``: ``e_err^T r_L_err``); that is not a gradient, and on Fashion-MNIST with
``F_scale = 0.5`` (old defaults) it drifted until the logits diverged (test accuracy 65 % after
one epoch, 16 % after eight, measured), so the default is pass 1's true gradient.
With ``direct`` encoding pass 2's input is the current ``x - F e`` unclipped; with a spike
encoding the encoder's generator is rewound so that both passes draw the same random numbers
and ``x - F e`` is clipped to [0, 1].

Weight mirroring (``--pepita-wm on``, §4.2): ``F = B_1 B_2 ... B_{L+1}`` with ``B_l``
[n_{l-1}, n_l] (the last maps the read-out). Before every update each ``B_l`` takes one mirroring
step ``B_l += eta_WM (x~^T y~ / B - wd B_l)`` with ``x~ ~ N(0, sigma_WM^2)`` (mean-centred) and
``y~ = x~ W_l^T``, the current that ``x~`` drives into the layer's membrane; then the ``B_l`` are
rescaled together so that ``std(F) = F_scale * sqrt(2 / n_in)``. The first ``wm_pre_steps``
batches only mirror ("pre-mirroring"). Mirroring is per batch rather than per epoch block.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from spikeprop.eligibility import MembraneTraces
from spikeprop.network import simulate
from spikeprop.rules import Option, Rule, register
from spikeprop.rules.dfa import threshold_slope
from spikeprop.rules.sigprop import surrogate_activation
from spikeprop.validate import NON_NEGATIVE, POSITIVE, Range

REPS = ("threshold", "linear", "rate", "current")


class _Traces(MembraneTraces):
    """``MembraneTraces`` that also sums the synaptic current ``u`` of every layer."""

    def __init__(self, params):
        super().__init__(params)
        self.u_sum: list[torch.Tensor | float] = [0.0] * len(params)

    def __call__(self, layer, t, s_in, step):
        super().__call__(layer, t, s_in, step)
        self.u_sum[layer] = step.state.u.detach() + (self.u_sum[layer] if t else 0.0)

    def mean_u(self, layer: int) -> torch.Tensor:
        return self.u_sum[layer] / self.steps


@register("pepita")
class PEPITA(Rule):
    summary = "PEPITA: a second pass on the input modulated by the output error (x - F e); per-layer membrane differences"
    OPTIONS = {
        "F_scale": Option(float, 0.05, "scale of the fixed feedback matrix F relative to He-uniform(n_in)", allowed=POSITIVE),
        "wm": Option(str, "off", "weight mirroring of the factorised F = B_1 ... B_{L+1} (Srinivasan et al.)", ("off", "on")),
        "eta_wm": Option(float, 0.01, "learning rate eta_WM of weight mirroring", allowed=NON_NEGATIVE),
        "sigma_wm": Option(float, 0.1, "standard deviation of the mirroring noise x~", allowed=POSITIVE),
        "wd_wm": Option(float, 1e-4, "weight decay of the mirrored B_l", allowed=NON_NEGATIVE),
        "wm_pre_steps": Option(int, 100, "batches of mirroring only before PEPITA updates start (with --pepita-wm on)",
                               allowed=NON_NEGATIVE),
        "rep": Option(str, "current", "what the passes compare: threshold: f(z) = atan(pi (z - vth)) / pi + 1/2, "
                      "the update then scaled by f'(z_err) (the ReLU gate of PEPITA); linear: z; rate: the spike rates "
                      "r = counts / T; current: the mean synaptic current mean_t u[t], scaled by f'(z)", REPS),
        "readout_lr": Option(float, 1e-3, "learning rate of the read-out (Adam on its delta-rule gradient)", allowed=POSITIVE),
        "output": Option(str, "ce", "read-out update: ce: e^T r (pass 1, its true cross-entropy gradient); modulated: "
                         "e^T r_err (ICLR code); second: e_err^T r_err (ICML tutorial)", ("ce", "modulated", "second")),
        "pre": Option(str, "clean", "presynaptic factor of the hidden updates: err: pass 2's traces (x - F e; the papers); "
                      "clean: pass 1's traces (x)", ("err", "clean")),
        "optimizer": Option(str, "adam", "optimizer of the hidden weights: adam, or sgd with momentum (the papers': "
                            "SGD, momentum 0.9, lr 0.01)", ("adam", "sgd")),
        "momentum": Option(float, 0.9, "momentum of --pepita-optimizer sgd", allowed=Range(0.0, 1.0, high_open=True)),
        "wd": Option(float, 0.0, "weight decay of the hidden weights (Adam's L2 term; Srinivasan et al. use 1e-4)",
                     allowed=NON_NEGATIVE),
    }

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        n_in, n_classes = net.sizes[0], net.sizes[-1]
        like = net.readout.weight  # fixed matrices share the network's device and dtype
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.F_std = self.options["F_scale"] * math.sqrt(2.0 / n_in)
        if self.options["wm"] == "on":
            dims = list(net.sizes)
            self.B = [torch.randn(a, b, generator=self.generator).to(like) for a, b in zip(dims[:-1], dims[1:])]
            self._renormalise()
        else:
            bound = self.options["F_scale"] * math.sqrt(6.0 / n_in)
            self.B = [((torch.rand(n_in, n_classes, generator=self.generator) * 2 - 1) * bound).to(like)]
        self.steps = 0
        if self.options["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(list(net.weights), lr=config.lr, momentum=self.options["momentum"],
                                             weight_decay=self.options["wd"])
        else:
            self.optimizer = torch.optim.Adam(list(net.weights), lr=config.lr, weight_decay=self.options["wd"])
        self.readout_optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.options["readout_lr"])

    @property
    def F(self) -> torch.Tensor:
        """The feedback matrix [n_in, C] (the product of the B_l under weight mirroring)."""
        out = self.B[0]
        for b in self.B[1:]:
            out = out @ b
        return out

    def _renormalise(self) -> None:
        ratio = self.F_std / float(self.F.std())
        k = ratio ** (1.0 / len(self.B))
        self.B = [b * k for b in self.B]

    @torch.no_grad()
    def mirror(self) -> None:
        """One weight-mirroring step of every B_l (module docstring)."""
        weights = [*self.net.weights, self.net.readout.weight]
        sigma, eta, wd = self.options["sigma_wm"], self.options["eta_wm"], self.options["wd_wm"]
        for layer, w in enumerate(weights):
            x = torch.randn(self.config.batch_size, w.shape[1], generator=self.generator).to(w) * sigma
            x = x - x.mean(0, keepdim=True)
            y = x @ w.t()
            self.B[layer] = self.B[layer] + eta * (x.t() @ y / x.shape[0] - wd * self.B[layer])
        self._renormalise()

    def _passes(self, x: torch.Tensor, y: torch.Tensor):
        net, enc = self.net, self.encoder
        state = enc.generator.get_state() if enc.generator is not None else None
        xin = enc(x)
        T, B = xin.shape[0], xin.shape[1]
        tr1, tr2 = _Traces(net.params), _Traces(net.params)
        res1 = simulate(net, xin, reset_grad="constant", observer=tr1)
        onehot = F.one_hot(y, net.sizes[-1]).to(xin.dtype)
        e = torch.softmax(res1.logits, 1) - onehot
        Fe = e @ self.F.t()
        if enc.kind == "direct":
            xin_err = (x - Fe).unsqueeze(0).expand(T, *x.shape)  # the encoder's currents, unclipped
        else:
            if state is not None:
                enc.generator.set_state(state)
            xin_err = enc(x - Fe)
        res2 = simulate(net, xin_err, reset_grad="constant", observer=tr2)
        return T, B, e, onehot, res1, res2, tr1, tr2

    @torch.no_grad()
    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Set ``.grad`` of every trained tensor for one batch (module docstring); return the metrics."""
        net = self.net
        T, B, e, onehot, res1, res2, tr1, tr2 = self._passes(x, y)
        delta = []
        for layer in range(net.n_layers):
            z1, z2 = tr1.mean_v(layer), tr2.mean_v(layer)
            rep, vth = self.options["rep"], net.params[layer].vth
            if rep == "threshold":
                dz = (surrogate_activation(z1, vth) - surrogate_activation(z2, vth)) * threshold_slope(z2, vth) / B
            elif rep == "rate":
                dz = (res1.counts[layer] - res2.counts[layer]) / (T * B)
            elif rep == "current":
                dz = (tr1.mean_u(layer) - tr2.mean_u(layer)) * threshold_slope(z1, vth) / B
            else:
                dz = (z1 - z2) / B
            net.weights[layer].grad = (tr2 if self.options["pre"] == "err" else tr1).weight_grad(layer, dz)
            delta.append(float(dz.abs().sum(1).mean()) * B)
        output = self.options["output"]
        r = (res1 if output == "ce" else res2).counts[-1] / T
        e_out = torch.softmax(res2.logits, 1) - onehot if output == "second" else e
        net.readout.weight.grad = e_out.t() @ r / B
        net.readout.bias.grad = e_out.mean(0)
        loss = F.cross_entropy(res1.logits, y)
        metrics = {"loss": float(loss), "train_accuracy": float((res1.logits.argmax(1) == y).float().mean())}
        for i, d in enumerate(delta):
            metrics[f"layer{i + 1}_dz"] = d  # mean L1 distance of z between the passes: is there a signal?
        return metrics

    def train_step(self, x, y):
        self.steps += 1
        wm = self.options["wm"] == "on"
        if wm:
            self.mirror()
            if self.steps <= self.options["wm_pre_steps"]:
                return {}
        return self.apply_gradients(lambda: self.gradients(x, y), self.optimizer, self.readout_optimizer)

    def state_dict(self):
        return {"B": [b.clone() for b in self.B], "steps": self.steps, "generator": self.generator.get_state(),
                "optimizer": self.optimizer.state_dict(), "readout_optimizer": self.readout_optimizer.state_dict()}

    def load_state_dict(self, state):
        like = self.net.readout.weight
        self.B = [b.to(like) for b in state["B"]]
        self.steps = state["steps"]
        self.generator.set_state(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.readout_optimizer.load_state_dict(state["readout_optimizer"])
