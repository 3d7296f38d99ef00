"""The shallow baseline: random fixed LIF layers, only the linear read-out is trained.

The hidden weights keep their seeded random initial values; the read-out (linear on the last
layer's mean spike count) is trained with the cross-entropy gradient (Adam, ``--lr``). A
forward-only rule that does not beat this row is not learning in its hidden layers
(research/rules.md §6.1 SNN note, §9: on Fashion-MNIST a 1000-unit random layer reaches ~86 %).
"""

from __future__ import annotations

import torch

from spikeprop.network import simulate
from spikeprop.rules import Rule, register
from spikeprop.rules.dfa import readout_gradients


@register("shallow")
class Shallow(Rule):
    summary = "baseline: random fixed hidden layers, only the read-out trained"

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        self.optimizer = torch.optim.Adam(net.readout.parameters(), lr=config.lr)

    def train_step(self, x, y):
        with torch.no_grad():
            xin = self.encoder(x)
            res = simulate(self.net, xin)
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = readout_gradients(self.net, res.counts[-1] / xin.shape[0], y)
        self.optimizer.step()
        return {"loss": float(loss), "train_accuracy": float((logits.argmax(1) == y).float().mean())}

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
