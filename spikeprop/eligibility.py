"""Exact membrane-only gradients, forward in time: presynaptic eligibility traces.

With the input spikes of a layer and its own spikes and reset amounts held constant
(``reset_grad='constant'``: the reset removes a constant amount), Lava's LIF is linear in ``W`` and ``bias``::

    du[t]/dW_ji = eps_u_i[t] = (1 - du) eps_u_i[t-1] + s_in_i[t]
    dv[t]/dW_ji = eps_v_i[t] = (1 - dv) eps_v_i[t-1] + eps_u_i[t]
    dv[t]/db_j  = eps_b[t]   = (1 - dv) eps_b[t-1] + 1

so a local loss on the time-mean voltage ``z = mean_t v[t]`` (pre-reset) has the exact gradient
``dL/dW = (dL/dz)^T mean_t eps_v[t]``. ``MembraneTraces`` accumulates ``z`` and ``mean_t eps``
as an observer of ``network.simulate``: its memory is O(B * fan_in) per layer, independent of T.
A recurrent layer's ``W_rec`` gets the same recursion with the layer's own spikes of the previous
step as its input (spikes are constants: no gradient passes through them).

When the first layer's input is the same at every step (direct encoding, sigprop's target
stream), its trace is that input times a scalar that follows the same recursion with input 1,
so ``constant_input=True`` keeps only that scalar for layer 0 (no [B, n_in] work per step).
"""

from __future__ import annotations

import torch

from spikeprop.neurons import LIFStep


