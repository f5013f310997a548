"""Unit tests of advlab.regional (Ozbulak et al. 2020): masks, norms and the masked CE-sign
attack with per-image stopping.  Tiny random models and images; the whole file runs in seconds."""
import math

import pytest
import torch
from torch import nn

from advlab.papers import regional


def _model(seed, hidden=32):
    """A tiny MLP on 8x8 images; models with different seeds share a base so they mostly agree."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 5))
    with torch.no_grad():
        net[1].weight.mul_(4)   # spread the random predictions over the classes
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p)) if seed else None
    return net.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread-sync overhead on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup():
    """Two tiny MLPs on 8x8 images, 12 images correct for both (labels = both predictions
    agree), and random targets."""
    g, h = _model(0), _model(1)
    torch.manual_seed(2)
    x = torch.rand(400, 1, 8, 8)
    with torch.no_grad():
        pg, ph = g(x).argmax(1), h(x).argmax(1)
    keep = (pg == ph).nonzero().flatten()[:12]
    x, y = x[keep], pg[keep]
    t = regional.random_targets(y, 5, seed=0)
    return g, h, x, y, t


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("family", ["center", "frame", "random"])
@pytest.mark.parametrize("frac", [0.16, 0.28, 0.45])
@pytest.mark.parametrize("size", [28, 224])
def test_mask_fraction_within_rounding(family, frac, size):
    m = regional.region_masks(family, frac, 3, size, size, seed=0)
    assert m.shape == (3, 1, size, size)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    actual = m[0].mean().item()
    hw = size * size
    if family == "random":   # exact count: within one pixel of the budget
        assert abs(actual - frac) <= 0.5 / hw + 1e-9
    else:                    # nearest square: |s^2 - area| <= s + 1/2
        area = frac * hw if family == "center" else (1 - frac) * hw
        side = math.isqrt(round(m[0].sum().item() if family == "center" else hw - m[0].sum().item()))
        assert abs(side * side - area) <= side + 0.5
        assert abs(actual - frac) < 0.03


def test_center_and_frame_geometry():
    c = regional.center_mask(28, 28, 0.16)[0, 0]
    assert c.sum() == 121 and c[8:19, 8:19].all()          # side 11, 1 px off-centre
    f = regional.frame_mask(28, 28, 0.16)[0, 0]
    assert f.sum() == 784 - 676 and f[0].all() and not f[14, 14]   # inner side 26
    assert regional.region_masks("none", 1.0, 2, 28, 28).all()


def test_random_masks_reproducible_and_distinct():
    a = regional.random_masks(4, 28, 28, 0.28, seed=7)
    b = regional.random_masks(4, 28, 28, 0.28, seed=7)
    c = regional.random_masks(4, 28, 28, 0.28, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])       # one draw per image


def test_unknown_family_raises():
    with pytest.raises(ValueError, match="allowed"):
        regional.region_masks("circle", 0.2, 1, 8, 8)


# --------------------------------------------------------------------------- norms
def test_lp_norms_hand_computed():
    x0 = torch.zeros(2, 3, 4, 4)
    x = x0.clone()
    x[0, :, 0, 0] = 0.1            # one location, three channels
    x[1, 0, 1, 1], x[1, 2, 3, 2] = 0.3, -0.4
    n = regional.lp_norms(x, x0)
    assert n["l0"].tolist() == pytest.approx([1 / 16, 2 / 16])     # locations, not entries
    assert n["l2"].tolist() == pytest.approx([math.sqrt(3 * 0.01), 0.5])
    assert n["linf"].tolist() == pytest.approx([0.1, 0.4])


def test_random_targets_differ_and_reproducible():
    y = torch.arange(10).repeat(20)
    t = regional.random_targets(y, 10, seed=3)
    assert (t != y).all() and t.min() >= 0 and t.max() <= 9
    assert torch.equal(t, regional.random_targets(y, 10, seed=3))
    assert len(t.unique()) == 10


# --------------------------------------------------------------------------- the attack
@pytest.mark.parametrize("family", ["center", "frame", "random", "none"])
def test_perturbation_zero_outside_mask(setup, family):
    g, h, x, y, t = setup
    m = regional.region_masks(family, 0.28, len(x), 8, 8, seed=1)
    res = regional.regional_attack(g, x, y, t, m, {"h": h}, step=0.05, max_steps=40,
                                   track_source=True)
    for rec in (res.oracle["h"], res.source):
        d = rec.x_adv - x
        assert (d * (1 - m)).abs().max() == 0
        assert rec.x_adv.min() >= 0 and rec.x_adv.max() <= 1
    if family != "none":
        assert (res.oracle["h"].x_adv - x).abs().sum() > 0


def test_stops_when_target_flips(setup):
    """Each image stops at the first step where h's label leaves y: at its stop step h is
    fooled, and one step earlier (re-run with max_steps = stop - 1) it was not."""
    g, h, x, y, t = setup
    m = torch.ones(1, 1, 8, 8)
    res = regional.regional_attack(g, x, y, t, m, h, step=0.02, max_steps=60)
    rec = res.oracle["target"]
    assert rec.stopped.any()
    with torch.no_grad():
        assert (h(rec.x_adv[rec.stopped]).argmax(1) != y[rec.stopped]).all()
    for i in rec.stopped.nonzero().flatten().tolist():
        n = int(rec.steps[i])
        before = regional.regional_attack(g, x[i:i + 1], y[i:i + 1], t[i:i + 1], m, h,
                                          step=0.02, max_steps=n - 1).oracle["target"]
        assert not before.stopped.item()
        with torch.no_grad():
            assert h(before.x_adv).argmax(1).item() == y[i].item()
        # the untargeted success on h need not be the source's target t
    # L-inf of a stopped image is at most steps * a
    linf = regional.lp_norms(rec.x_adv, x)["linf"]
    assert (linf <= rec.steps * 0.02 + 1e-6).all()


def test_frozen_image_does_not_move(setup):
    """After an image's stop, later steps leave it unchanged: its record with max_steps = 60
    equals the one with max_steps = its stop step, and the internal iterate stops moving."""
    g, h, x, y, t = setup
    m = torch.ones(1, 1, 8, 8)
    long = regional.regional_attack(g, x, y, t, m, h, step=0.02, max_steps=60).oracle["target"]
    first = int(long.steps[long.stopped].min())
    short = regional.regional_attack(g, x, y, t, m, h, step=0.02,
                                     max_steps=first).oracle["target"]
    done = short.stopped
    assert done.any()
    assert torch.equal(long.x_adv[done], short.x_adv[done])
    assert (long.steps[done] == first).all()
    res = regional.regional_attack(g, x, y, t, m, h, step=0.02, max_steps=60)
    rec = res.oracle["target"]
    assert torch.equal(res.x_final[rec.stopped], rec.x_adv[rec.stopped])   # did not move on
    assert torch.equal(res.x_final[rec.stopped], long.x_adv[rec.stopped])


def test_only_active_images_get_gradients(setup):
    """The cost counter equals the sum over images of their stop steps (finished images get
    no gradient), and equals B * N when nothing ever stops."""
    g, h, x, y, t = setup
    m = torch.ones(1, 1, 8, 8)
    res = regional.regional_attack(g, x, y, t, m, h, step=0.02, max_steps=60)
    assert res.active_steps == int(res.oracle["target"].steps.sum())
    zero = torch.zeros(1, 1, 8, 8)   # an empty mask never moves anything
    res0 = regional.regional_attack(g, x, y, t, zero, h, step=0.02, max_steps=5)
    assert res0.active_steps == len(x) * 5 and not res0.oracle["target"].stopped.any()


def test_targeted_descent_sign(setup):
    """The update descends CE toward t: the source's loss on t goes down."""
    g, h, x, y, t = setup
    m = torch.ones(1, 1, 8, 8)
    res = regional.regional_attack(g, x, y, t, m, step=0.01, max_steps=5, track_source=True)
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(g(res.source.x_adv), t) < ce(g(x), t)


