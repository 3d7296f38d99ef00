"""The shallow baseline: random fixed LIF layers, only the linear read-out is trained.

The hidden weights keep their seeded random initial values; the read-out (linear on the last
layer's mean spike count) is trained with the cross-entropy gradient (Adam, ``--lr``). A
forward-only rule that does not beat this row is not learning in its hidden layers (on
Fashion-MNIST a fixed random 1000-unit layer already reaches about 84 %).
"""

from __future__ import annotations

import torch

from spikeprop.network import simulate
from spikeprop.rules.base import AbstractRule, register
from spikeprop.rules.local import readout_gradients


@register("shallow")
class Shallow(AbstractRule):
    summary = "baseline: random fixed hidden layers, only the read-out trained"

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        self.optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.lr)

    def optimizers(self):
        return [self.optimizer]

    def gradients(self, x, y, index=None):
        with torch.no_grad():
            xin = self.encoder(x)
            res = simulate(self.net, xin)
        loss, logits = readout_gradients(self.net, res.counts[-1].flatten(1) / xin.shape[0], y)
        return {"loss": float(loss), "train_accuracy": float((logits.argmax(1) == y).float().mean())}
