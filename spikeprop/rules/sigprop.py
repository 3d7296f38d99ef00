"""Signal Propagation (Kohan et al., TNNLS 2023) on the membrane potential only.

Two streams run through the same LIF layers: the data ``x`` (through ``W_1``) and the target,
a one-hot label ``c`` projected by a learned ``S_1`` (constant current ``S_1 c`` at every step)
into layer 1, then through ``W_2 ... W_L`` like the data. Each layer has its own loss on its own
membrane voltages and nothing else:

    z_h = mean_t v_h[t],  z_t = mean_t v_t[t]                 (pre-reset voltages, [B, n])
    r   = f(z),  f(z) = atan(pi (z - vth)) / pi + 1/2          (bounded, centred on the threshold)
    Z_ij = cos(r_h_i, r_t_j) / tau                             (batch-contrastive logits)
    M_ij = [y_i = y_j] / #{k : y_k = y_i}                      (positives from the labels)
    L    = mean_i ( - sum_j M_ij log softmax_j Z_ij )

No gradient crosses a layer boundary (layers read detached spikes) and none goes through the
spike non-linearity. In the ``voltage`` variant the exact gradient is computed forward in time
with eligibility traces (``spikeprop.eligibility``), so memory does not grow with T. The
representation is centred on the threshold so that a layer's code lives in voltages that make
it fire: with ``tanh(z / vth)`` the loss is as happy with strongly inhibited neurons, deeper
layers stop receiving spikes and a two-layer net on digits falls to 24 % (measured; one layer
is unaffected). The ``surrogate`` variant (sigprop's "SP Surrogate") puts the loss on
``r = mean_t f(v[t])`` and uses autograd inside each layer (memory grows with T for it). A plain
L2 loss between the streams is not offered: it collapses (both streams map to one point). The
read-out is a linear layer on the detached mean spike count of the last layer, trained with
cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from spikeprop.eligibility import MembraneTraces
from spikeprop.layers import Dense
from spikeprop.network import simulate
from spikeprop.rules.base import AbstractRule, Option, register
from spikeprop.rules.local import REPRESENTATIONS, apply_signals, represent, threshold_activation
from spikeprop.validate import POSITIVE


def sigprop_loss(r_h: torch.Tensor, r_t: torch.Tensor, y: torch.Tensor, tau: float,
                 y_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-contrastive local loss (module docstring) and the layer's match accuracy.

    r_h, r_t: [B, *shape] representations of the data and the target streams (a feature map is
    compared as one vector); y: labels [B]. The accuracy counts samples whose most similar target
    has the same label. ``y_t``: the labels of the targets ``r_t`` when they are another set than
    the rows (data-parallel training: a rank's rows against the whole batch's targets); default ``y``.
    """
    y_t = y if y_t is None else y_t
    r_h, r_t = r_h.flatten(1), r_t.flatten(1)
    logits = F.normalize(r_h, dim=1) @ F.normalize(r_t, dim=1).t() / tau
    same = (y[:, None] == y_t[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    match = (y_t[logits.argmax(1)] == y).to(logits.dtype).mean()
    return loss, match


@register("sigprop")
class SigProp(AbstractRule):
    summary = "Signal Propagation with a local loss on each layer's membrane voltage"
    OPTIONS = {
        "variant": Option(str, "voltage", "loss on the voltage v (exact eligibility traces, memory flat in T) "
                          "or on a surrogate f(v) (autograd inside each layer)", ("voltage", "surrogate")),
        "tau": Option(float, 0.1, "temperature of the cosine-similarity logits", allowed=POSITIVE),
        "rep": Option(str, "threshold", "voltage variant's representation r(z) of z = mean_t v: threshold: "
                      "f(z) (f as in the surrogate variant), tanh: tanh(z / vth), linear: z", REPRESENTATIONS),
        "readout_lr": Option(float, 1e-3, "learning rate of the linear read-out (Adam)", allowed=POSITIVE),
    }

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        n_classes = net.sizes[-1]
        bound = 1.0 / math.sqrt(n_classes)
        # S_1: the label projection into layer 1 (a Dense from the C classes to the layer's shape:
        # a feature map for a convolutional layer), learned by the layer's loss.
        self.S1_synapse = Dense((n_classes,), net.sizes[1], shape=net.synapses[0].out_shape)
        s1 = (torch.rand(net.sizes[1], n_classes, generator=self.generator) * 2 - 1) * bound
        self.S1 = torch.nn.Parameter(s1.to(net.weights[0].device))
        self.optimizer = torch.optim.Adam([*net.hidden_parameters(), self.S1], lr=self.lr)
        self.readout_optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.options["readout_lr"])

    def optimizers(self):
        return [self.optimizer, self.readout_optimizer]

    def _class_targets(self, T: int, like: torch.Tensor) -> torch.Tensor:
        """The target stream's input for every class once: one-hot rows [T, C, C], constant in time.

        The target stream is a deterministic function of the label (no encoder noise reaches it),
        so it runs on the C classes and each sample reads its class's row: the same values and
        gradients as a per-sample stream at a fraction of the cost.
        """
        C = self.net.sizes[-1]
        c = torch.eye(C, dtype=like.dtype, device=like.device)
        return c.unsqueeze(0).expand(T, C, C)

    def gradients(self, x, y, index=None):
        xin = self.encoder(x)
        if self.options["variant"] == "voltage":
            losses, matches, counts = self._voltage_grads(xin, y)
        else:
            losses, matches, counts = self._surrogate_grads(xin, y)
        with torch.enable_grad():
            logits = self.net.readout(counts[-1].detach().flatten(1) / xin.shape[0])
            readout_loss = F.cross_entropy(logits, y)
            readout_loss.backward()
        metrics = {"loss": float(sum(losses)), "readout_loss": readout_loss.item(),
                   "train_accuracy": float((logits.argmax(1) == y).float().mean())}
        for i, (loss, match) in enumerate(zip(losses, matches)):
            metrics[f"layer{i + 1}_loss"] = float(loss)
            metrics[f"layer{i + 1}_match"] = float(match)
        return metrics

    def _layer_loss(self, layer, z_h, z_t, y, y_t=None):
        vth, rep = self.net.params[layer].vth, self.options["rep"]
        return sigprop_loss(represent(z_h, vth, rep), represent(z_t, vth, rep), y, self.options["tau"], y_t)

    def _voltage_grads(self, xin, y):
        net = self.net
        cin = self._class_targets(xin.shape[0], xin)
        with torch.no_grad():
            # Direct encoding and the label stream are constant in time: layer 1's trace is a scalar.
            tr_h = MembraneTraces(net, constant_input=xin.stride(0) == 0)
            tr_t = MembraneTraces(net, constant_input=True, first_synapse=self.S1_synapse)
            res = simulate(net, xin, reset_grad="constant", observer=tr_h)
            simulate(net, cin, reset_grad="constant", observer=tr_t, first_layer=(self.S1_synapse, self.S1))
        losses, matches, dz_h, dz_t = [], [], [], []
        # The targets are those of the whole batch (data-parallel: every rank's labels; one process: y).
        y_t = self.batch_labels(y)
        with torch.enable_grad():
            for layer in range(net.n_layers):
                z_h = tr_h.mean_v(layer).requires_grad_(True)
                z_t = tr_t.mean_v(layer).requires_grad_(True)  # [C, n]: one row per class
                loss, match = self._layer_loss(layer, z_h, z_t[y_t], y, None if self.dist is None else y_t)
                gh, gt = torch.autograd.grad(loss, (z_h, z_t))
                dz_h.append(gh)
                dz_t.append(gt)
                losses.append(loss.detach())
                matches.append(match)
        # The per-layer learning signals of the two streams; the label stream enters layer 1 through S_1.
        apply_signals(net, tr_h, dz_h)
        apply_signals(net, tr_t, dz_t, first_weight=self.S1, add=True)
        return losses, matches, res.counts

    def _surrogate_grads(self, xin, y):
        net = self.net
        T = xin.shape[0]
        cin = self._class_targets(T, xin)
        sums = {}

        def collect(stream):
            def observer(layer, t, s_in, step):
                f = threshold_activation(step.v_pre, net.params[layer].vth)
                sums[stream, layer] = f if t == 0 else sums[stream, layer] + f
            return observer

        y_t = self.batch_labels(y)
        with torch.enable_grad():
            res = simulate(net, xin, reset_grad="constant", observer=collect("h"))
            simulate(net, cin, reset_grad="constant", observer=collect("t"), first_layer=(self.S1_synapse, self.S1))
            losses, matches, total = [], [], 0.0
            for layer in range(net.n_layers):
                loss, match = sigprop_loss(sums["h", layer] / T, sums["t", layer][y_t] / T, y, self.options["tau"],
                                           None if self.dist is None else y_t)
                total = total + loss
                losses.append(loss.detach())
                matches.append(match)
            # Layers read detached (hard-threshold) spikes, so each loss reaches only its own layer.
            total.backward()
        return losses, matches, res.counts

    def extra_state(self):
        return {"S1": self.S1.detach().clone()}

    def load_extra_state(self, state):
        with torch.no_grad():
            self.S1.copy_(state["S1"])