class MembraneTraces:
    """Observer that accumulates, per layer, ``sum_t v_pre[t]`` and the eligibility sums.

    net: the network observed (its LIF parameters and synapses: a trace has the shape of the
    layer's input, ``weight_grad`` maps it through the synapse kind's weight gradient);
    first_synapse: the synapse that fed layer 1 in this stream when it was not ``net``'s
    (sigprop's label projection).
    """

    def __init__(self, net, constant_input: bool = False, first_synapse=None):
        self.params = net.params
        self.synapses = (first_synapse or net.synapses[0], *net.synapses[1:])
        self.bias_synapses = net.synapses
        params = self.params
        self.constant_input = constant_input
        self._input0: torch.Tensor | None = None
        self._cu = self._cv = self._c_sum = 0.0
        n = len(params)
        self.steps = 0
        self._eu: list[torch.Tensor | None] = [None] * n
        self._ev: list[torch.Tensor | None] = [None] * n
        self._e_sum: list[torch.Tensor | None] = [None] * n
        self._z_sum: list[torch.Tensor | None] = [None] * n
        self._eb = [0.0] * n
        self._eb_sum = [0.0] * n
        # recurrent layers: the trace of the layer's own spikes of the previous step (its W_rec input)
        self.recurrent = [net.recurrent_weight(layer) is not None for layer in range(n)]
        self._last_s: list[torch.Tensor | None] = [None] * n
        self._ru: list[torch.Tensor | None] = [None] * n
        self._rv: list[torch.Tensor | None] = [None] * n
        self._r_sum: list[torch.Tensor | None] = [None] * n

    def __call__(self, layer: int, t: int, s_in: torch.Tensor, step: LIFStep) -> None:
        p = self.params[layer]
        if self.recurrent[layer]:
            self._recurrent_step(layer, t, step)
        s_in = s_in.detach()
        if layer == 0 and self.constant_input:
            self._constant_input_step(t, s_in, step)
            return
        if t == 0:
            eu = s_in
            ev = eu
            self._e_sum[layer] = ev.clone()
            self._z_sum[layer] = step.v_pre.detach().clone()
            self._eb[layer] = 1.0
            self._eb_sum[layer] = 1.0
        else:
            eu = s_in if p.du == 1.0 else self._eu[layer] * (1.0 - p.du) + s_in
            ev = self._ev[layer] * (1.0 - p.dv) + eu
            self._e_sum[layer] += ev
            self._z_sum[layer] += step.v_pre.detach()
            self._eb[layer] = self._eb[layer] * (1.0 - p.dv) + 1.0
            self._eb_sum[layer] += self._eb[layer]
        self._eu[layer] = eu
        self._ev[layer] = ev
        if layer == 0:
            self.steps = t + 1

    def _recurrent_step(self, layer: int, t: int, step: LIFStep) -> None:
        """The eligibility recursion for the W_rec input ``s_self[t - 1]`` (zero at t = 0)."""
        p = self.params[layer]
        s_prev = self._last_s[layer] if t > 0 else torch.zeros_like(step.s.detach())
        if t == 0:
            self._ru[layer] = s_prev
            self._rv[layer] = s_prev
            self._r_sum[layer] = s_prev.clone()
        else:
            self._ru[layer] = s_prev if p.du == 1.0 else self._ru[layer] * (1.0 - p.du) + s_prev
            self._rv[layer] = self._rv[layer] * (1.0 - p.dv) + self._ru[layer]
            self._r_sum[layer] += self._rv[layer]
        self._last_s[layer] = step.s.detach()

    def _constant_input_step(self, t: int, s_in: torch.Tensor, step: LIFStep) -> None:
        p = self.params[0]
        if t == 0:
            self._input0 = s_in
            self._cu = self._cv = self._c_sum = 1.0
            self._z_sum[0] = step.v_pre.detach().clone()
            self._eb[0] = self._eb_sum[0] = 1.0
        else:
            self._cu = self._cu * (1.0 - p.du) + 1.0
            self._cv = self._cv * (1.0 - p.dv) + self._cu
            self._c_sum += self._cv
            self._z_sum[0] += step.v_pre.detach()
            self._eb[0] = self._eb[0] * (1.0 - p.dv) + 1.0
            self._eb_sum[0] += self._eb[0]
        self.steps = t + 1

    def _trace_sum(self, layer: int) -> torch.Tensor:
        if layer == 0 and self.constant_input:
            return self._input0 * self._c_sum
        return self._e_sum[layer]

    def mean_v(self, layer: int) -> torch.Tensor:
        """``z = mean_t v_pre[t]``, [B, *out_shape]."""
        return self._z_sum[layer] / self.steps

    def weight_grad(self, layer: int, dz: torch.Tensor) -> torch.Tensor:
        """``dL/dW`` (the synapse's weight shape) given ``dz = dL/dz`` [B, *out_shape]: the synapse's
        weight gradient with the mean presynaptic trace as its input (Dense: ``dz^T trace``)."""
        return self.synapses[layer].weight_grad(dz, self._trace_sum(layer) / self.steps)

    def bias_grad(self, layer: int, dz: torch.Tensor) -> torch.Tensor:
        """``dL/dbias`` (the bias shape) given ``dz = dL/dz`` [B, *out_shape]."""
        return self.bias_synapses[layer].bias_grad(dz) * (self._eb_sum[layer] / self.steps)

    def recurrent_grad(self, layer: int, dz: torch.Tensor) -> torch.Tensor:
        """``dL/dW_rec`` [n, n] of a recurrent layer given ``dz`` [B, n]: ``dz^T mean_t eps_rec``."""
        return dz.t() @ (self._r_sum[layer] / self.steps)


class CurrentTraces(MembraneTraces):
    """``MembraneTraces`` that also sums each layer's synaptic current ``u`` (for ``mean_t u[t]``)."""

    def __init__(self, net, constant_input: bool = False, first_synapse=None):
        super().__init__(net, constant_input, first_synapse)
        self.u_sum: list[torch.Tensor | float] = [0.0] * len(net.params)

    def __call__(self, layer: int, t: int, s_in: torch.Tensor, step: LIFStep) -> None:
        super().__call__(layer, t, s_in, step)
        self.u_sum[layer] = step.state.u.detach() + (self.u_sum[layer] if t else 0.0)

    def mean_u(self, layer: int) -> torch.Tensor:
        """``mean_t u[t]``, [B, n_out]."""
        return self.u_sum[layer] / self.steps
