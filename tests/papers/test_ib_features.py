"""Unit tests of advlab.papers.ib_features (IB distillation, split rules, CW / NRF)."""
import pytest
import torch
import torch.nn.functional as F

from advlab.core.models import create_model
from advlab.papers import ib_features as ib


def _net(seed=0):
    torch.manual_seed(seed)
    model = create_model("small_cnn", 3, 1, width=4, image_size=8).eval()
    return model, ib.SplitNet(model, 3)


def _data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_split_net_equals_model_and_leaves_features_untouched():
    model, net = _net()
    x, _ = _data()
    z = net.features(x)
    z_before = z.clone()
    assert torch.allclose(net.head(z), model(x), atol=1e-6)
    assert torch.equal(z, z_before)          # out-of-place ReLUs in the head
    assert z.shape == (6, 8, 4, 4)            # conv2 (2 x width) pre-ReLU, 8 / 2


def test_zero_noise_gives_the_original_prediction():
    model, net = _net()
    x, y = _data()
    z = net.features(x).detach()
    lam = torch.zeros(*z.shape[:2], 1, 1)
    loss, ce, _ = ib.ib_loss(net.head, z, y, lam, torch.zeros_like(lam))
    assert torch.allclose(ce, F.cross_entropy(model(x), y), atol=1e-6)


def test_kl_term_matches_hand_value_and_is_zero_at_natural_variance():
    z = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]]]])            # var (unbiased) = 4/3
    v = z.var()
    lam_match = torch.log(torch.expm1(v.sqrt())).view(1, 1, 1, 1)   # softplus(lam) = std
    head = lambda t: t.flatten(1)[:, :2]                      # noqa: E731
    _, _, kl = ib.ib_loss(head, z, torch.tensor([0]), lam_match, torch.zeros(1, 1, 1, 1))
    assert abs(float(kl)) < 1e-6
    lam0 = torch.zeros(1, 1, 1, 1)                            # sigma = log 2
    s2 = torch.log(torch.tensor(2.0)) ** 2
    want = 0.5 * (v / s2 + torch.log(s2 / v) - 1)
    _, _, kl0 = ib.ib_loss(head, z, torch.tensor([0]), lam0, torch.zeros(1, 1, 1, 1))
    assert torch.allclose(kl0, want, atol=1e-6)


