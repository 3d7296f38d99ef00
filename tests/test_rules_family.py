"""The forward-only family (ff, pepita, f3, dfa) and the shallow baseline.

Each rule's update is checked against an independent reference: autograd through the unrolled
time loop with the spikes and reset amounts held constant (the membrane-only rules' definition), a
closed form for a layer that does not spike, or finite differences. Then each rule must learn on
digits within a few epochs, and a run with per-sample state (F3's buffer) must resume exactly.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from spikeprop import SpikepropError, runs
from spikeprop.cli import main
from spikeprop.config import TrainConfig
from spikeprop.data import load
from spikeprop.encoders import Encoder
from spikeprop.evaluate import accuracy
from spikeprop.network import Network, simulate
from spikeprop.neurons import LIFParams
from spikeprop.rules import RULES, register
from spikeprop.rules.ff import hard_wrong_labels, label_currents, wrong_labels
from spikeprop.rules.local import threshold_activation as surrogate_activation
from spikeprop.rules.local import threshold_slope
from spikeprop.train import build

FAMILY = tuple(sorted(RULES))  # every registered rule: a new one is tested without editing this file
SMALL = ["--hidden", "64", "--steps", "4", "--no-progress"]


def make_rule(name, sizes=(12, 9, 7, 3), T=5, vth=0.5, dtype=torch.float32, encoding="direct", **options):
    config = TrainConfig(rule=name, steps=T, hidden=sizes[1:-1], batch_size=6, rule_options=options)
    net = Network(sizes, LIFParams(du=1.0, dv=0.2, vth=vth), generator=torch.Generator().manual_seed(3), gain=2.0)
    net = net.to(dtype)
    encoder = Encoder(encoding, T, torch.Generator().manual_seed(5))
    return RULES[name](net, config, encoder)


def batch(n_in=12, B=6, n_classes=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    return torch.rand(B, n_in, generator=g).to(dtype), torch.arange(B) % n_classes


def membrane_reference(net, xin):
    """Per layer z = mean_t v_pre[t], differentiable in that layer's own W and bias only."""
    res = simulate(net, xin, reset_grad="constant", record=True)
    return [v.mean(0) for v in res.v], res


@pytest.mark.parametrize("name", ["dfa", "f3"])
@pytest.mark.parametrize("rep", ["threshold", "linear"])
def test_feedback_rules_equal_autograd_through_the_membrane(name, rep):
    rule = make_rule(name, rep=rep)
    net = rule.net
    x, y = batch()
    index = torch.arange(len(y))
    if name == "f3":  # a first visit (DRTP) fills the buffer; the second uses the delayed error
        rule.gradients(x, y, index)
        with torch.no_grad():
            net.weights[0].mul_(1.1)
    stored = rule.buffer[index].clone() if name == "f3" else None
    rule.gradients(x, y, index)
    got = [w.grad.clone() for w in net.weights] + [b.grad.clone() for b in net.biases]

    z, res = membrane_reference(net, rule.encoder(x))
    assert all(float(c.sum()) > 0 for c in res.counts), "the case must spike in every layer"
    e = (torch.softmax(res.logits, 1) - F.one_hot(y, 3)).detach()
    signal = stored if name == "f3" else e
    loss = 0.0
    for layer, zl in enumerate(z):
        r = surrogate_activation(zl, net.params[layer].vth) if rep == "threshold" else zl
        loss = loss + ((signal @ rule.B[layer]) * r).sum() / len(y)
    want = torch.autograd.grad(loss, [*net.weights, *net.biases])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_readout_gets_the_true_cross_entropy_gradient():
    rule = make_rule("dfa")
    x, y = batch()
    rule.gradients(x, y)
    got = rule.net.readout.weight.grad.clone()
    rule.net.readout.weight.grad = None
    res = simulate(rule.net, rule.encoder(x))
    F.cross_entropy(res.logits, y).backward()
    torch.testing.assert_close(got, rule.net.readout.weight.grad)


