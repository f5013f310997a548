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


# --------------------------------------------------------------------------- seeds
def _recorded_labels(method, x, y, seed):
    cfg = adml.finetune_config(epochs=1, batch_size=8, lr=0.01, seed=seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    rec = adml.BatchRecorder()
    training.fit(model, (x, y), method, cfg, hooks=[rec], progress=False)
    return torch.cat(rec.labels)


def test_finetune_seeds_change_the_batch_order_and_every_arm_follows_it():
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4), torch.arange(40) % 4
    makes = adml.arms(0.1, 1, 6.0, variants=["trades", "mart"])
    orders = {s: {a: _recorded_labels(m(), x, y, s) for a, m in makes.items()} for s in (0, 1)}
    for s in (0, 1):
        first = orders[s]["AT continued"]
        assert all(torch.equal(first, o) for o in orders[s].values())
    assert not torch.equal(orders[0]["ADML"], orders[1]["ADML"])
    assert sorted(orders[0]["ADML"].tolist()) == sorted(orders[1]["ADML"].tolist())


def test_arms_are_fresh_methods_with_their_own_counters():
    makes = adml.arms(0.1, 1, 6.0)
    assert list(makes) == ["AT continued", "ADML", "ADML theta=1", "TRADES continued"]
    a, b = makes["ADML"](), makes["ADML"]()
    a.stats["steps"] = 5
    assert b.stats["steps"] == 0 and makes["ADML theta=1"]().theta_one


def test_seed_claim_interval_comes_from_the_per_seed_values():
    from advlab.core.claims import Claims, seed_interval

    def narrow(vs):
        return [(v - 0.001, v + 0.001) for v in vs]

    values = [0.05, 0.04, 0.06]
    c = adml.seed_claim(Claims("t"), "x", "s", "p", values, ">", 0, [0, 1, 2], narrow(values))
    assert c.measured == pytest.approx(0.05)
    assert c.interval == pytest.approx(list(seed_interval(values)))
    assert c.verdict == "holds" and "fails" not in c.note
    # the same mean with a wider seed spread: every seed holds alone, the method does not
    values = [0.09, 0.005, 0.055]
    c = adml.seed_claim(Claims("t"), "x", "s", "p", values, ">", 0, [0, 1, 2], narrow(values))
    assert c.interval == pytest.approx(list(seed_interval(values)))
    assert c.verdict == "inconclusive" and c.note.count("(holds)") == 3


def test_seed_claim_names_a_failing_seed_and_never_narrows_below_the_image_noise():
    from advlab.core.claims import Claims

    claims = Claims("t")
    # holds on the mean and on two seeds, fails alone on seed 7
    c = adml.seed_claim(claims, "a", "s", "p", [0.10, 0.11, -0.02], ">", 0, [3, 5, 7],
                        [(0.08, 0.12), (0.09, 0.13), (-0.05, -0.01)])
    assert "fails on seed 7 alone" in c.note and "seed 3 +0.100 (holds)" in c.note
    # seeds that agree exactly: the interval is the mean image interval, not a point
    c = adml.seed_claim(claims, "b", "s", "p", [0.0, 0.0], ">", 0, [0, 1],
                        [(-0.1, 0.1), (-0.2, 0.2)])
    assert c.interval == pytest.approx([-0.15, 0.15]) and c.verdict == "inconclusive"
    # one seed: its own interval, said so
    c = adml.seed_claim(claims, "c", "s", "p", [0.02], ">", 0, [0], [(-0.01, 0.05)])
    assert c.interval == pytest.approx([-0.01, 0.05]) and "one fine-tuning seed" in c.interval_kind


def test_seed_values_and_seed_table_average_over_the_seeds_each_arm_ran():
    def one(v):
        return {k: np.array(v, float) for k in ("clean", "pgd", "aa")}

    per_seed = {0: {"A": one([1, 1]), "B": one([0, 1])}, 1: {"A": one([0, 1])}}
    del per_seed[0]["B"]["aa"]                       # an arm evaluated without AA-lite
    assert np.allclose(adml.seed_values(per_seed, lambda r: r["A"]["pgd"].mean()), [1, 0.5])
    t = adml.seed_table(per_seed, ["A", "B"])
    assert t.loc["A", "pgd mean"] == pytest.approx(0.75) and t.loc["A", "seeds"] == 2
    assert t.loc["B", "seeds"] == 1 and math.isnan(t.loc["B", "pgd sd"])
    assert math.isnan(t.loc["B", "aa mean"]) and t.loc["B", "pgd mean"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- schedule
def test_cyclic_lr_matches_torch_cyclic_lr_and_its_momentum_cycle():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0, max_lr=0.01, step_size_up=2,
                                              step_size_down=8)
    for it in range(10):
        lr, mom = adml.cyclic_lr(it, 10, 0.01, up_frac=0.2)
        g = opt.param_groups[0]
        assert lr == pytest.approx(g["lr"]) and mom == pytest.approx(g["momentum"])
        opt.step()
        sched.step()


