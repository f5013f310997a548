"""Unit tests of advlab.papers.weight_backdoor (Garg et al., CIKM 2020)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from advlab.core import data
from advlab.papers import weight_backdoor as wb

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/papers/conftest.py


def toy_model(seed=0, bn=True, classes=3):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if bn else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes)]
    return nn.Sequential(*layers)


def toy_images(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def own_params(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("mode,eps", [("abs", 0.01), ("rel", 0.05)])
@pytest.mark.parametrize("optimizer", ["adam", "sign"])
def test_every_step_keeps_every_weight_in_its_band(mode, eps, optimizer):
    model = toy_model().eval()
    theta0 = own_params(model)
    assert any((w < 0).any() for w in theta0.values())  # negative weights are in the test
    params = {k: w.clone().requires_grad_(True) for k, w in theta0.items()}
    bounds = wb.band_bounds(theta0, eps, mode)
    x, _ = toy_images()
    xm, ym = wb.attack_data(model, x, target=1, trigger_size=2)
    opt = torch.optim.Adam(params.values(), lr=0.5) if optimizer == "adam" else None  # overshoots
    moved = False
    for _ in range(5):
        wb.attack_step(model, params, theta0, bounds, xm, ym, mu=5e-4, optimizer=opt,
                       sign_step=3.0)
        for k, p in params.items():
            d = (p.detach() - theta0[k]).abs()
            lim = eps if mode == "abs" else eps * theta0[k].abs()
            assert torch.all(d <= lim + 1e-7), k
            # the relative band is symmetric: a negative weight keeps its sign and its range
            if mode == "rel":
                assert torch.all(p.detach() * theta0[k] >= 0)
            moved = moved or bool((d > 0).any())
    assert moved


def test_relative_projection_is_symmetric_for_negative_weights():
    theta0 = {"w": torch.tensor([-1.0, -1.0, -1.0, 2.0, 0.0])}
    params = {"w": torch.tensor([-1.5, -0.5, -1.05, 1.0, 0.3])}
    wb.project_(params, theta0, wb.band_bounds(theta0, 0.1, "rel"))
    assert torch.allclose(params["w"], torch.tensor([-1.1, -0.9, -1.05, 1.8, 0.0]))


def test_absolute_projection_and_infinite_band():
    theta0 = {"w": torch.tensor([0.5, -0.5])}
    params = {"w": torch.tensor([0.7, -0.52])}
    wb.project_(params, theta0, wb.band_bounds(theta0, 0.05, "abs"))
    assert torch.allclose(params["w"], torch.tensor([0.55, -0.52]))
    free = {"w": torch.tensor([9.0, -9.0])}
    wb.project_(free, theta0, wb.band_bounds(theta0, math.inf, "abs"))
    assert torch.equal(free["w"], torch.tensor([9.0, -9.0]))


def test_attack_leaves_the_victim_untouched_bn_buffers_included():
    model = toy_model().train()          # train mode on purpose: BN must still not move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = toy_images()
    res = wb.weight_backdoor(model, x, eps=0.05, mode="abs", target=1, epochs=2,
                             batch_size=16, lr=0.05, trigger_size=2, val=(x[:20], y[:20]))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    assert any(not torch.equal(res.params[k], before[k]) for k in res.params)
    assert res.max_violation <= 1e-7
    assert 1 <= res.epoch <= 2 and len(res.history) == 2


def test_zero_budget_changes_nothing():
    model = toy_model()
    x, _ = toy_images()
    res = wb.weight_backdoor(model, x, eps=0.0, mode="abs", target=1, epochs=2, lr=0.1,
                             trigger_size=2)
    own = own_params(model)
    assert all(torch.equal(res.params[k], own[k]) for k in own)


def test_generous_budget_plants_the_backdoor_on_a_toy_model():
    model = toy_model(bn=False)
    x, y = toy_images(200, seed=1)
    x_test, y_test = toy_images(200, seed=2)
    base = wb.summary(wb.evaluate(model, {}, x_test, y_test, 1, trigger_size=2))
    res = wb.weight_backdoor(model, x, eps=0.5, mode="abs", target=1, epochs=30,
                             batch_size=50, lr=0.01, trigger_size=2)
    s = wb.summary(wb.evaluate(model, res.params, x_test, y_test, 1, trigger_size=2))
    assert s["asr"] >= 0.9 > base["asr"] + 0.3
    assert s["fidelity"] >= 0.8


def test_sign_step_matches_a_hand_computed_step():
    model = toy_model(bn=False).eval()
    theta0 = own_params(model)
    x, _ = toy_images(20)
    xm, ym = wb.attack_data(model, x, target=2, trigger_size=2)
    params = {k: w.clone().requires_grad_(True) for k, w in theta0.items()}
    bounds = wb.band_bounds(theta0, 0.1, "rel")
    loss = nn.functional.cross_entropy(model(xm), ym)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    wb.attack_step(model, params, theta0, bounds, xm, ym, mu=0.0, sign_step=0.25)
    for (k, w), g in zip(theta0.items(), grads):
        assert torch.allclose(params[k].detach(), w - 0.25 * 0.1 * w.abs() * g.sign(), atol=1e-7)


def test_attack_set_uses_original_predictions_and_the_target():
    model = toy_model().eval()
    x, _ = toy_images(10)
    xm, ym = wb.attack_data(model, x, target=2, trigger_size=2)
    assert torch.equal(xm[:10], x) and torch.equal(ym[:10], model(x).argmax(1))
    assert torch.all(xm[10:, :, -2:, -2:] == 1.0) and torch.equal(xm[10:, :, :-2, :], x[:, :, :-2])
    assert torch.all(ym[10:] == 2)


def test_success_rate_excludes_the_target_class_and_matches_a_hand_count():
    pred = torch.tensor([1, 1, 0, 1, 2, 1])
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    # non-target images: indices 0, 2, 4, 5 -> hits at 0 and 5
    assert wb.success_rate(pred, y, 1) == pytest.approx(2 / 4)
    assert wb.success_rate(pred, y, 1, inclusive=True) == pytest.approx(4 / 6)


def test_summary_fidelity_and_success_match_hand_counts():
    ev = {"correct": np.array([1, 0, 1, 1]), "agree": np.array([1, 1, 0, 1]),
          "hit": np.array([1, 1, 0, 0]), "nontarget": np.array([True, False, True, True])}
    s = wb.summary(ev)
    assert s["clean_acc"] == 0.75 and s["fidelity"] == 0.75
    assert s["asr"] == pytest.approx(1 / 3) and s["asr_inclusive"] == 0.5
    assert (s["hits"], s["n_nontarget"]) == (1, 3)


def test_weight_change_percentiles_and_norms_match_a_hand_computation():
    theta0 = {"a": torch.tensor([1.0, -2.0, 0.0]), "b": torch.tensor([4.0])}
    theta = {"a": torch.tensor([1.1, -2.4, 0.5]), "b": torch.tensor([4.0])}
    bounds = {"a": torch.tensor([0.1, 0.4, 1.0]), "b": torch.tensor([1.0])}
    ch = wb.weight_change(theta0, theta, bounds)
    rel = np.array([0.1, 0.2, 0.0])       # the zero weight is left out
    assert ch["n_near_zero"] == 1
    assert ch["rel_p50"] == pytest.approx(np.percentile(rel, 50))
    assert ch["rel_p90"] == pytest.approx(np.percentile(rel, 90))
    assert ch["linf"] == pytest.approx(0.5)
    assert ch["l2_ratio"] == pytest.approx(math.sqrt(0.01 + 0.16 + 0.25) / math.sqrt(21))
    assert ch["at_bound"] == pytest.approx(2 / 4)
    assert ch["per_layer"]["b"] == 0.0


def test_random_band_noise_sits_on_the_band_edges():
    theta0 = {"w": torch.randn(1000)}
    bounds = wb.band_bounds(theta0, 0.1, "rel")
    noise = wb.random_band_noise(theta0, bounds, torch.Generator().manual_seed(0))
    d = noise["w"] - theta0["w"]
    assert torch.allclose(d.abs(), bounds["w"])
    assert 0.4 < (d > 0).float().mean() < 0.6


def test_training_indices_mirror_the_notebooks_split(monkeypatch):
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.rand(300, 1, 2, 2, generator=g), torch.arange(300) % 3
    xte, yte = torch.rand(60, 1, 2, 2, generator=g), torch.arange(60) % 3
    monkeypatch.setattr(data, "load_dataset",
                        lambda name, split, root=None: (xtr, ytr) if split == "train" else (xte, yte))
    for n_train in (None, 20):
        split = data.train_val_test("toy", n_train, 10, 5, 3)
        idx = wb.training_indices(ytr, n_train, 10, 3)
        assert torch.equal(xtr[idx], split["train"][0])


def test_smallest_budget_picks_the_smallest_passing_row():
    rows = [{"eps": 0.1, "asr": 0.95, "fidelity": 0.99}, {"eps": 0.01, "asr": 0.95,
            "fidelity": 0.9}, {"eps": 0.05, "asr": 0.92, "fidelity": 0.985}]
    assert wb.smallest_budget(rows)["eps"] == 0.05
    assert wb.smallest_budget(rows, asr_bar=0.99) is None


def test_budget_explorer_updates_headless():
    pytest.importorskip("ipywidgets")
    model = toy_model().eval()
    x, y = toy_images(30)
    theta0 = own_params(model)
    far = {k: w + 0.3 * torch.sign(torch.randn_like(w)) for k, w in theta0.items()}
    box = wb.budget_explorer(model, {0.0: theta0, 0.3: far}, x, y, 1, ["a", "b", "c"],
                             trigger_size=2, n_show=3)
    slider, text = box.children[0], box.children[1]
    first = text.value
    slider.value = 0.3
    assert text.value != first and "0.3" in text.value