def test_distill_freezes_nothing_permanently_and_changes_no_weight():
    model, net = _net()
    model.train()
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = ib.distill(net, x, y, iters=5, generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training                                      # mode restored
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert d.sigma.shape == (6, 8, 1, 1) and bool((d.sigma >= 0).all())
    assert len(d.loss) == 5


def test_distill_keeps_bn_buffers():
    torch.manual_seed(0)
    model = create_model("small_cnn", 3, 1, width=4, image_size=8, bn=True).train()
    net = ib.SplitNet(model, 4)                                # after conv2's BN
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ib.distill(net, x, y, iters=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_split_rules_on_a_hand_example():
    sigma = torch.tensor([[1.0, 3.0, 0.5], [2.5, 0.1, 1.2]]).view(2, 3, 1, 1)
    var = torch.tensor([[1.0, 4.0, 0.1], [0.5, 0.01, 2.0]]).view(2, 3, 1, 1)
    glob = ib.split_units(sigma, var, "global")                # sigma^2 > 4
    assert glob.view(2, 3).tolist() == [[False, True, False], [True, False, False]]
    per = ib.split_units(sigma, var, "per_sample")             # > 4 and > 2
    assert per.view(2, 3).tolist() == [[False, True, False], [True, False, False]]
    ratio = ib.split_units(sigma, var, "ratio", tau=1.0)       # sigma / sqrt(var) > 1
    assert ratio.view(2, 3).tolist() == [[False, True, True], [True, False, False]]
    with pytest.raises(ValueError):
        ib.split_units(sigma, var, "nope")


def test_random_mask_has_the_same_count_per_sample():
    m = torch.zeros(4, 10, 1, 1)
    m[0, :3] = 1
    m[2, :7] = 1
    r = ib.random_mask_like(m, torch.Generator().manual_seed(0))
    assert r.sum(dim=(1, 2, 3)).tolist() == m.sum(dim=(1, 2, 3)).tolist()
    assert not torch.equal(r, m)


def test_cw_and_nrf_stay_in_the_box_and_empty_mask_is_cw():
    model, net = _net()
    x, y = _data()
    cw, found = ib.min_norm_attack(net, x, y, None, c=5.0, steps=12)
    empty = torch.zeros(6, 8, 1, 1)
    nrf0, _ = ib.min_norm_attack(net, x, y, empty, c=5.0, steps=12)
    assert torch.equal(cw, nrf0)
    nrf, _ = ib.min_norm_attack(net, x, y, torch.ones(6, 8, 1, 1), c=5.0, steps=12)
    for xa in (cw, nrf):
        assert xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        wrong = model(cw).argmax(1) != y
    assert bool((wrong == found).all() | (~found).all() | wrong[found].all())
    assert torch.equal(cw[~found], x[~found])                  # failure returns the clean x
    assert all(p.requires_grad for p in model.parameters())


def test_nrf_term_adds_a_unit_push_on_the_masked_channels():
    model, net = _net()
    x, _ = _data()
    y = model(x).argmax(1)                     # correctly classified: the margin is positive
    grads = {}
    for name, mask in (("cw", None), ("nrf", torch.ones(6, 8, 1, 1)),
                       ("empty", torch.zeros(6, 8, 1, 1))):
        xa = x.clone().requires_grad_(True)
        cost, _, _ = ib.attack_cost(net, xa, x, y, mask, c=5.0, gamma=1.0)
        (grads[name],) = torch.autograd.grad(cost, xa)
    assert torch.equal(grads["cw"], grads["empty"])
    assert not torch.allclose(grads["cw"], grads["nrf"])
    # at xa the term's value is the norm of the masked margin gradient
    xa = x.clone().requires_grad_(True)
    z = net.features(xa)
    marg = ib._margin(net.head(z), y)
    (g,) = torch.autograd.grad(-marg.sum(), z)
    c_cw, _, _ = ib.attack_cost(net, x, x, y, None, c=5.0)
    c_nrf, _, _ = ib.attack_cost(net, x, x, y, torch.ones(6, 8, 1, 1), c=5.0, gamma=1.0)
    assert torch.allclose(c_cw - c_nrf, g.norm(), atol=1e-5)


def test_success_curve_and_median_l2_hand_values():
    correct = torch.tensor([0.0, 0.0, 1.0, 0.0])
    clean = torch.tensor([1.0, 1.0, 1.0, 0.0])
    l2 = torch.tensor([0.5, 2.0, 0.0, 0.0])
    assert ib.success_curve(correct, l2, clean, [0.1, 1.0, 3.0]).tolist() == \
        pytest.approx([0.0, 1 / 3, 2 / 3])
    assert ib.median_l2(correct, l2, clean) == pytest.approx(0.5)   # torch's lower median


def test_table1_agreement_on_fooled_images():
    y = torch.tensor([0, 1, 2, 0])
    y_adv = torch.tensor([1, 1, 0, 2])                         # images 0, 2, 3 fooled
    pred = {"full": y_adv, "robust": torch.tensor([0, 1, 2, 2]),
            "non_robust": torch.tensor([1, 0, 0, 1])}
    dist = {"global": {"pred": pred, "frac_robust": 0.25}}
    rows = ib.table1_rows("m", dist, dist, y, y_adv, rules=("global",))
    adv = rows[1]
    assert adv["n_fooled"] == 3
    assert adv["nr_agrees_adv"] == pytest.approx(2 / 3)
    assert adv["r_keeps_true"] == pytest.approx(2 / 3)
    assert adv["r_agrees_adv"] == pytest.approx(1 / 3)


def test_unit_explorer_updates_headless():
    _, net = _net()
    x, y = _data()
    res = ib.correspondence(net, x, y, iters=2, batch_size=3)
    w = ib.unit_explorer({("m", "clean"): res}, y, ["a", "b", "c"], display=False)
    html = w.children[2]
    first = html.value
    w.children[1].value = 4
    assert html.value != first and "non-robust part" in html.value


def test_paired_interval_contains_the_difference_and_stays_in_range():
    a = torch.tensor([1.0, 0.0, 1.0, 1.0] * 10)
    lo, hi = ib.paired_interval(a, a)
    assert lo <= 0.0 <= hi and hi - lo < 0.2   # identical arms: a narrow interval around 0
    b = torch.tensor([0.0, 0.0, 1.0, 0.0] * 10)
    lo, hi = ib.paired_interval(a, b)
    assert lo <= 0.5 <= hi and -1 <= lo and hi <= 1
    drops = torch.tensor([0.3, 0.1, 0.2, 0.25])   # not 0/1: the paired bootstrap
    lo, hi = ib.paired_interval(drops, torch.zeros(4))
    assert lo <= drops.mean().item() <= hi


def test_the_per_model_claims_declared_are_those_the_notebook_makes():
    """The notebook declares ``<id>_<model>`` for the paper's two models (so leaving one out of
    the `checkpoints` knob shows its claims as not run): the list must match its checks."""
    import re

    from advlab.pipeline import stages

    from ..conftest import ROOT

    src = stages.notebook_source(ROOT / "notebooks" / "06_ib_features.ipynb")
    direct = set(re.findall(r'claims\.check\(f"(\w+)_\{name\}"', src))
    gaps = set(re.findall(r'attack_gap\(name, "[^"]+", "[^"]+", "(\w+)"', src))
    assert direct and gaps and direct | gaps == set(ib.PER_MODEL_CLAIMS)
    assert "ib.PER_MODEL_CLAIMS" in src
