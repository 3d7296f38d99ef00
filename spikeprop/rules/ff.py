"""Forward-Forward (Hinton 2022) with goodness on the membrane potential of each LIF layer.

The label is written into the first C input features (one-hot at ``label_scale``); for an event
dataset, into the first C inputs of every step's frame (a corner of the sensor; SHD: the first C
channels), as spikes at every step. Sequential Fashion-MNIST is refused: its step is one image row.
Positive data carries the true label, negative data the same image with a wrong label (never the
true one): ``--ff-negatives uniform`` draws it uniformly from the C - 1 others (loeweX), ``hard`` in proportion
to the read-out's softmax over the wrong labels on this batch's neutral-label pass (Hinton's hard
negatives; he used the network's predicted probabilities; the read-out is the one-pass predictor
that is already computed on every batch, so hard negatives cost nothing). Each layer's goodness is
read from its membrane (``v`` in units of ``vth``, mean over the layer's n neurons)::

    m2    G = mean_t mean_j relu(v_pre_j[t] / vth)^2    (pre-reset voltage; the default)
    m1    G = mean_t mean_j relu(v_j[t] / vth)^2        (post-reset voltage; with Lava's
                                                          reset to zero a spike empties it)
    mean  G = mean_j relu(z_j / vth)^2,  z = mean_t v_pre[t]   (exact traces, memory flat in T)

    L_l = mean_b [ softplus(alpha (theta - G_pos)) + softplus(alpha (G_neg - theta)) ]
    (--ff-loss symba: L_l = mean_b softplus(alpha (G_neg - G_pos)), no threshold)

All layers update on every batch from the sum of their losses. Layers read detached spikes and
the spikes and reset amounts are constants (``reset_grad='constant'``), so each loss reaches only
its own layer's ``W_l`` and bias, through the membrane (``m1``/``m2`` use autograd over the
layer's T steps, ``mean`` the eligibility traces). Between layers only spikes pass.

Prediction (``--ff-predict``): ``goodness`` runs the net once per label and takes the argmax of
the goodness accumulated over the layers (all but the first when there are two or more):
C passes. ``readout`` is the one-pass alternative: the input carries the neutral label
(``label_scale / C`` in every label feature) and the network's linear read-out on the last
layer's mean spike count gives the scores. The read-out is trained on every batch (cross-entropy
on the detached neutral-label rates, Adam ``readout_lr``) whatever ``predict`` is, so every FF
network deploys to Lava like the others (Dense -> LIF layers and a linear read-out, the neutral
label a constant input).

Deviations from Hinton's paper (measured on Fashion-MNIST; the figures are in docs/rules.md):
``label_scale`` > 1 with direct encoding (the label enters as a current of that size; only 10 of 784
inputs carry it), and hard negatives from the read-out; the Fashion-MNIST recipe uses both with lr
1e-3. The one-pass read-out on the neutral label is weaker than goodness prediction with that
recipe (75.8 % against 87.95 % after 20 epochs): the neutral label (0.4 in every label input) is
far from anything W_1 is trained on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from spikeprop import SpikepropError
from spikeprop.eligibility import MembraneTraces
from spikeprop.network import simulate
from spikeprop.rules.base import AbstractRule, Option, register
from spikeprop.rules.local import apply_signals, readout_gradients
from spikeprop.validate import NON_NEGATIVE, POSITIVE

GOODNESS = ("m2", "m1", "mean")


def label_currents(labels: torch.Tensor | None, n_classes: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """The values [B, C] written into the first C input features: the one-hot label times ``scale``,
    or the neutral label ``scale / C`` everywhere (``labels`` None); ``like`` [B, n_in] gives B, dtype, device."""
    if labels is None:
        return torch.full((like.shape[0], n_classes), scale / n_classes, dtype=like.dtype, device=like.device)
    return F.one_hot(labels, n_classes).to(like.dtype) * scale


def _labelled(options: dict, x: torch.Tensor, labels: torch.Tensor | None, encoder, n_classes: int) -> torch.Tensor:
    """``encoder(x)`` with the label written in: over the first C features, or as C one-hot planes
    put before the image's channels (the encoder's overlay: a direct current may exceed 1)."""
    currents = label_currents(labels, n_classes, options["label_scale"], x)  # [B, C]
    if options["label"] == "features":
        return encoder(x, overlay=currents)
    planes = currents[:, :, None, None].expand(x.shape[0], n_classes, *x.shape[2:])
    return encoder(torch.cat([torch.zeros_like(planes), x], dim=1), overlay=planes.reshape(x.shape[0], -1))


class Goodness(NamedTuple):
    """Per layer: the goodness G [B] (differentiable in W_l) and the spike counts [B, n]; for
    ``--ff-goodness mean`` also the traces and the mean voltages z it was computed from."""

    G: list[torch.Tensor]
    counts: list[torch.Tensor]
    traces: MembraneTraces | None = None
    z: list[torch.Tensor] | None = None


def wrong_labels(y: torch.Tensor, n_classes: int, generator: torch.Generator, dist=None) -> torch.Tensor:
    """A label != y for every sample, uniform over the C - 1 wrong ones. ``dist``: data-parallel, ``y``
    is this rank's rows; the shifts of the whole batch are drawn and the rank's rows kept."""
    shape = y.shape if dist is None else (dist.total, *y.shape[1:])
    shift = torch.randint(1, n_classes, shape, generator=generator)
    if dist is not None:
        shift = shift[dist.rows]
    return (y + shift.to(y.device)) % n_classes


def hard_wrong_labels(y: torch.Tensor, scores: torch.Tensor, generator: torch.Generator, dist=None) -> torch.Tensor:
    """A label != y for every sample, drawn with probability softmax(scores) over the C - 1 wrong ones.
    ``dist``: data-parallel; the whole batch's scores and labels are all-gathered, its labels drawn
    and this rank's rows kept."""
    if dist is not None:
        return hard_wrong_labels(dist.gather(y), dist.gather(scores.detach()), generator)[dist.rows]
    masked = scores.detach().double().cpu().masked_fill(F.one_hot(y.cpu(), scores.shape[1]).bool(), float("-inf"))
    return torch.multinomial(torch.softmax(masked, 1), 1, generator=generator).squeeze(1).to(y.device)