def test_f3_buffer_starts_as_the_target_then_delays_the_error():
    rule = make_rule("f3")
    y = torch.tensor([0, 2])
    index = torch.tensor([4, 1])
    e1 = torch.tensor([[0.1, 0.2, -0.3], [0.5, 0.0, -0.5]])
    first = rule.hidden_error(e1, y, index)
    torch.testing.assert_close(first, -F.one_hot(y, 3).float())  # epoch 1 is DRTP
    second = rule.hidden_error(torch.zeros(2, 3), y, index)
    torch.testing.assert_close(second, e1)  # what was stored for rows 4 and 1
    assert rule.buffer.shape == (5, 3) and rule.seen.tolist() == [False, True, False, False, True]
    with pytest.raises(SpikepropError):
        rule.hidden_error(e1, y, None)
    one_hot = make_rule("f3", mode="delayed_error_one_hot")
    one_hot.hidden_error(e1, y, index)
    torch.testing.assert_close(one_hot.hidden_error(e1, y, index), torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, -0.5]]))


@pytest.mark.parametrize("pre", ["err", "clean"])
@pytest.mark.parametrize("rep", ["threshold", "linear", "current"])
def test_pepita_matches_the_closed_form_of_a_silent_layer(rep, pre):
    """One layer below threshold: z = c_T W x, mean_t u = W x, with c_T = mean_t sum_{k<=t} (1-dv)^(t-k) (du = 1)."""
    T, dv = 5, 0.2
    rule = make_rule("pepita", sizes=(12, 9, 3), T=T, vth=50.0, dtype=torch.float64, rep=rep, pre=pre)
    net = rule.net
    x, y = batch(dtype=torch.float64)
    B = len(y)
    rule.gradients(x, y)
    c_T = sum(sum((1 - dv) ** (t - k) for k in range(t + 1)) for t in range(T)) / T
    W, F_ = net.weights[0].detach(), rule.F.to(torch.float64)
    with torch.no_grad():
        logits = net.readout(torch.zeros(B, 9, dtype=torch.float64))  # no spikes: r = 0
    e = torch.softmax(logits, 1) - F.one_hot(y, 3)
    x_err = x - e @ F_.t()
    z1, z2 = c_T * x @ W.t(), c_T * x_err @ W.t()
    if rep == "threshold":
        dz = (surrogate_activation(z1, 50.0) - surrogate_activation(z2, 50.0)) * threshold_slope(z2, 50.0) / B
    elif rep == "current":
        dz = (e @ F_.t() @ W.t()) * threshold_slope(z1, 50.0) / B  # u - u_err = W F e: feedback alignment with W F
    else:
        dz = (z1 - z2) / B
    torch.testing.assert_close(net.weights[0].grad, dz.t() @ (c_T * (x_err if pre == "err" else x)))
    assert float(net.weights[0].grad.abs().max()) > 0
    torch.testing.assert_close(net.readout.bias.grad, e.mean(0))


def pepita_gradients(**options):
    """A pepita rule with ``options``, one batch, the hidden weights' gradients it set, and its input."""
    rule = make_rule("pepita", **options)
    x, y = batch()
    rule.gradients(x, y)
    return rule, x, y, [w.grad.clone() for w in rule.net.weights], rule.encoder(x)


def test_pepita_equals_autograd_through_the_membrane_of_pass_two():
    rule, x, y, got, xin = pepita_gradients(rep="linear", pre="err")
    net = rule.net
    with torch.no_grad():
        z1, res1 = membrane_reference(net, xin)
        e = torch.softmax(res1.logits, 1) - F.one_hot(y, 3)
    xin_err = (x - e @ rule.F.t()).expand(xin.shape[0], *x.shape)
    z2, res2 = membrane_reference(net, xin_err)
    assert all(float(c.sum()) > 0 for c in res2.counts)
    loss = sum(((a - b.detach()) * b).sum() for a, b in zip(z1, z2)) / len(y)
    want = torch.autograd.grad(loss, list(net.weights))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rep", ["current", "rate"])
