"""F³, Feed-Forward with delayed Feedback (Flügel et al., ICONIP 2024), on the membrane potential.

DFA's machinery (``spikeprop.rules.dfa``: one forward pass, ``dL/dz_l := (eps B_l) * f'(z_l) / B``
on the time-mean voltage, eligibility traces, true gradient for the read-out), with the error
``eps_i`` of sample ``i`` taken from a per-sample buffer filled when ``i`` was last seen, i.e. one
epoch old. In the sign convention of ``e = softmax - onehot``:

    delayed_error           eps_i = e_i^(k-1)                   (F³-Error, the default)
    delayed_error_one_hot   eps_i = y_i * e_i^(k-1)             (one-hot target scaled by the
                                                                 delayed true-class error)
    one_hot_target          eps_i = -y_i                        (DRTP)

A sample not seen yet uses ``-y_i`` (the buffer starts at the one-hot target: epoch 1 is DRTP).
The buffer is written right after each step with the error computed in that step, before the
update. It is indexed by the dataset row (``train_step(x, y, index)``; ``needs_index``), grows
as rows are seen, and is part of the rule's state, so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from spikeprop import SpikepropError
from spikeprop.rules.base import Option, register
from spikeprop.rules.dfa import FeedbackRule

MODES = ("delayed_error", "delayed_error_one_hot", "one_hot_target")


@register("f3")
class F3(FeedbackRule):
    summary = "F3: the previous epoch's per-sample output error to each layer's mean voltage through fixed random B_l"
    OPTIONS = {
        **FeedbackRule.OPTIONS,
        "mode": Option(str, "delayed_error", "error information eps_i: last epoch's error of sample i, the one-hot "
                       "target scaled by it, or the target alone (DRTP)", MODES),
    }
    needs_index = True

    def __init__(self, net, config, encoder):
        super().__init__(net, config, encoder)
        device = net.readout.weight.device
        self.buffer = torch.zeros(0, net.sizes[-1], device=device)  # e of each row when last seen
        self.seen = torch.zeros(0, dtype=torch.bool, device=device)

    def _grow(self, n: int) -> None:
        if n > len(self.seen):
            extra = n - len(self.seen)
            self.buffer = torch.cat([self.buffer, self.buffer.new_zeros(extra, self.buffer.shape[1])])
            self.seen = torch.cat([self.seen, self.seen.new_zeros(extra)])

    def hidden_error(self, e, y, index):
        if index is None:
            raise SpikepropError("--rule f3 needs the dataset row of every sample (train_step(x, y, index))")
        index = index.to(self.seen.device)
        if self.dist is not None:  # the buffer is replicated: every rank writes the whole batch's rows
            rows, errors = self.dist.gather(index), self.dist.gather(e)
        else:
            rows, errors = index, e
        self._grow(int(rows.max()) + 1)
        target = F.one_hot(y, e.shape[1]).to(e.dtype)
        delayed = torch.where(self.seen[index, None], self.buffer[index], -target)
        mode = self.options["mode"]
        if mode == "delayed_error":
            eps = delayed
        elif mode == "delayed_error_one_hot":
            eps = torch.where(self.seen[index, None], target * delayed, -target)
        else:
            eps = -target
        self.buffer[rows] = errors
        self.seen[rows] = True
        return eps

    def extra_state(self):
        return {**super().extra_state(), "buffer": self.buffer.clone(), "seen": self.seen.clone()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        device = self.net.readout.weight.device
        self.buffer = state["buffer"].to(device)
        self.seen = state["seen"].to(device)
