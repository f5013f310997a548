"""Unit tests of advlab.weights (weight-space helpers) and advlab.awp (AWP training hook)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab.core import models, training, weights
from advlab.papers.awp import AWP, awp_perturbation


def tiny_bn_net():
    """conv(+bias)-BN-relu-pool-linear(+bias): every kind of tensor AWP must tell apart."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def batch(n=16, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, classes, (n,), generator=g)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- layer selection
def test_layer_tensors_selections():
    net = tiny_bn_net()
    assert list(weights.layer_tensors(net, "conv_linear_weights")) == ["0.weight", "5.weight"]
    assert list(weights.layer_tensors(net, "non_norm")) == ["0.weight", "0.bias", "5.weight",
                                                            "5.bias"]
    assert list(weights.layer_tensors(net, "all")) == [k for k, _ in net.named_parameters()]
    with pytest.raises(ValueError, match="allowed"):
        weights.layer_tensors(net, "biases")


def test_layer_tensors_on_registry_models():
    for name in ("small_cnn", "vgg_mini_bn"):
        net = models.create_model(name, bn=True) if name == "small_cnn" else \
            models.create_model(name)
        sel = weights.layer_tensors(net)
        assert sel and all(p.ndim > 1 and "weight" in k for k, p in sel.items())
        bn_params = {f"{m}.{p}" for m, mod in net.named_modules()
                     if isinstance(mod, nn.BatchNorm2d) for p in ("weight", "bias")}
        assert bn_params and not bn_params & set(weights.layer_tensors(net, "non_norm"))


# --------------------------------------------------------------------------- functional forward
def test_functional_forward_matches_in_place_and_leaves_model_untouched():
    net = tiny_bn_net()
    x, _ = batch()
    before = snapshot(net)
    v = weights.relative_sphere_sample(weights.layer_tensors(net), 0.3,
                                       torch.Generator().manual_seed(0))
    params = weights.add_perturbation(dict(net.named_parameters()), v)
    for mode in (True, False):
        net.train(mode)
        out = weights.functional_forward(net, params, x)
        ref = copy.deepcopy(net)
        with torch.no_grad():
            for k, d in v.items():
                ref.get_parameter(k).add_(d)
        torch.testing.assert_close(out, ref(x))
        for k, t in net.state_dict().items():   # BN running stats too, even in train mode
            assert torch.equal(t, before[k]), k


def test_functional_forward_gradient_reaches_params_dict():
    net = tiny_bn_net().eval()
    x, y = batch()
    p = {k: t.detach().clone().requires_grad_(True) for k, t in net.named_parameters()}
    F.cross_entropy(weights.functional_forward(net, p, x), y).backward()
    assert all(t.grad is not None for t in p.values())
    assert all(t.grad is None for t in net.parameters())


# --------------------------------------------------------------------------- directions
def test_filter_normalized_direction():
    net = tiny_bn_net()
    d = weights.filter_normalized_direction(net, "non_norm", torch.Generator().manual_seed(0))
    for k, w in weights.layer_tensors(net, "non_norm").items():
        if w.ndim == 1:
            assert torch.count_nonzero(d[k]) == 0, k
        else:
            torch.testing.assert_close(d[k].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1))


def test_relative_sphere_and_ball():
    net = tiny_bn_net()
    params = weights.layer_tensors(net)
    v = weights.relative_sphere_sample(params, 0.1, torch.Generator().manual_seed(0))
    for k, w in params.items():
        torch.testing.assert_close(v[k].norm(), 0.1 * w.detach().norm())
    big = {k: 10 * t for k, t in v.items()}
    proj = weights.relative_ball_project(big, params, 0.1)
    small = weights.relative_ball_project({k: 0.5 * t for k, t in v.items()}, params, 0.1)
    for k, w in params.items():
        torch.testing.assert_close(proj[k].norm(), 0.1 * w.detach().norm())
        torch.testing.assert_close(small[k], 0.5 * v[k])