def test_pepita_current_and_rate_equal_autograd_through_the_membrane_of_pass_one(rep):
    """Spiking layers: dz from the passes' mean currents u = W s_in (du = 1) or rates, traces of pass 1."""
    rule, x, y, got, xin = pepita_gradients(rep=rep, pre="clean", F_scale=2.0)
    net, T = rule.net, rule.encoder.steps
    with torch.no_grad():
        _, res1 = membrane_reference(net, xin)
        e = torch.softmax(res1.logits, 1) - F.one_hot(y, 3)
        res2 = simulate(net, (x - e @ rule.F.t()).expand(T, *x.shape), reset_grad="constant", record=True)
    z1, res1 = membrane_reference(net, xin)
    assert all(float(c.sum()) > 0 for c in res1.counts)
    dz = []
    for layer, w in enumerate(net.weights):
        if rep == "rate":
            dz.append((res1.counts[layer] - res2.counts[layer]) / T)
        else:
            s1 = xin if layer == 0 else res1.spikes[layer - 1].detach()
            s2 = res2.spikes[layer - 1] if layer else (x - e @ rule.F.t()).expand(T, *x.shape)
            du = ((s1 - s2) @ w.detach().t()).mean(0)
            dz.append(du * threshold_slope(z1[layer].detach(), net.params[layer].vth))
    assert float(dz[0].abs().sum()) > 0
    loss = sum((d * z).sum() for d, z in zip(dz, z1)) / len(y)
    want = torch.autograd.grad(loss, list(net.weights))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_pepita_sgd_steps_with_momentum_and_resumes():
    """optimizer sgd: W <- W - lr v, v <- momentum v + grad (torch's SGD); its buffers are checkpointed."""
    rule = make_rule("pepita", optimizer="sgd", momentum=0.5)
    x, y = batch()
    W0 = rule.net.weights[0].detach().clone()
    rule.train_step(x, y)
    g1 = rule.net.weights[0].grad.clone()
    torch.testing.assert_close(rule.net.weights[0].detach(), W0 - rule.lr * g1)
    W1 = rule.net.weights[0].detach().clone()
    state = {k: v for k, v in rule.state_dict().items()}
    twin = make_rule("pepita", optimizer="sgd", momentum=0.5)
    with torch.no_grad():
        for a, b in zip(twin.net.parameters(), rule.net.parameters()):
            a.copy_(b)
    twin.load_state_dict(state)
    rule.train_step(x, y)
    twin.train_step(x, y)
    g2 = rule.net.weights[0].grad
    torch.testing.assert_close(rule.net.weights[0].detach(), W1 - rule.lr * (0.5 * g1 + g2))
    torch.testing.assert_close(twin.net.weights[0].detach(), rule.net.weights[0].detach())


def test_pepita_passes_share_the_encoder_randomness():
    """With rate coding and F = 0 both passes must see identical spikes: no hidden update at all."""
    rule = make_rule("pepita", encoding="rate")
    rule.B = [torch.zeros_like(b) for b in rule.B]
    x, y = batch()
    rule.gradients(x, y)
    assert all(float(w.grad.abs().max()) == 0.0 for w in rule.net.weights)
    assert float(rule.net.readout.weight.grad.abs().max()) > 0


def test_weight_mirroring_aligns_feedback_with_the_forward_weights():
    rule = make_rule("pepita", sizes=(12, 9, 3), wm="on", eta_wm=0.5)
    W, R = rule.net.weights[0].detach(), rule.net.readout.weight.detach()

    def cos(a, b):
        return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    before = cos(rule.B[0], W.t())
    for _ in range(300):
        rule.mirror()
    assert cos(rule.B[0], W.t()) > 0.8 > before and cos(rule.B[1], R.t()) > 0.8
    assert math.isclose(float(rule.F.std()), rule.F_std, rel_tol=1e-4)


