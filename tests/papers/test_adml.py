"""Unit tests of advlab.papers.adml (Adversarial Double Machine Learning)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advlab.core import training
from advlab.papers import adml

LOG3 = math.log(3.0)


def test_theta_is_the_odds_against_the_adversarial_class_and_carries_no_gradient():
    # row 0: p = [0.25, 0.75], label 0 -> fooled, theta = 1/0.75 - 1 = 1/3
    # row 1: p = [0.75, 0.25], label 0 -> not fooled, theta = 0
    logits = torch.tensor([[0.0, LOG3], [LOG3, 0.0]], requires_grad=True)
    theta, fooled = adml.theta_hat(logits, torch.tensor([0, 0]))
    assert fooled.tolist() == [True, False]
    assert torch.allclose(theta, torch.tensor([1 / 3, 0.0]))
    assert not theta.requires_grad


def test_theta_lies_in_zero_to_k_minus_one():
    logits = torch.randn(200, 10) * 5
    theta, fooled = adml.theta_hat(logits, torch.randint(0, 10, (200,)))
    assert (theta >= 0).all() and (theta <= 9 + 1e-5).all()
    assert (theta[~fooled] == 0).all()


def test_loss_matches_a_hand_computation_and_theta_is_not_differentiated():
    logits_adv = torch.tensor([[0.0, LOG3, 0.0], [2.0, 0.0, 0.0]], requires_grad=True)
    logits_nat = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss, n = adml.adml_loss(logits_adv, logits_nat, y)
    p = F.softmax(logits_adv[:1], 1)[0]                       # only row 0 is fooled
    theta = (1 / p[1] - 1).detach()
    hand = theta * -torch.log(p[0] + 1e-3) + theta * torch.log(p[1] + 1e-3) \
        + F.cross_entropy(logits_nat, y)
    assert n == 1
    assert torch.allclose(loss, hand)
    g, = torch.autograd.grad(loss, logits_adv, retain_graph=True)
    g_hand, = torch.autograd.grad(hand, logits_adv)
    assert torch.allclose(g, g_hand)


def test_no_fooled_sample_gives_a_finite_loss_and_is_counted():
    logits_adv = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    logits_nat = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    loss, n = adml.adml_loss(logits_adv, logits_nat, y)
    assert n == 0 and torch.isfinite(loss)
    assert torch.allclose(loss, F.cross_entropy(logits_nat, y))
    # the same through the training method: a model that never errs on this batch
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2) * 10)
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    method = adml.ADMLMethod(eps=0.05, steps=1)
    out = method.loss(model, x, x, y)
    assert torch.isfinite(out)
    assert method.stats["skipped"] == 1 and method.stats["fooled"] == 0


def test_theta_one_reduces_to_the_unweighted_terms():
    torch.manual_seed(0)
    logits_adv, logits_nat = torch.randn(16, 4) * 3, torch.randn(16, 4)
    y = torch.randint(0, 4, (16,))
    loss, n = adml.adml_loss(logits_adv, logits_nat, y, theta_one=True)
    p = F.softmax(logits_adv, 1)
    w = p.argmax(1) != y
    assert n == int(w.sum()) > 0
    hand = -torch.log(p[w, y[w]] + 1e-3).mean() + torch.log(p[w].max(1).values + 1e-3).mean() \
        + F.cross_entropy(logits_nat, y)
    assert torch.allclose(loss, hand)


def test_method_loss_is_ce_on_the_first_half_plus_adml_on_the_second():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, x_adv = torch.rand(6, 1, 2, 2), torch.rand(6, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    method = adml.ADMLMethod(eps=0.1, steps=1)
    got = method.loss(model, x, x_adv, y)
    hand = F.cross_entropy(model(x_adv[:3]), y[:3]) \
        + adml.adml_loss(model(x_adv[3:]), model(x[3:]), y[3:])[0]
    assert torch.allclose(got, hand)
    assert method.stats["steps"] == 1 and method.stats["seen"] == 3


def test_stats_hook_round_trips_the_counts():
    method = adml.ADMLMethod(eps=0.1, steps=1)
    method.stats.update(steps=7, skipped=2)
    hook = adml.StatsHook(method)
    state = hook.state_dict()
    fresh = adml.ADMLMethod(eps=0.1, steps=1)
    adml.StatsHook(fresh).load_state_dict(state)
    assert fresh.stats["steps"] == 7 and fresh.stats["skipped"] == 2


def test_all_arms_see_the_same_batches_under_the_same_seed():
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4), torch.arange(40) % 4
    cfg = training.TrainConfig(epochs=2, batch_size=8, lr=0.01, schedule="constant", seed=3)
    seen = []
    for method in (training.Method("pgd_at", eps=0.1, steps=1),
                   adml.ADMLMethod(eps=0.1, steps=1),
                   adml.ADMLMethod(eps=0.1, steps=1, theta_one=True),
                   training.Method("trades", eps=0.1, steps=1)):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        rec = adml.BatchRecorder()
        training.fit(model, (x, y), method, cfg, hooks=[rec], progress=False)
        seen.append(torch.cat(rec.labels))
    assert len(seen[0]) == 80
    assert all(torch.equal(seen[0], s) for s in seen[1:])


def test_per_class_accuracy_matches_a_hand_count():
    correct = np.array([1, 0, 1, 1, 0, 0, 1, 1])
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert np.allclose(adml.per_class(correct, y, 3), [2 / 3, 1 / 2, 2 / 3])
    assert math.isnan(adml.per_class(correct, y, 4)[3])
    assert adml.spread(adml.per_class(correct, y, 3)) == pytest.approx(2 / 3 - 1 / 2)


def test_class_theta_counts_only_fooled_images():
    theta = np.array([0.0, 2.0, 0.5, 0.0])
    fooled = np.array([0, 1, 1, 0])
    y = np.array([0, 0, 1, 1])
    t = adml.class_theta(theta, fooled, y, 2)
    assert np.allclose(t["fooled"], [0.5, 0.5])
    assert np.allclose(t["theta_fooled"], [2.0, 0.5])
    assert np.allclose(t["theta_expected"], [1.0, 0.25])


def test_group_gains_and_spread_change_on_a_toy_pair():
    y = np.repeat([0, 1, 2, 3], 2)
    a = np.array([1, 1, 1, 0, 1, 1, 1, 1])   # per class: 1, .5, 1, 1
    b = np.array([0, 0, 1, 0, 1, 1, 1, 1])   # per class: 0, .5, 1, 1
    assert adml.group_gain(a, b, y, [0]) == pytest.approx(1.0)
    assert adml.weak_minus_rest(a, b, y, [0, 1]) == pytest.approx(0.5)
    assert adml.spread_change(a, b, y) == pytest.approx(0.5 - 1.0)


def test_stratified_bootstrap_keeps_class_counts_and_contains_the_point():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 30)
    a = rng.integers(0, 2, len(y)).astype(float)
    counts = []

    def stat(v, yy):
        counts.append(np.bincount(yy.astype(int), minlength=5))
        return adml.spread(adml.per_class(v, yy, 5))

    lo, hi = adml.stratified_bootstrap(stat, [a], y, n_boot=50, seed=0)
    point = adml.spread(adml.per_class(a, y, 5))
    assert lo <= point <= hi and lo < hi
    assert all((c == 30).all() for c in counts)


def test_class_explorer_updates_when_a_class_is_picked():
    pytest.importorskip("ipywidgets")
    import matplotlib
    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    res = {arm: {"clean": rng.integers(0, 2, 12).astype(float),
                 "pgd": rng.integers(0, 2, 12).astype(float),
                 "theta": rng.random(12), "fooled": rng.integers(0, 2, 12).astype(float),
                 "aa": rng.integers(0, 2, 6).astype(float)} for arm in ("AT", "ADML")}
    box = adml.class_explorer(res, y, ["a", "b", "c"], np.array([0, 1, 4, 5, 8, 9]),
                              display=False)
    pick, text = box.children[0], box.children[1]
    before = text.value
    assert before.startswith("<b>a</b>")
    pick.value = 2
    assert text.value != before and text.value.startswith("<b>c</b>")