def test_shared_trajectory_equals_separate_pairs(setup):
    """Several targets in one call give the same records as one call per target."""
    g, h, x, y, t = setup
    h2 = _model(3)
    with torch.no_grad():
        ok = (h2(x).argmax(1) == y)
    x, y, t = x[ok], y[ok], t[ok]
    m = regional.region_masks("random", 0.45, len(x), 8, 8, seed=0)
    x, y, t, m = x.double(), y, t, m.double()
    g, h, h2 = g.double(), h.double(), h2.double()
    both = regional.regional_attack(g, x, y, t, m, {"h": h, "h2": h2}, step=0.02,
                                    max_steps=60, track_source=True)
    for name, model in (("h", h), ("h2", h2)):
        one = regional.regional_attack(g, x, y, t, m, {name: model}, step=0.02,
                                       max_steps=60).oracle[name]
        assert torch.equal(one.steps, both.oracle[name].steps)
        assert torch.allclose(one.x_adv, both.oracle[name].x_adv)
    src = regional.regional_attack(g, x, y, t, m, step=0.02, max_steps=60,
                                   track_source=True).source
    assert torch.equal(src.steps, both.source.steps)


def test_fixed_budget_stop_is_source_reaching_t(setup):
    g, h, x, y, t = setup
    m = torch.ones(1, 1, 8, 8)
    src = regional.regional_attack(g, x, y, t, m, step=0.02, max_steps=80,
                                   track_source=True).source
    assert src.stopped.any()
    with torch.no_grad():
        assert (g(src.x_adv[src.stopped]).argmax(1) == t[src.stopped]).all()
    flipped = regional.fixed_budget_transfer(src.x_adv, y, h)
    assert flipped.dtype == torch.bool and flipped.shape == y.shape