def test_cyclic_sgd_hook_replays_torch_sgd_with_cyclic_lr_exactly():
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    total = 10
    # reference: torch SGD + CyclicLR, as the official fine-tune
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CyclicLR(opt_b, base_lr=0, max_lr=0.05, step_size_up=2,
                                              step_size_down=8)
    # ours: a constant-lr SGD step (as fit takes it), corrected by the hook
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    hook = adml.CyclicSGD(total, 0.05, 5e-4, up_frac=0.2)
    for it in range(total):
        xb, yb = x[it % 3::3], y[it % 3::3]
        hook.before_update(a, xb, xb, yb, None)
        opt_a.zero_grad()
        F.cross_entropy(a(xb), yb).backward()
        opt_a.step()
        hook.after_update(a)
        opt_b.zero_grad()
        F.cross_entropy(b(xb), yb).backward()
        opt_b.step()
        sched.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert not torch.allclose(a.weight, torch.nn.Linear(5, 3).weight)
    assert hook.lrs[0] == 0 and max(hook.lrs) == pytest.approx(0.05)


def _cyclic_run(model, hook, steps, x, y, start=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for it in range(start, start + steps):
        xb, yb = x[it % 4::4], y[it % 4::4]
        hook.before_update(model, xb, xb, yb, None)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        hook.after_update(model)


def test_cyclic_sgd_resumes_from_its_state():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    full, part = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    part.load_state_dict(full.state_dict())
    hook = adml.CyclicSGD(8, 0.05, 5e-4)
    _cyclic_run(full, hook, 8, x, y)
    first = adml.CyclicSGD(8, 0.05, 5e-4)
    _cyclic_run(part, first, 4, x, y)
    resumed = adml.CyclicSGD(8, 0.05, 5e-4)     # a fresh hook, as after a restart
    resumed.load_state_dict(first.state_dict())
    _cyclic_run(part, resumed, 4, x, y, start=4)
    assert resumed.it == 8 and resumed.lrs == pytest.approx(hook.lrs)
    for a, b in zip(full.parameters(), part.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


# --------------------------------------------------------------------------- variants, sizes
def test_adml_trades_variant_puts_the_trades_loss_on_the_first_half():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, x_adv = torch.rand(6, 1, 2, 2), torch.rand(6, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for name in ("trades", "mart"):
        method = adml.ADMLMethod(eps=0.1, steps=1, defence=name, beta=2.0)
        hand = training.METHODS[name](model, x[:3], x_adv[:3], y[:3], 2.0) \
            + adml.adml_loss(model(x_adv[3:]), model(x[3:]), y[3:])[0]
        assert torch.allclose(method.loss(model, x, x_adv, y), hand)
    with pytest.raises(ValueError, match="unknown ADML defence"):
        adml.ADMLMethod(defence="awp")


def test_sizes_that_do_not_fit_fail_naming_the_knob_and_the_largest_value():
    y_train, y_test = np.repeat(np.arange(3), 40), np.repeat(np.arange(3), 10)
    adml.check_sizes(y_train, y_test, n_train_per_class=40, n_eval_per_class=10,
                     aa_n_per_class=10)
    with pytest.raises(ValueError, match="n_train_per_class = 41 .* at most 40"):
        adml.check_sizes(y_train, y_test, n_train_per_class=41)
    with pytest.raises(ValueError, match="aa_n_per_class = 9 .* at most 8"):
        adml.check_sizes(y_train, y_test, n_eval_per_class=8, aa_n_per_class=9)


def test_a_checkpoint_of_another_dataset_is_refused():
    model = torch.nn.Linear(2, 2)
    assert adml.check_start((model, {"dataset": "mnist5k"}), "mnist5k")[0] is model
    with pytest.raises(ValueError, match="run 00_baselines with dataset 'mnist5k'"):
        adml.check_start((model, {"dataset": "fashion_mnist"}), "mnist5k")