def test_landscape_at_zero_is_robust_loss_and_model_unchanged():
    net = tiny_bn_net()
    x, y = batch(24)
    net.eval()
    before = snapshot(net)
    d = weights.filter_normalized_direction(net, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    curve = weights.weight_loss_landscape(net, x, y, d, [-1.0, 0.0, 1.0], eps=0.0)
    loss0, acc0 = weights.robust_loss(net, x, y, eps=0.0)
    assert curve["loss"][1] == pytest.approx(loss0) and curve["acc"][1] == pytest.approx(acc0)
    assert curve["loss"][0] != pytest.approx(loss0)
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items())
    assert weights.landscape_sharpness({"alpha": [-0.5, 0, 0.5], "loss": [3, 1, 2]}) == 1.5
    with pytest.raises(ValueError, match="grid"):
        weights.landscape_sharpness({"alpha": [-1, 0, 1], "loss": [3, 1, 2]}, at=0.5)


# --------------------------------------------------------------------------- AWP
def test_awp_perturbation_has_relative_norm_gamma():
    net = tiny_bn_net().train()
    x, y = batch()
    names = list(weights.layer_tensors(net))
    for gamma in (0.005, 0.01, 0.2):
        v = awp_perturbation(net, names, gamma, lambda m: F.cross_entropy(m(x), y))
        assert set(v) == set(names)
        for k in names:
            torch.testing.assert_close(v[k].norm(), gamma * net.get_parameter(k).detach().norm())


def test_awp_perturbation_ascends_the_loss():
    net = tiny_bn_net().eval()
    x, y = batch()
    names = list(weights.layer_tensors(net))
    v = awp_perturbation(net, names, 0.05, lambda m: F.cross_entropy(m(x), y))
    loss = F.cross_entropy(net(x), y).item()
    up = F.cross_entropy(weights.functional_forward(
        net, weights.add_perturbation(dict(net.named_parameters()), v), x), y).item()
    down = F.cross_entropy(weights.functional_forward(
        net, weights.add_perturbation(dict(net.named_parameters()), v, -1.0), x), y).item()
    assert up > loss > down


def test_before_update_touches_only_weight_matrices_and_keeps_bn_buffers():
    net = tiny_bn_net().train()
    x, y = batch()
    before = snapshot(net)
    hook = AWP(net, gamma=0.05)
    hook.before_update(net, x, x, y, lambda m, xn, xa, yy: F.cross_entropy(m(xa), yy))
    changed = {k for k, t in net.state_dict().items() if not torch.equal(t, before[k])}
    assert changed == {"0.weight", "5.weight"}            # no bias, no BN scale/shift/buffer
    assert all(p.grad is None for p in net.parameters())  # the proxy's backward only
    for k in changed:
        torch.testing.assert_close((net.state_dict()[k] - before[k]).norm(),
                                   0.05 * before[k].norm())
    hook.after_update(net)
    for k, t in net.state_dict().items():
        torch.testing.assert_close(t, before[k], rtol=0, atol=1e-7)


class Recorder(training.TrainingHook):
    """Records each batch the loop hands to the hooks, and the model's state at that moment."""

    def __init__(self):
        self.calls = []

    def before_update(self, model, x, x_adv, y, loss_fn):
        self.calls.append((x.clone(), x_adv.clone(), y.clone(), snapshot(model)))


def test_awp_step_matches_hand_computation():
    """w_new = (w + v) - lr * m_buf(grad(w + v) + wd (w + v)) - v, with v from grad at w."""
    net = tiny_bn_net()
    x, y = batch(32)
    gamma, lr, mom, wd = 0.02, 0.1, 0.9, 5e-4
    hand = copy.deepcopy(net)
    rec = Recorder()
    method = training.Method("pgd_at", eps=0.1, steps=2)
    cfg = training.TrainConfig(1, 16, lr, mom, wd, schedule="constant", seed=0)
    training.fit(net, (x, y), method, cfg, hooks=[rec, AWP(net, gamma)], progress=False)
    assert len(rec.calls) == 2

    hand.train()
    params = dict(hand.named_parameters())
    names = ["0.weight", "5.weight"]
    bufs = {}
    for _xb, xa, yb, state in rec.calls:
        for k, t in hand.state_dict().items():      # the loop saw the same state
            torch.testing.assert_close(t, state[k], rtol=0, atol=1e-6)
        probe = copy.deepcopy(hand)                   # gradient at w, on a throw-away copy
        g = torch.autograd.grad(F.cross_entropy(probe(xa), yb),
                                [probe.get_parameter(k) for k in names])
        v = {k: gamma * params[k].detach().norm() * gk / gk.norm() for k, gk in zip(names, g)}
        with torch.no_grad():
            for k in names:
                params[k].add_(v[k])
        grads = torch.autograd.grad(F.cross_entropy(hand(xa), yb), list(params.values()))
        with torch.no_grad():
            for (k, p), gk in zip(params.items(), grads):
                d = gk + wd * p
                bufs[k] = d.clone() if k not in bufs else mom * bufs[k] + d
                p.sub_(lr * bufs[k])
            for k in names:
                params[k].sub_(v[k])
    for k, t in net.state_dict().items():
        torch.testing.assert_close(t, hand.state_dict()[k], rtol=1e-5, atol=1e-6)


