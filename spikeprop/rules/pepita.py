"""PEPITA (Dellaferrera & Kreiman, ICML 2022; Srinivasan et al., ICLR 2024) on LIF layers.

Two forward passes of the same batch with the same encoder randomness (the
papers' scheme). Pass 1 presents ``x`` and gives the output error ``e = softmax(logits) - onehot(y)`` [B, C]
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
with the presynaptic activity replaced by its exact eligibility trace. Nothing goes
through a spike and nothing crosses a layer; memory is flat in T. Biases are not trained
(PEPITA has none). Adam replaces the paper's SGD with momentum (``--pepita-optimizer sgd`` is the
paper's; the read-out has its own Adam, ``readout_lr``).

Why the defaults deviate from the papers (each measured on Fashion-MNIST 784-1000-10, T = 10;
the measurements are in docs/rules.md):

* ``pre clean`` (pass 1's traces): with the papers' presynaptic factor ``x - F e`` the update
  contains ``+W_1 F e e^T F^T``, which grows the effective feedback ``W_1 F`` every step until the
  layer drifts off its code.
* ``rep current``: the mean membrane is not monotone in the input for a spiking neuron (the reset
  pulls it down as the rate rises), the synaptic current is linear in it; ``f'(z)`` gates the
  difference to neurons near the threshold, as DFA's ``f'`` does.
* Adam by default; the papers' SGD with momentum (``--pepita-optimizer sgd --lr 0.1``) learns
  about as well.

The papers update the read-out with pass 2's rates (``--pepita-output modulated``: ``e^T r_L_err``,
or ``second``: ``e_err^T r_L_err``); that is not a gradient, and on Fashion-MNIST with
``F_scale = 0.5`` (old defaults) it drifted until the logits diverged (test accuracy 65 % after
one epoch, 16 % after eight), so the default is pass 1's true gradient.
With ``direct`` encoding pass 2's input is the current ``x - F e`` unclipped; with a spike
encoding the encoder's generator is rewound so that both passes draw the same random numbers
and ``x - F e`` is clipped to [0, 1]. A temporal dataset (``sequence`` or ``events`` encoding)
gets the same modulation at every step: pass 2's input at step t is the current ``x[t] - F e``
(``F`` maps to one step's frame), for event spikes too: pass 2 is never deployed, and spikes of
``x[t] - F e`` would round the small modulation away.

Weight mirroring (``--pepita-wm on``, Srinivasan et al.): ``F = B_1 B_2 ... B_{L+1}`` with ``B_l``
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

from spikeprop import SpikepropError
from spikeprop.eligibility import CurrentTraces
from spikeprop.network import simulate
from spikeprop.rules.base import AbstractRule, Option, register
from spikeprop.rules.local import apply_signals, output_error, threshold_activation, threshold_slope
from spikeprop.validate import NON_NEGATIVE, POSITIVE, Range

REPS = ("threshold", "linear", "rate", "current")


@register("pepita")
class PEPITA(AbstractRule):
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
        self.F_std = self.options["F_scale"] * math.sqrt(2.0 / n_in)
        if self.options["wm"] == "on":
            if net.convolutional:
                raise SpikepropError("--pepita-wm on mirrors every layer's weights into a dense B_l; a convolutional "
                                     "layer has no dense matrix to mirror (use --pepita-wm off, the default)")
            dims = list(net.sizes)
            self.B = [torch.randn(a, b, generator=self.generator).to(like) for a, b in zip(dims[:-1], dims[1:])]
            self._renormalise()
        else:
            bound = self.options["F_scale"] * math.sqrt(6.0 / n_in)
            self.B = [((torch.rand(n_in, n_classes, generator=self.generator) * 2 - 1) * bound).to(like)]
        self.steps = 0
        if self.options["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD([*net.weights, *net.recurrent.values()], lr=self.lr, momentum=self.options["momentum"],
                                             weight_decay=self.options["wd"])
        else:
            self.optimizer = torch.optim.Adam([*net.weights, *net.recurrent.values()], lr=self.lr, weight_decay=self.options["wd"])
        self.readout_optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.options["readout_lr"])

    def optimizers(self):
        return [self.optimizer, self.readout_optimizer]

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
            x = torch.randn(self.batch_size, w.shape[1], generator=self.generator).to(w) * sigma
            x = x - x.mean(0, keepdim=True)
            y = x @ w.t()
            self.B[layer] = self.B[layer] + eta * (x.t() @ y / x.shape[0] - wd * self.B[layer])
        self._renormalise()

    def modulated_input(self, x: torch.Tensor, Fe: torch.Tensor, xin: torch.Tensor,
                        encoder_state: torch.Tensor | None) -> torch.Tensor:
        """Pass 2's input for ``x - F e``: the unclipped current under direct encoding and for a temporal
        dataset (at every step), else the encoder's spikes of ``x - F e`` drawn with the same random
        numbers as pass 1 (the generator rewound)."""
        if self.encoder.temporal:  # x [B, T, *frame]: F e is one frame, subtracted at every step
            return (x - Fe.view(x.shape[0], 1, *x.shape[2:])).transpose(0, 1)
        Fe = Fe.view(x.shape)  # F maps to the flattened input: an image gets its own shape back
        if not self.encoder.binary:
            return (x - Fe).unsqueeze(0).expand(xin.shape[0], *x.shape)
        if encoder_state is not None:
            self.encoder.generator.set_state(encoder_state)
        return self.encoder(x - Fe)

    @torch.no_grad()
    def gradients(self, x: torch.Tensor, y: torch.Tensor, index=None) -> dict[str, float]:
        """Set ``.grad`` of every trained tensor for one batch (module docstring); return the metrics."""
        net, enc = self.net, self.encoder
        state = enc.generator.get_state() if enc.generator is not None else None
        xin = enc(x)
        T, B = xin.shape[0], xin.shape[1]
        tr1, tr2 = CurrentTraces(net), CurrentTraces(net)
        res1 = simulate(net, xin, reset_grad="constant", observer=tr1)
        e = output_error(res1.logits, y)
        res2 = simulate(net, self.modulated_input(x, e @ self.F.t(), xin, state), reset_grad="constant", observer=tr2)
        signals, delta = [], []
        rep = self.options["rep"]
        for layer in range(net.n_layers):
            z1, z2, vth = tr1.mean_v(layer), tr2.mean_v(layer), net.params[layer].vth
            if rep == "threshold":
                dz = (threshold_activation(z1, vth) - threshold_activation(z2, vth)) * threshold_slope(z2, vth) / B
            elif rep == "rate":
                dz = (res1.counts[layer] - res2.counts[layer]) / (T * B)
            elif rep == "current":
                dz = (tr1.mean_u(layer) - tr2.mean_u(layer)) * threshold_slope(z1, vth) / B
            else:
                dz = (z1 - z2) / B
            signals.append(dz)
            delta.append(float(dz.abs().flatten(1).sum(1).mean()) * B)
        apply_signals(net, tr2 if self.options["pre"] == "err" else tr1, signals, bias=False)
        output = self.options["output"]
        r = (res1 if output == "ce" else res2).counts[-1].flatten(1) / T
        e_out = output_error(res2.logits, y) if output == "second" else e
        net.readout.weight.grad = e_out.t() @ r / B
        net.readout.bias.grad = e_out.mean(0)
        loss = F.cross_entropy(res1.logits, y)
        metrics = {"loss": float(loss), "train_accuracy": float((res1.logits.argmax(1) == y).float().mean())}
        for i, d in enumerate(delta):
            metrics[f"layer{i + 1}_dz"] = d  # mean L1 distance of z between the passes: is there a signal?
        return metrics

    def train_step(self, x, y, index=None):
        self.steps += 1
        if self.options["wm"] == "on":
            self.mirror()
            if self.steps <= self.options["wm_pre_steps"]:
                return {}  # pre-mirroring: no update yet
        return super().train_step(x, y, index)

    def extra_state(self):
        return {"B": [b.clone() for b in self.B], "steps": self.steps}

    def load_extra_state(self, state):
        self.B = [b.to(self.net.readout.weight) for b in state["B"]]
        self.steps = state["steps"]