@pytest.mark.parametrize("goodness", ["m2", "mean", "m1"])
def test_ff_gradient_matches_finite_differences(goodness):
    """Below threshold nothing spikes, the loss is smooth in W and finite differences are exact."""
    rule = make_rule("ff", sizes=(14, 8, 6, 3), vth=50.0, dtype=torch.float64, goodness=goodness, theta=1e-3, alpha=1e3)
    net = rule.net
    with torch.no_grad():  # a silent layer 1 sends nothing: layer 2 is driven by its bias alone
        for b in net.biases:
            b.copy_(torch.rand(b.shape, generator=torch.Generator().manual_seed(2), dtype=b.dtype))
    x, y = batch(n_in=14, dtype=torch.float64)
    state = rule.generator.get_state()
    rule.gradients(x, y)
    rule.generator.set_state(state)
    y_neg = wrong_labels(y, 3, rule.generator)

    def loss():
        with torch.no_grad():
            xin = torch.cat([rule.encode(x, y), rule.encode(x, y_neg)], dim=1)
            G, counts = rule.goodness(xin)[:2]
            assert all(float(c.sum()) == 0 for c in counts)
            return float(sum(rule.layer_losses([g[:6] for g in G], [g[6:] for g in G])))

    h = 1e-6
    checked = 0
    for W, entries in [(net.weights[0], [(0, 0), (1, 3), (2, 12), (4, 5)]), (net.biases[0], [(1,), (3,)]),
                       (net.biases[1], [(0,), (5,)])]:
        for i in entries:
            with torch.no_grad():
                W[i] += h
                up = loss()
                W[i] -= 2 * h
                down = loss()
                W[i] += h
            fd = (up - down) / (2 * h)
            assert math.isclose(float(W.grad[i]), fd, rel_tol=1e-4, abs_tol=1e-10), (i, fd)
            checked += abs(fd) > 1e-6
    assert checked >= 6  # most checked entries carry a gradient


def test_ff_gradient_stays_inside_each_layer():
    """With spikes, layer 2's loss must not reach layer 1 (detached spikes, constant resets)."""
    rule = make_rule("ff", sizes=(14, 8, 6, 3))
    x, y = batch(n_in=14)
    xin = rule.encode(x, y)
    G, counts = rule.goodness(xin)[:2]
    assert float(counts[0].sum()) > 0
    grads = torch.autograd.grad(G[1].sum(), [rule.net.weights[0], rule.net.weights[1]], allow_unused=True)
    assert grads[0] is None and float(grads[1].abs().sum()) > 0


def overlay(x, labels, n_classes, scale):
    out = x.clone()
    out[:, :n_classes] = label_currents(labels, n_classes, scale, x)
    return out


def test_ff_labels():
    y = torch.arange(10).repeat(50)
    y_neg = wrong_labels(y, 10, torch.Generator().manual_seed(0))
    assert bool((y_neg != y).all()) and set(y_neg.tolist()) == set(range(10))
    x = torch.rand(3, 20)
    o = overlay(x, torch.tensor([2, 0, 1]), 10, 1.0)
    assert o[0, 2] == 1 and float(o[0, :10].sum()) == 1 and torch.equal(o[:, 10:], x[:, 10:])
    assert torch.allclose(overlay(x, None, 10, 1.0)[:, :10], torch.full((3, 10), 0.1))


def test_ff_label_scale_above_one_is_a_direct_current():
    """Direct encoding clamps intensities to [0, 1] but not the label: it enters at label_scale, constant in T."""
    rule = make_rule("ff", sizes=(14, 8, 6, 3), label_scale=4.0)
    x, _ = batch(n_in=14)
    x[0, 5] = 1.5  # an image intensity is still clamped
    xin = rule.encode(x, torch.tensor([2, 0, 1, 2, 0, 1]))
    assert xin.shape == (5, 6, 14) and xin.stride(0) == 0
    assert xin[3, 0, :3].tolist() == [0.0, 0.0, 4.0] and xin[3, 1, :3].tolist() == [4.0, 0.0, 0.0] and xin[0, 0, 5] == 1.0
    torch.testing.assert_close(xin[:, :, 3:], x[:, 3:].clamp(0, 1).expand(5, 6, 11))
    assert torch.allclose(rule.encode(x, None)[2, :, :3], torch.full((6, 3), 4.0 / 3))
    rule = make_rule("ff", sizes=(14, 8, 6, 3), encoding="rate", label_scale=4.0)  # spikes stay binary
    assert set(rule.encode(x, torch.zeros(6, dtype=torch.long)).unique().tolist()) <= {0.0, 1.0}