def test_bad_inputs(setup):
    g, h, x, y, t = setup
    m = torch.ones(1, 1, 8, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="differ"):
            regional.regional_attack(g, x, y, y, m, h)
    with pytest.raises(ValueError, match="nothing to stop"):
        regional.regional_attack(g, x, y, t, m)


def test_model_mode_restored(setup):
    g, h, x, y, t = setup
    g.train()
    regional.regional_attack(g, x, y, t, torch.ones(1, 1, 8, 8), h, step=0.02, max_steps=3)
    assert g.training and not h.training


def test_paired_lp_test_uses_only_pairs_where_both_succeed():
    import pandas as pd

    rows = []
    for img in range(6):
        for mask, l2, ok in (("none", 2.0, True), ("center_16", 1.0, True)):
            rows.append({"source": "a", "target": "b", "image": img, "mask": mask,
                         "success": ok, "l2": l2})
    rows.append({"source": "a", "target": "b", "image": 6, "mask": "none", "success": False,
                 "l2": 100.0})                        # whole image failed: not paired
    rows.append({"source": "a", "target": "b", "image": 6, "mask": "center_16",
                 "success": True, "l2": 100.0})
    rows.append({"source": "a", "target": "b", "image": 7, "mask": "center_16",
                 "success": True, "l2": 50.0})         # no whole-image record: not paired
    res = regional.paired_lp_test(pd.DataFrame(rows), "center_16", "l2")
    assert res["n_pairs"] == 6 and res["n_images"] == 6
    assert res["median_ratio"] == pytest.approx(0.5)
    assert res["p_lower"] < 0.05 < res["p_higher"]
    empty = regional.paired_lp_test(pd.DataFrame(rows), "frame_16", "l2")
    assert empty["n_pairs"] == 0 and math.isnan(empty["median_ratio"])


