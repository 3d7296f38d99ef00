"""Direct Feedback Alignment (Nøkland, NeurIPS 2016) on the membrane potential only.

One forward pass. The read-out's output error ``e = softmax(logits) - onehot(y)`` [B, C] is sent
to every hidden layer through a fixed random matrix ``B_l`` [C, n_l] and taken as the gradient of
the layer's representation of its time-mean membrane voltage::

    z_l = mean_t v_l[t]                                    (pre-reset voltage, [B, n_l])
    dL/dz_l := (e B_l) * f'(z_l) / B                       (f as below; f' = 1 for rep 'linear')
    dL/dW_l = (dL/dz_l)^T mean_t eps_l[t]                  (eligibility traces, spikeprop.eligibility)

``f(z) = atan(pi (z - vth)) / pi + 1/2`` ('threshold', the default) plays the part of the
non-linearity's derivative ``f'(a_l)`` in DFA's ``delta a_l = (B_l e) * f'(a_l)``: it is a function
of the membrane, never of the spike, and concentrates learning on neurons near the threshold
(without it the voltages of deeper layers drift negative and they fall silent). No gradient
crosses a layer boundary and none goes through the spike; memory is flat in T. The read-out
(linear on the last layer's mean spike count) gets the true cross-entropy gradient.

``FeedbackRule`` is the shared machinery of DFA and F³ (``spikeprop.rules.f3``): they differ
only in the error vector they broadcast (``hidden_error``).
"""

from __future__ import annotations

import math

import torch

from spikeprop.eligibility import MembraneTraces
from spikeprop.network import simulate
from spikeprop.rules.base import AbstractRule, Option, register
from spikeprop.rules.local import apply_signals, output_error, readout_gradients, threshold_slope
from spikeprop.validate import POSITIVE

FEEDBACK_INITS = ("uniform", "trinomial")


def feedback_matrix(n_classes: int, n: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """A fixed random feedback matrix [n_classes, n]: Kaiming-uniform (``uniform``) or {-1, 0, 1}."""
    if init == "uniform":
        bound = math.sqrt(6.0 / n_classes)
        return (torch.rand(n_classes, n, generator=generator) * 2.0 - 1.0) * bound
    if init == "trinomial":
        return torch.randint(-1, 2, (n_classes, n), generator=generator).to(torch.float32)
    raise ValueError(f"init must be one of {FEEDBACK_INITS}, not '{init}'")


class FeedbackRule(AbstractRule):
    """One forward pass, an error broadcast to each layer's mean voltage, Adam on every layer."""

    OPTIONS = {
        "rep": Option(str, "threshold", "f(z) whose slope scales the feedback at z = mean_t v: threshold: "
                      "atan(pi (z - vth)) / pi + 1/2, linear: z (slope 1)", ("threshold", "linear")),
        "init": Option(str, "uniform", "fixed random feedback matrices B_l: Kaiming-uniform or trinomial {-1, 0, 1}",
                       FEEDBACK_INITS),
        "readout_lr": Option(float, 1e-3, "learning rate of the linear read-out (Adam)", allowed=POSITIVE),
    }

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        n_classes = net.sizes[-1]
        like = net.readout.weight  # fixed matrices share the network's device and dtype
        self.B = [feedback_matrix(n_classes, n, self.options["init"], self.generator).to(like) for n in net.sizes[1:-1]]
        self.optimizer = torch.optim.Adam(net.hidden_parameters(), lr=self.lr)
        self.readout_optimizer = torch.optim.Adam(net.readout.parameters(), lr=self.options["readout_lr"])

    def optimizers(self):
        return [self.optimizer, self.readout_optimizer]

    def hidden_error(self, e: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The error vector [B, C] broadcast to the hidden layers (DFA: the current error ``e``)."""
        return e

    def layer_signals(self, error: torch.Tensor, traces: MembraneTraces) -> list[torch.Tensor]:
        """``dL/dz_l = (error B_l) * f'(z_l) / B`` per hidden layer (module docstring)."""
        B = error.shape[0]
        signals = []
        for layer, syn in enumerate(self.net.synapses):
            dz = (error @ self.B[layer] / B).view(B, *syn.out_shape)  # B_l maps to the flattened layer
            if self.options["rep"] == "threshold":
                dz = dz * threshold_slope(traces.mean_v(layer), self.net.params[layer].vth)
            signals.append(dz)
        return signals

    @torch.no_grad()
    def gradients(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, float]:
        """Set ``.grad`` of every trained tensor for one batch; return the metrics."""
        net = self.net
        xin = self.encoder(x)
        traces = MembraneTraces(net)
        res = simulate(net, xin, reset_grad="constant", observer=traces)
        loss, logits = readout_gradients(net, res.counts[-1].flatten(1) / xin.shape[0], y)
        apply_signals(net, traces, self.layer_signals(self.hidden_error(output_error(logits, y), y, index), traces))
        return {"loss": float(loss), "train_accuracy": float((logits.argmax(1) == y).float().mean())}

    def extra_state(self):
        return {"B": [b.clone() for b in self.B]}

    def load_extra_state(self, state):
        self.B = [b.to(self.net.readout.weight) for b in state["B"]]


@register("dfa")
class DFA(FeedbackRule):
    summary = "Direct Feedback Alignment: output error to each layer's mean voltage through fixed random B_l"