def test_awp_gamma_zero_is_plain_adversarial_training_bit_for_bit():
    x, y = batch(48)
    method = training.Method("pgd_at", eps=0.1, steps=3)
    cfg = training.TrainConfig(2, 16, 0.05, seed=0)
    states, losses = [], []
    for hooks in (lambda m: [], lambda m: [AWP(m, gamma=0.0)]):
        net = tiny_bn_net()
        torch.manual_seed(7)
        res = training.fit(net, (x, y), method, cfg, hooks=hooks(net), progress=False)
        states.append(snapshot(net))
        losses.append([r["train_loss"] for r in res.history])
    assert losses[0] == losses[1]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # ...while a positive gamma does change training
    net = tiny_bn_net()
    torch.manual_seed(7)
    training.fit(net, (x, y), method, cfg, hooks=[AWP(net, gamma=0.01)], progress=False)
    assert not torch.equal(snapshot(net)["0.weight"], states[0]["0.weight"])


def test_awp_warmup_and_state():
    net = tiny_bn_net().train()
    x, y = batch()
    hook = AWP(net, gamma=0.05, warmup_steps=1)
    before = snapshot(net)
    loss = lambda m, xn, xa, yy: F.cross_entropy(m(xa), yy)  # noqa: E731
    hook.before_update(net, x, x, y, loss)
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items())
    hook.after_update(net)
    hook.before_update(net, x, x, y, loss)
    assert not torch.equal(net.state_dict()["0.weight"], before["0.weight"])
    hook.after_update(net)
    assert hook.state_dict() == {"steps": 2}
    other = AWP(net, gamma=0.05, warmup_steps=5)
    other.load_state_dict(hook.state_dict())
    assert other.steps == 2


def test_awp_rejects_bad_setups():
    with pytest.raises(ValueError, match="nothing to perturb"):
        AWP(nn.Sequential(nn.BatchNorm1d(3)), 0.01)
    with pytest.raises(ValueError, match="gamma"):
        AWP(tiny_bn_net(), -0.1)


# --------------------------------------------------------------------------- monitoring
def test_robust_monitor_keeps_best_by_validation(tmp_path):
    from advlab.papers.awp import RobustMonitor

    net = tiny_bn_net()
    x, y = batch(12)
    best = tmp_path / "best.pt"
    mon = RobustMonitor({"val": (x, y), "test": batch(12, seed=2)}, eps=0.05, steps=2,
                        best_path=best)
    row = mon(net, 1)
    assert set(row) == {f"{s}_{k}" for s in ("val", "test")
                        for k in ("clean_acc", "rob_acc", "rob_loss")}
    assert row["val_rob_acc"] <= row["val_clean_acc"] and mon.best_epoch == 1
    state = {k: v.clone() for k, v in mon.best_state().items()}
    with torch.no_grad():                       # a model no better on val is not kept
        for p in net.parameters():
            p.zero_()
    mon.best_acc = 1.0
    mon(net, 2)
    assert mon.best_epoch == 1 and torch.equal(mon.best_state()["0.weight"], state["0.weight"])
    resumed = RobustMonitor({"val": (x, y)}, eps=0.05, best_path=best, resume=True)
    assert resumed.best_epoch == 1
    assert torch.equal(resumed.best_state()["0.weight"], state["0.weight"])
    RobustMonitor({"val": (x, y)}, eps=0.05, best_path=best, resume=False)
    assert not best.exists()                    # a fresh run forgets a stale best model
    with pytest.raises(ValueError, match="select"):
        RobustMonitor({"test": (x, y)}, eps=0.05)