def test_region_picker_builds_headless(setup):
    pytest.importorskip("ipywidgets")
    g, h, x, y, t = setup
    w = regional.region_picker({"g": g, "h": h}, x, y, t, [str(i) for i in range(5)],
                               {"center": [0.28], "random": [0.28]}, max_steps=5, display=False)
    assert w.children[0].value == "center"
    first = dict(w.result)
    assert first["mask"] == "center_28" and first["source"] == "g" and first["target"] == "h"
    family, budget, index = w.children[:3]
    assert not budget.continuous_update and not index.continuous_update
    family.value = "none"       # the whole image: every pixel may move
    assert w.result["mask"] == "none" and w.result != first
    index.value = 1
    assert w.result["index"] == 1


# --------------------------------------------------------------------------- the experiment
def test_region_set_names_seeds_and_fractions():
    masks = {"center": [0.28], "random": [0.28, 0.45]}
    mask_list, names, tensors, actual = regional.region_set(masks, 3, 8, 8, seed=5)
    assert names == ["none", "center_28", "random_28", "random_45"]
    assert mask_list[0] == ("none", 1.0) and actual["none"] == 1.0
    # region k is drawn with seed + 101 k (the notebook's regions before the refactor)
    assert torch.equal(tensors["random_45"], regional.region_masks("random", 0.45, 3, 8, 8,
                                                                   seed=5 + 303))
    assert actual["random_28"] == pytest.approx(round(0.28 * 64) / 64)


def test_select_images_keeps_only_images_every_model_gets_right():
    g, h = _model(0), _model(1)
    torch.manual_seed(3)
    x = torch.rand(60, 1, 8, 8)
    y = g(x).argmax(1).detach()  # g is right on all; h only where it agrees
    idx, n_correct = regional.select_images({"g": g, "h": h}, x, y, n=5, seed=0)
    agree = (h(x).argmax(1) == y)
    assert n_correct == int(agree.sum()) and len(idx) == min(5, n_correct)
    assert bool(agree[idx].all()) and len(set(idx.tolist())) == len(idx)


def test_attack_all_pairs_equals_one_attack_per_pair(setup):
    g, h, x, y, t = setup
    masks = {"center": [0.28]}
    mask_list, names, tensors, _ = regional.region_set(masks, len(x), 8, 8, seed=0)
    records, store, _ = regional.attack_all_pairs({"g": g, "h": h}, x, y, t, mask_list, names,
                                                  tensors, step=0.05, max_steps=15,
                                                  progress=False)
    assert len(records) == 2 * len(names) * len(x)
    for src, tgt, a, b in (("g", "h", g, h), ("h", "g", h, g)):
        for k, name in enumerate(names):
            one = regional.regional_attack(a, x, y, t, tensors[name], b, 0.05, 15)
            rows = records[(records["source"] == src) & (records["mask"] == name)]
            assert rows["success"].tolist() == one.oracle["target"].stopped.tolist()
            assert rows["steps"].tolist() == one.oracle["target"].steps.tolist()
            got = store[(src, tgt)].x_adv[k * len(x):(k + 1) * len(x)]
            assert torch.allclose(got, one.oracle["target"].x_adv)


def test_paired_long_keeps_only_pairs_where_both_succeeded():
    import pandas as pd

    base = {"source": "g", "target": "h", "l0": 1.0, "l2": 2.0, "linf": 0.5}
    rows = [{**base, "image": 0, "mask": "none", "success": True},
            {**base, "image": 1, "mask": "none", "success": True},
            {**base, "image": 0, "mask": "center_16", "success": True, "l2": 1.0},
            {**base, "image": 1, "mask": "center_16", "success": False},
            {**base, "image": 2, "mask": "center_16", "success": True}]
    long = regional.paired_long(pd.DataFrame(rows), ["center_16", "frame_16"])
    l2 = long[long["norm"] == "l2"].set_index("attack")["value"]
    assert l2.to_dict() == {"regional": 1.0, "whole image": 2.0}   # image 0 only
    assert set(long["mask"]) == {"center_16"}


def test_worst_value_is_nan_when_a_region_has_no_pairs():
    assert regional.worst_value([0.1, 0.3]) == 0.3
    assert math.isnan(regional.worst_value([0.1, float("nan")]))
