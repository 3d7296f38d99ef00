"""Surrogate-gradient BPTT: the baseline every forward-only rule is compared with.

The same network, data and read-out as the other rules; the loss is the cross-entropy of the
read-out scores (mean spike count of the last layer through the linear read-out), and the
gradient flows back through time and through the spikes with snnTorch's ArcTan surrogate
(``snntorch.surrogate.atan``, alpha 2 by default). The reset is detached, as in snnTorch.
Memory grows with T: every step of every layer is kept for the backward pass.
"""

from __future__ import annotations

import torch
from snntorch import surrogate
from torch.nn import functional as F

from spikeprop.network import simulate
from spikeprop.rules.base import AbstractRule, Option, register
from spikeprop.validate import POSITIVE

SURROGATES = {"atan": surrogate.atan, "fast_sigmoid": surrogate.fast_sigmoid}


@register("bptt")
class BPTT(AbstractRule):
    summary = "surrogate-gradient backpropagation through time (baseline)"
    OPTIONS = {
        "surrogate": Option(str, "atan", "surrogate derivative of the spike (snntorch.surrogate)", ("atan", "fast_sigmoid")),
        "alpha": Option(float, 2.0, "surrogate slope: alpha of atan, slope of fast_sigmoid", allowed=POSITIVE),
    }

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        make = SURROGATES[self.options["surrogate"]]
        self.spike_fn = make(alpha=self.options["alpha"]) if self.options["surrogate"] == "atan" \
            else make(slope=self.options["alpha"])
        self.optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)

    def optimizers(self):
        return [self.optimizer]

    def gradients(self, x, y, index=None):
        with torch.enable_grad():
            res = simulate(self.net, self.encoder(x), spike_fn=self.spike_fn, reset_grad="stop")
            loss = F.cross_entropy(res.logits, y)
            loss.backward()
        acc = (res.logits.argmax(1) == y).float().mean()
        return {"loss": loss.item(), "train_accuracy": float(acc)}