def test_step_overhead_leaves_model_untouched():
    from advlab.papers.awp import step_overhead

    net = tiny_bn_net()
    x, y = batch(16)
    before = snapshot(net)
    out = step_overhead(net, training.Method("pgd_at", eps=0.1, steps=2), x, y, repeats=5)
    assert out["at_s"] > 0 and out["awp_s"] > 0
    pairs = out["pair_overheads"]
    assert len(pairs) == 5 and out["overhead"] == pytest.approx(float(np.median(pairs)))
    lo, hi = out["interval"]
    assert pairs.min() <= lo <= out["overhead"] <= hi <= pairs.max()
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items())
    with pytest.raises(ValueError, match="at least 2"):
        step_overhead(net, training.Method("pgd_at", eps=0.1, steps=2), x, y, repeats=1)


def test_perturbed_model_is_attackable_and_equals_functional_forward():
    from advlab.core import attacks

    net = tiny_bn_net().eval()
    x, y = batch()
    before = snapshot(net)
    v = weights.relative_sphere_sample(weights.layer_tensors(net), 0.2,
                                       torch.Generator().manual_seed(0))
    params = weights.add_perturbation(dict(net.named_parameters()), v)
    pm = weights.PerturbedModel(net, params)
    torch.testing.assert_close(pm(x), weights.functional_forward(net, params, x))
    x_adv = attacks.pgd(pm, x, y, 0.1, steps=3)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())


# --------------------------------------------------------------------------- lesson helpers
def plain_awp_step(model, x_adv, y, gamma, opt):
    """The notebook's from-scratch AWP step (plain torch), kept here to guard its check."""
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(F.cross_entropy(model(x_adv), y), ws)
    with torch.no_grad():
        vs = [gamma * w.norm() * g / g.norm() for w, g in zip(ws, grads)]
        for w, v in zip(ws, vs):
            w += v
    opt.zero_grad()
    F.cross_entropy(model(x_adv), y).backward()
    opt.step()
    with torch.no_grad():
        for w, v in zip(ws, vs):
            w -= v
    return vs