def test_ff_hard_negatives_follow_the_readout_softmax_over_wrong_labels():
    """p(c) = exp(s_c) / sum_{k != y} exp(s_k): scores (0, log 2, 0, -inf) with y = 0 give 2/3, 1/3, 0."""
    n = 30000
    y = torch.zeros(n, dtype=torch.long)
    scores = torch.tensor([[5.0, math.log(2.0), 0.0, -1e9]]).expand(n, 4)  # the true label's score is ignored
    y_neg = hard_wrong_labels(y, scores, torch.Generator().manual_seed(0))
    freq = torch.bincount(y_neg, minlength=4).double() / n
    assert freq[0] == 0 and freq[3] == 0 and abs(float(freq[1]) - 2 / 3) < 0.01 and abs(float(freq[2]) - 1 / 3) < 0.01
    # a saturated softmax on the true label still gives a wrong one
    assert bool((hard_wrong_labels(torch.tensor([1, 2]), torch.tensor([[0.0, 1e4, 0.0], [0.0, 0.0, 1e4]]),
                                   torch.Generator().manual_seed(1)) != torch.tensor([1, 2])).all())
    rule = make_rule("ff", sizes=(14, 8, 6, 3), negatives="hard")
    x, y = batch(n_in=14)
    metrics = rule.gradients(x, y)
    assert math.isfinite(metrics["loss"]) and rule.net.weights[0].grad is not None


def test_ff_predicts_by_goodness_over_labels_or_one_pass_readout():
    rule = make_rule("ff", sizes=(14, 8, 6, 3))
    x, _ = batch(n_in=14)
    scores = rule.predict(x)
    assert scores.shape == (6, 3)
    xin = rule.encode(x, torch.full((6,), 2))
    G = rule.goodness(xin).G
    torch.testing.assert_close(scores[:, 2], G[1].detach())  # layers >= 2 only
    rule.options["predict"] = "readout"
    torch.testing.assert_close(rule.predict(x), simulate(rule.net, rule.encode(x, None)).logits)


def test_shallow_trains_only_the_readout():
    rule = make_rule("shallow")
    before = [w.clone() for w in rule.net.weights]
    r0 = rule.net.readout.weight.clone()
    x, y = batch()
    for _ in range(3):
        rule.train_step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, rule.net.weights))
    assert not torch.equal(r0, rule.net.readout.weight)


def test_the_registry_holds_the_rules():
    assert {"sigprop", "bptt", "dfa", "f3", "ff", "pepita", "shallow"} <= set(RULES)
    with pytest.raises(ValueError, match="already registered"):
        register("dfa")(type("Again", (), {}))


@pytest.mark.parametrize("name", FAMILY)
def test_rule_learns_digits_within_a_few_epochs(tmp_path, name):
    out = tmp_path / name
    args = ["--rule", name, "--epochs", "5", *SMALL]
    assert main(["train", "--out", str(out), *args]) == 0
    config = TrainConfig.from_dict({k: v for k, v in runs.read_json(out / runs.CONFIG).items() if k != "versions"})
    ds = load("digits")
    _, rule, _ = build(config, ds)
    initial = accuracy(rule.predict, ds, "test")
    final = runs.read_json(out / runs.SUMMARY)["test_accuracy"]
    # shallow learns only its read-out on 64 random units: the bar is lower, the test the same
    assert final > (0.65 if name == "shallow" else 0.8) and final > initial + 0.4, (initial, final)


@pytest.mark.parametrize("name", FAMILY)
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, name, monkeypatch):
    args = ["--rule", name, "--epochs", "3", "--encoding", "rate", *SMALL]
    if name == "pepita":
        args += ["--pepita-wm", "on", "--pepita-wm-pre-steps", "10"]
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *args]) == 0
    calls = {"n": 0}
    original = RULES[name].train_step

    def flaky(self, x, y, **kw):
        calls["n"] += 1
        if calls["n"] == 60:  # in epoch 2 (45 batches of 32 per epoch)
            raise KeyboardInterrupt
        return original(self, x, y, **kw)

    monkeypatch.setattr(RULES[name], "train_step", flaky)
    part = tmp_path / "part"
    assert main(["train", "--out", str(part), *args]) == 130
    assert runs.load_checkpoint(part)["epoch"] == 1
    monkeypatch.setattr(RULES[name], "train_step", original)
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    a, b = runs.load_checkpoint(full), runs.load_checkpoint(part)
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    if name == "f3":
        assert torch.equal(a["rule"]["buffer"], b["rule"]["buffer"]) and bool(a["rule"]["seen"].all())
    assert runs.read_metrics(full)[-1]["test_accuracy"] == runs.read_metrics(part)[-1]["test_accuracy"]