@register("ff")
class ForwardForward(AbstractRule):
    summary = "Forward-Forward: per-layer goodness of the membrane, label in the input, wrong-label negatives"
    OPTIONS = {
        "theta": Option(float, 0.2, "goodness threshold theta (G is a mean over neurons, in units of vth^2)", allowed=NON_NEGATIVE),
        "alpha": Option(float, 30.0, "sharpness alpha of p(positive) = sigmoid(alpha (G - theta))", allowed=POSITIVE),
        "loss": Option(str, "threshold", "threshold: softplus(alpha (theta - G_pos)) + softplus(alpha (G_neg - theta)); "
                       "symba: softplus(alpha (G_neg - G_pos)), the margin of the same image under its two labels",
                       ("threshold", "symba")),
        "goodness": Option(str, "m2", "goodness of the membrane: m2 pre-reset v, m1 post-reset v, "
                           "mean relu(mean_t v)^2 (traces, memory flat in T)", GOODNESS),
        "predict": Option(str, "goodness", "goodness: argmax over the C labels of the accumulated goodness "
                          "(C passes); readout: one pass with a neutral label through the linear read-out",
                          ("goodness", "readout")),
        "label_scale": Option(float, 1.0, "input value of the label features (rate/latency encoders clip to [0, 1]; "
                              "direct encoding passes larger values as a stronger current)", allowed=POSITIVE),
        "negatives": Option(str, "uniform", "wrong label of the negative: uniform over the C - 1 wrong ones, or hard: "
                            "drawn in proportion to the read-out's softmax on the neutral-label pass (Hinton's hard negatives)",
                            ("uniform", "hard")),
        "readout_lr": Option(float, 1e-3, "learning rate of the linear read-out (Adam)", allowed=POSITIVE),
        "label": Option(str, "features", "where the label goes: features: the first C input features (Hinton's "
                        "overlay); planes: C extra input channels, one-hot at label_scale over the whole image, "
                        "so that every convolution window sees it (the conv recipe's)", ("features", "planes")),
    }

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        self.n_classes = net.sizes[-1]
        if net.sizes[0] <= self.n_classes:
            raise SpikepropError(f"--rule ff writes the label into the first {self.n_classes} inputs; "
                                 f"the data has only {net.sizes[0]}")
        if encoder.kind == "sequence":
            raise SpikepropError(f"--rule ff writes the label into the first {self.n_classes} inputs of every step; a step of "
                                 "sequential-fashion-mnist is one image row (or pixel), so the label would hide image "
                                 "columns 0-9 of every row. Use an event dataset (its first inputs are a sensor corner) "
                                 "or a static one")
        self.optimizer = torch.optim.Adam(net.hidden_parameters(), lr=self.lr)
        self.readout_optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.options["readout_lr"])

    def optimizers(self):
        return [self.optimizer, self.readout_optimizer]

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The input [T, B, ...] of ``x`` with ``labels`` (None: the neutral label) written in (option ``label``)."""
        return _labelled(self.options, x, labels, self.encoder, self.n_classes)

    @property
    def predicts_by_readout(self) -> bool:
        return self.options["predict"] == "readout"

    @classmethod
    def input_shape(cls, options, sample_shape, n_classes):
        """With ``--ff-label planes`` the network takes C more input channels than an image has."""
        if cls.resolve_options(options)["label"] == "features":
            return tuple(sample_shape)
        if len(sample_shape) != 3:
            raise SpikepropError(f"--ff-label planes adds label channels to an image; the samples have shape {tuple(sample_shape)}")
        return (sample_shape[0] + n_classes, *sample_shape[1:])

    @classmethod
    def deploy_input(cls, options, x, encoder, n_classes):
        """The read-out path's input: ``x`` with the neutral label (``label_scale / C``) written in."""
        return _labelled(cls.resolve_options(options), x, None, encoder, n_classes)

    def goodness(self, xin: torch.Tensor) -> Goodness:
        """Per layer, the goodness of ``xin`` [T, B, n_in] (module docstring) and the spike counts."""
        net, kind = self.net, self.options["goodness"]
        T = xin.shape[0]
        if kind == "mean":
            with torch.no_grad():
                traces = MembraneTraces(net)
                res = simulate(net, xin, reset_grad="constant", observer=traces)
            z = [traces.mean_v(layer).requires_grad_(torch.is_grad_enabled()) for layer in range(net.n_layers)]
            G = [(F.relu(zl / p.vth) ** 2).flatten(1).mean(1) for zl, p in zip(z, net.params)]
            return Goodness(G, res.counts, traces, z)
        sums: dict[int, torch.Tensor] = {}

        def observer(layer, t, s_in, step):
            v = step.v_pre if kind == "m2" else step.state.v
            g = (F.relu(v / net.params[layer].vth) ** 2).flatten(1).mean(1)
            sums[layer] = g if t == 0 else sums[layer] + g

        res = simulate(net, xin, reset_grad="constant", observer=observer)
        return Goodness([sums[layer] / T for layer in range(net.n_layers)], res.counts)

    def layer_losses(self, G_pos: list[torch.Tensor], G_neg: list[torch.Tensor]) -> list[torch.Tensor]:
        theta, alpha = self.options["theta"], self.options["alpha"]
        if self.options["loss"] == "symba":
            return [F.softplus(alpha * (gn - gp)).mean() for gp, gn in zip(G_pos, G_neg)]
        return [(F.softplus(alpha * (theta - gp)) + F.softplus(alpha * (gn - theta))).mean() for gp, gn in zip(G_pos, G_neg)]

    def gradients(self, x: torch.Tensor, y: torch.Tensor, index=None) -> dict[str, float]:
        """Set ``.grad`` of every trained tensor for one batch (module docstring); return the metrics."""
        net = self.net
        B = x.shape[0]
        with torch.no_grad():
            xin0 = self.encode(x, None)
            res0 = simulate(net, xin0)
        if self.options["negatives"] == "hard":
            y_neg = hard_wrong_labels(y, net.readout(res0.counts[-1].flatten(1) / xin0.shape[0]), self.generator,
                                      self.dist)
        else:
            y_neg = wrong_labels(y, self.n_classes, self.generator, self.dist)
        xin = torch.cat([self.encode(x, y), self.encode(x, y_neg)], dim=1)
        with torch.enable_grad():
            good = self.goodness(xin)
            G_pos, G_neg = [g[:B] for g in good.G], [g[B:] for g in good.G]
            losses = self.layer_losses(G_pos, G_neg)
            total = sum(losses)
            if good.traces is not None:
                apply_signals(net, good.traces, torch.autograd.grad(total, good.z))
            else:
                hidden = net.hidden_parameters()
                for p, g in zip(hidden, torch.autograd.grad(total, hidden)):
                    p.grad = g
        readout_loss, logits = readout_gradients(net, res0.counts[-1].flatten(1) / xin0.shape[0], y)
        metrics = {"loss": float(total.detach()), "readout_loss": float(readout_loss),
                   "train_accuracy": float((logits.argmax(1) == y).float().mean())}
        for i, (loss, gp, gn) in enumerate(zip(losses, G_pos, G_neg)):
            metrics[f"layer{i + 1}_loss"] = float(loss.detach())
            metrics[f"layer{i + 1}_G_pos"] = float(gp.detach().mean())
            metrics[f"layer{i + 1}_G_neg"] = float(gn.detach().mean())
        return metrics

    @torch.no_grad()
    def predict(self, x):
        if self.options["predict"] == "readout":
            return super().predict(x)
        layers = range(1 if self.net.n_layers > 1 else 0, self.net.n_layers)
        scores = []
        for c in range(self.n_classes):
            labels = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
            G = self.goodness(self.encode(x, labels)).G
            scores.append(sum(G[layer] for layer in layers))
        return torch.stack(scores, 1)