def test_hooked_step_equals_the_plain_torch_step_and_restores_v():
    from advlab.papers.awp import hooked_step

    net = tiny_bn_net().train()
    x, y = batch(16)
    method = training.Method("pgd_at", eps=0.1, steps=2)
    x_adv = method.adversarial(net, x, y)
    ours, lib = copy.deepcopy(net), copy.deepcopy(net)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    v_ours = plain_awp_step(ours, x_adv, y, 0.02, torch.optim.SGD(ours.parameters(), **kw))
    v_lib = hooked_step(lib, torch.optim.SGD(lib.parameters(), **kw), method, x, x_adv, y, 0.02)
    assert list(v_lib) == ["0.weight", "5.weight"]
    for a, b in zip(v_ours, v_lib.values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert a.norm() > 0
    for (k, a), b in zip(ours.named_parameters(), lib.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)
    # and a different gamma gives different weights (the check can fail)
    other = copy.deepcopy(net)
    hooked_step(other, torch.optim.SGD(other.parameters(), **kw), method, x, x_adv, y, 0.2)
    assert not torch.allclose(other[0].weight, lib[0].weight)


def test_claim_interval_paired_for_one_seed_t_interval_for_several():
    import numpy as np

    from advlab.papers.awp import claim_interval

    best = np.array([1, 1, 0, 1, 1, 0, 1, 0] * 10)  # per-image correctness, best checkpoint
    last = np.array([1, 0, 0, 0, 1, 0, 1, 1] * 10)  # ... and last: drop 100 * 1/8 = 12.5 points
    one = claim_interval([12.5], best, last)
    assert one["interval_kind"] == "95% Newcombe (paired) over 80 test images, 1 seed"
    lo, hi = one["interval"]
    assert lo < 12.5 < hi and hi < 30.0  # in points, around the paired difference
    # -1/0/1 per-image drops of two methods: a bootstrap over the images, in points
    diff = claim_interval([-10.0], best - last, np.zeros(80))
    assert "paired bootstrap over 80 test images" in diff["interval_kind"]
    assert diff["interval"][0] < 12.5 < diff["interval"][1]
    # no image changes: still an interval in points around 0 (not a fraction, not a point)
    same = claim_interval([0.0], best, best)
    assert same["interval"][0] < 0.0 < same["interval"][1] and same["interval"][1] > 1.0
    many = claim_interval([1.0, 2.0, 3.0], best, last)
    assert "t-interval over 3 seeds" in many["interval_kind"]
    assert many["interval"][0] < 2.0 < many["interval"][1]


def test_gap_interval_is_in_points_around_the_difference_of_gaps():
    import numpy as np

    from advlab.papers.awp import gap_interval

    rng = np.random.default_rng(0)
    at = {"train_pgd20": (rng.random(200) < 0.8) * 1.0, "pgd20": (rng.random(1000) < 0.5) * 1.0}
    awp_ = {"train_pgd20": (rng.random(200) < 0.6) * 1.0, "pgd20": (rng.random(1000) < 0.5) * 1.0}
    gap = 100 * ((awp_["train_pgd20"].mean() - awp_["pgd20"].mean())
                 - (at["train_pgd20"].mean() - at["pgd20"].mean()))   # about -20 points
    one = gap_interval([gap], awp_, at)
    lo, hi = one["interval"]
    assert lo < gap < hi < 0 and hi - lo < 30
    assert one["interval_kind"].startswith("95% bootstrap over 200 training and 1000 test")
    assert "t-interval over 2 seeds" in gap_interval([-20.0, -10.0], awp_, at)["interval_kind"]


def test_per_seed_table_drop_and_gap_in_points():
    import pandas as pd

    from advlab.papers.awp import drop_of, per_seed_table, spread

    rows = [{"method": m, "seed": 0, "checkpoint": c, "pgd20": acc, "gap": gap}
            for m, c, acc, gap in (("AT", "best", 0.55, 0.2), ("AT", "last", 0.50, 0.3),
                                   ("AT-AWP", "best", 0.56, 0.1), ("AT-AWP", "last", 0.57, 0.15))]
    results = pd.DataFrame(rows)
    assert drop_of(results, "AT", 0) == pytest.approx(5.0)
    t = per_seed_table(results, [0])
    assert t.loc[0, "AT-AWP drop"] == pytest.approx(-1.0)
    assert t.loc[0, "AT gap"] == pytest.approx(30.0)
    assert t.loc[0, "AT-AWP last"] == pytest.approx(57.0)
    assert spread(t, "AT drop").startswith("1 seed, no spread: AT drop 5.0")
    assert "AT worst drop" not in t  # no strong attacks ran: no worst-case columns
    results["worst"] = [0.50, 0.40, 0.52, 0.52]
    t = per_seed_table(results, [0])
    assert t.loc[0, "AT worst drop"] == pytest.approx(10.0)
    assert t.loc[0, "AT-AWP worst drop"] == pytest.approx(0.0)
    assert t.loc[0, "AT worst last"] == pytest.approx(40.0)


def test_landscape_explorer_draws_on_the_button_not_on_a_slider_move():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    from advlab.papers.awp import landscape_explorer

    nets = {"AT": tiny_bn_net().eval(), "AT-AWP": copy.deepcopy(tiny_bn_net()).eval()}
    with torch.no_grad():
        nets["AT-AWP"][5].weight.mul_(0.5)
    before = {n: snapshot(m) for n, m in nets.items()}
    x, y = batch(12)
    box = landscape_explorer(nets, x, y, 0.1, steps=1, display=False)
    first = box.curves
    assert set(first) == {"AT", "AT-AWP"} and len(first["AT"]["loss"]) == 9
    controls = box.children[0].children
    seed_slider, amax, robust, button = controls
    assert not seed_slider.continuous_update and not amax.continuous_update
    seed_slider.value, amax.value, robust.value = 3, 2.0, True
    assert box.curves is first                    # moving a control recomputes nothing
    button.click()                                # the Draw button does
    assert box.curves is not first
    assert box.curves["AT"]["alpha"][-1] == pytest.approx(2.0)
    assert box.curves["AT"]["loss"] != first["AT"]["loss"]
    for n, m in nets.items():                     # the models are left as they were
        assert all(torch.equal(t, before[n][k]) for k, t in m.state_dict().items())


def test_verdict_reading_follows_the_numbers():
    import pandas as pd

    from advlab.core.claims import Claims
    from advlab.papers.awp import read_verdicts, summary

    def diag(at_last_loss):
        return pd.DataFrame({"min test rob loss": [1.2, 1.1], "last test rob loss":
                             [at_last_loss, 1.15], "min-loss epoch": [12, 20],
                             "last train rob loss": [0.3, 0.6]}, index=["AT", "AT-AWP"])

    claims = Claims("02_awp")
    claims.check("at_overfits", "AT overfits", "", 1.0, ">=", 2.0, "pts", interval=(0.5, 1.5))
    claims.check("awp_smaller_gap", "gap", "", -5.0, "<", 0.0, "pts", kind="mechanism")
    assert "little robust overfitting to cure" in read_verdicts(claims, diag(1.21))
    text = read_verdicts(claims, diag(1.8))
    assert "shows in the loss" in text and "fitting the training set less" in text
    per_seed = pd.DataFrame({"AT drop": [1.0], "AT-AWP drop": [0.2], "AT last": [50.0],
                             "AT-AWP last": [55.0]})
    s = summary(claims, diag(1.8), per_seed, {"AT last": 0.6, "AT-AWP last": 0.3}, 0.1, 0.01)
    assert "1.20 (epoch 12) to 1.80" in s and "55.0% against AT's 50.0%" in s
    assert "0 of 1 headline claims and 1 of 2 claims" in s


def test_pick_on_validation_tunes_every_arm_alike():
    from advlab.papers.awp import pick_on_validation

    val = {("AT", 5e-4): 0.49, ("AT", 5e-3): 0.51, ("AT-AWP", 0.005): 0.55,
           ("AT-AWP", 0.01): 0.53}
    assert pick_on_validation(val) == {"AT": 5e-3, "AT-AWP": 0.005}
    with pytest.raises(ValueError, match="same number of candidates"):
        pick_on_validation({("AT", 5e-4): 0.5, ("AT-AWP", 0.005): 0.5, ("AT-AWP", 0.01): 0.6})


def test_evaluate_worst_case_counts_every_attack_on_the_nested_subset():
    pytest.importorskip("autoattack")
    from advlab.core import data
    from advlab.papers.awp import evaluate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()
    x, _ = batch(60)
    y = torch.arange(60) % 10
    idx = data.stratified_indices(y, 4, 0)
    aa_idx = data.stratified_indices(y, 2, 0)
    assert torch.isin(aa_idx, idx).all()           # one seed: nested subsets
    strong = dict(idx=idx, aa_idx=aa_idx, steps=5, restarts=2, aa_version="lite", aa_iter=3,
                  aa_targets=1, seed=0)
    row, per_image = evaluate(net, x, y, x[:6], y[:6], 0.05, 3, strong)
    assert per_image["pgd20"].shape == (60,) and per_image["worst"].shape == (len(aa_idx),)
    assert row["worst"] == pytest.approx(per_image["worst"].mean())
    # the worst case is never above any single attack on the same images
    assert row["worst"] <= min(row["pgd20_aa_subset"], row["autoattack"]) + 1e-9
    assert set(per_image["worst"].tolist()) <= {0.0, 1.0}


def test_run_metrics_leaves_out_what_was_not_measured():
    import pandas as pd

    from advlab.papers.awp import run_metrics

    table = pd.DataFrame([{"method": "AT", "checkpoint": "best", "pgd20": 0.5, "autoattack": None},
                          {"method": "AT", "checkpoint": "last", "pgd20": 0.4, "autoattack": 0.3}]
                         ).set_index(["method", "checkpoint"]).astype(float)
    m = run_metrics(table, pd.DataFrame({"AT last": [40.0]}), {"AT last": 0.1})
    assert m["at_last_autoattack"] == 0.3 and "at_best_autoattack" not in m
    assert all(v == v for v in m.values())        # no NaN reaches metrics.json


def test_sharpness_over_directions_matches_the_full_landscape_of_each_draw():
    from advlab.papers.awp import sharpness_over_directions

    net = tiny_bn_net().eval()
    x, y = batch(12)
    before = snapshot(net)
    out = sharpness_over_directions({"m": net}, x, y, 0.05, [3, 4], at=0.5, steps=2)
    assert len(out["m"]) == 2 and out["m"][0] != out["m"][1]  # two draws, two values
    d = weights.filter_normalized_direction(net, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)  # the same PGD random starts for the helper and the check
    out0 = sharpness_over_directions({"m": net}, x, y, 0.05, [3], at=0.5, steps=2)["m"][0]
    torch.manual_seed(0)
    curve = weights.weight_loss_landscape(net, x, y, d, [-0.5, 0.0, 0.5], 0.05, steps=2)
    assert out0 == pytest.approx(weights.landscape_sharpness(curve, 0.5))
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items())
