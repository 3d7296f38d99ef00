"""Signal Propagation (Kohan et al., TNNLS 2023) on the membrane potential only.

Two streams run through the same LIF layers: the data ``x`` (through ``W_1``) and the target,
a one-hot label ``c`` projected by a learned ``S_1`` (constant current ``S_1 c`` at every step)
into layer 1, then through ``W_2 ... W_L`` like the data. Each layer has its own loss on its own
membrane voltages and nothing else (research/rules.md §1.2, §2.3):

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
``r = mean_t f(v[t])`` and uses autograd inside each layer (memory grows with T for it). A plain L2 loss is not offered: it collapses
(rules.md §2.6). The read-out is a linear layer on the detached mean spike count of the last
layer, trained with cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from spikeprop.eligibility import MembraneTraces
from spikeprop.network import simulate
from spikeprop.rules import Option, Rule, register
from spikeprop.validate import POSITIVE

REPRESENTATIONS = ("threshold", "tanh", "linear")


def represent(z: torch.Tensor, vth: float, rep: str) -> torch.Tensor:
    """The bounded per-layer representation a local loss compares (module docstring)."""
    if rep == "threshold":
        return surrogate_activation(z, vth)
    if rep == "tanh":
        return torch.tanh(z / vth)
    if rep == "linear":
        return z
    raise ValueError(f"rep must be one of {REPRESENTATIONS}, not '{rep}'")


def sigprop_loss(r_h: torch.Tensor, r_t: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-contrastive local loss (module docstring) and the layer's match accuracy.

    r_h, r_t: [B, n] representations of the data and the target streams; y: labels [B].
    The accuracy counts samples whose most similar target has the same label.
    """
    logits = F.normalize(r_h, dim=1) @ F.normalize(r_t, dim=1).t() / tau
    same = (y[:, None] == y[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    match = (y[logits.argmax(1)] == y).to(logits.dtype).mean()
    return loss, match


def surrogate_activation(v: torch.Tensor, vth: float) -> torch.Tensor:
    """``f(v) = atan(pi (v - vth)) / pi + 1/2``: a smooth stand-in for the spike, used only in the loss."""
    return torch.atan(math.pi * (v - vth)) / math.pi + 0.5


@register("sigprop")
class SigProp(Rule):
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
        g = torch.Generator().manual_seed(config.seed + 1)
        bound = 1.0 / math.sqrt(n_classes)
        # S_1: the label projection into layer 1 (rules.md §2.2: learned by the layer's loss).
        s1 = (torch.rand(net.sizes[1], n_classes, generator=g) * 2 - 1) * bound
        self.S1 = torch.nn.Parameter(s1.to(net.weights[0].device))
        self.hidden_params = [*net.weights, *net.biases, self.S1]
        self.optimizer = torch.optim.Adam(self.hidden_params, lr=config.lr)
        self.readout_optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.options["readout_lr"])

    def _class_targets(self, T: int, like: torch.Tensor) -> torch.Tensor:
        """The target stream's input for every class once: one-hot rows [T, C, C], constant in time.

        The target stream is a deterministic function of the label (no encoder noise reaches it),
        so it runs on the C classes and each sample reads its class's row: the same values and
        gradients as a per-sample stream at a fraction of the cost.
        """
        C = self.net.sizes[-1]
        c = torch.eye(C, dtype=like.dtype, device=like.device)
        return c.unsqueeze(0).expand(T, C, C)

    def train_step(self, x, y):
        xin = self.encoder(x)
        self.optimizer.zero_grad(set_to_none=True)
        if self.options["variant"] == "voltage":
            losses, matches, counts = self._voltage_grads(xin, y)
        else:
            losses, matches, counts = self._surrogate_grads(xin, y)
        self.optimizer.step()
        logits = self.net.readout(counts[-1].detach() / xin.shape[0])
        readout_loss = F.cross_entropy(logits, y)
        self.readout_optimizer.zero_grad(set_to_none=True)
        readout_loss.backward()
        self.readout_optimizer.step()
        metrics = {"loss": float(sum(losses)), "readout_loss": readout_loss.item(),
                   "train_accuracy": float((logits.argmax(1) == y).float().mean())}
        for i, (loss, match) in enumerate(zip(losses, matches)):
            metrics[f"layer{i + 1}_loss"] = float(loss)
            metrics[f"layer{i + 1}_match"] = float(match)
        return metrics

    def _layer_loss(self, layer, z_h, z_t, y):
        vth, rep = self.net.params[layer].vth, self.options["rep"]
        return sigprop_loss(represent(z_h, vth, rep), represent(z_t, vth, rep), y, self.options["tau"])

    def _voltage_grads(self, xin, y):
        net = self.net
        cin = self._class_targets(xin.shape[0], xin)
        with torch.no_grad():
            # Direct encoding and the label stream are constant in time: layer 1's trace is a scalar.
            tr_h = MembraneTraces(net.params, constant_input=xin.stride(0) == 0)
            tr_t = MembraneTraces(net.params, constant_input=True)
            res = simulate(net, xin, reset_grad="constant", observer=tr_h)
            simulate(net, cin, reset_grad="constant", observer=tr_t, first_weight=self.S1)
        losses, matches = [], []
        for layer in range(net.n_layers):
            z_h = tr_h.mean_v(layer).requires_grad_(True)
            z_t = tr_t.mean_v(layer).requires_grad_(True)  # [C, n]: one row per class
            loss, match = self._layer_loss(layer, z_h, z_t[y], y)
            dz_h, dz_t = torch.autograd.grad(loss, (z_h, z_t))
            with torch.no_grad():
                gw_h = tr_h.weight_grad(layer, dz_h)
                gw_t = tr_t.weight_grad(layer, dz_t)
                if layer == 0:
                    net.weights[0].grad = gw_h
                    self.S1.grad = gw_t
                else:
                    net.weights[layer].grad = gw_h + gw_t
                net.biases[layer].grad = tr_h.bias_grad(layer, dz_h) + tr_t.bias_grad(layer, dz_t)
            losses.append(loss.detach())
            matches.append(match)
        return losses, matches, res.counts

    def _surrogate_grads(self, xin, y):
        net = self.net
        T = xin.shape[0]
        cin = self._class_targets(T, xin)
        sums = {}

        def collect(stream):
            def observer(layer, t, s_in, step):
                f = surrogate_activation(step.v_pre, net.params[layer].vth)
                sums[stream, layer] = f if t == 0 else sums[stream, layer] + f
            return observer

        res = simulate(net, xin, reset_grad="constant", observer=collect("h"))
        simulate(net, cin, reset_grad="constant", observer=collect("t"), first_weight=self.S1)
        losses, matches, total = [], [], 0.0
        for layer in range(net.n_layers):
            loss, match = sigprop_loss(sums["h", layer] / T, sums["t", layer][y] / T, y, self.options["tau"])
            total = total + loss
            losses.append(loss.detach())
            matches.append(match)
        # Layers read detached (hard-threshold) spikes, so each loss reaches only its own layer.
        total.backward()
        return losses, matches, res.counts

    def state_dict(self):
        return {"S1": self.S1.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "readout_optimizer": self.readout_optimizer.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.S1.copy_(state["S1"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.readout_optimizer.load_state_dict(state["readout_optimizer"])
