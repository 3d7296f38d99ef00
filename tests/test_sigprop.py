"""Signal Propagation: the loss, and the trace implementation against an autograd reference."""

import torch

from spikeprop.config import TrainConfig
from spikeprop.data import load
from spikeprop.evaluate import accuracy
from spikeprop.network import simulate
from spikeprop.rules.sigprop import SigProp, represent, sigprop_loss
from spikeprop.train import build


def test_loss_prefers_matching_streams():
    y = torch.tensor([0, 0, 1, 1])
    proto = torch.eye(4)[:2]
    aligned = proto[y]
    swapped = proto[1 - y]
    good, match_good = sigprop_loss(aligned, aligned, y, 0.1)
    bad, match_bad = sigprop_loss(aligned, swapped, y, 0.1)
    assert good < bad and match_good == 1.0 and match_bad == 0.0


def test_threshold_representation_is_centred_and_bounded():
    z = torch.tensor([-1e6, 1.0, 1e6])
    r = represent(z, 1.0, "threshold")
    assert torch.allclose(r, torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)


class AutogradSigProp(SigProp):
    """Reference: the same local losses, differentiated by autograd through the unrolled loop,
    with a per-sample target stream (the rule runs it once per class)."""

    def _voltage_grads(self, xin, y):
        net, T = self.net, xin.shape[0]
        c = torch.nn.functional.one_hot(y, net.sizes[-1]).to(xin.dtype)
        cin = c.unsqueeze(0).expand(T, *c.shape)
        sums = {}

        def collect(stream):
            def observer(layer, t, s_in, step):
                sums[stream, layer] = step.v_pre if t == 0 else sums[stream, layer] + step.v_pre
            return observer

        res = simulate(net, xin, reset_grad="constant", observer=collect("h"))
        simulate(net, cin, reset_grad="constant", observer=collect("t"), first_layer=(self.S1_synapse, self.S1))
        losses, matches, total = [], [], 0.0
        for layer in range(net.n_layers):
            loss, match = self._layer_loss(layer, sums["h", layer] / T, sums["t", layer] / T, y)
            total = total + loss
            losses.append(loss.detach())
            matches.append(match)
        total.backward()
        return losses, matches, res.counts


def test_trace_training_equals_autograd_training():
    # Two layers, rate encoding (non-constant input) and direct encoding (the scalar-trace path).
    ds = load("digits")
    for encoding in ("direct", "rate"):
        config = TrainConfig(hidden=(48, 32), steps=6, encoding=encoding, lr=2e-3, seed=5, rule_options={"readout_lr": 1e-2})
        nets, rules = [], []
        for cls in (SigProp, AutogradSigProp):
            net, _, encoder = build(config, ds)
            nets.append(net)
            rules.append(cls(net, config, encoder))
        for i in range(0, 1437, 32):
            x, y = ds.intensities(ds.train_x[i : i + 32]), ds.train_y[i : i + 32]
            for rule in rules:
                rule.encoder.generator.manual_seed(i)
                rule.train_step(x, y)
        for pa, pb in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.allclose(pa, pb, atol=2e-5), (pa - pb).abs().max()
        accs = []
        for rule in rules:
            rule.encoder.generator.manual_seed(0)
            accs.append(accuracy(rule.predict, ds))
        assert abs(accs[0] - accs[1]) <= 0.01 and accs[0] > 0.3, accs  # learned (chance is 0.1), and equally
