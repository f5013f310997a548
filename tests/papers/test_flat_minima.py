"""Unit tests of advlab.papers.flat_minima (flatness of the robust loss, Stutz et al. 2021)."""
import numpy as np
import pytest
import torch

from advlab.core import training
from advlab.core.models import create_model
from advlab.papers import flat_minima as fm

EPS = 0.1


@pytest.fixture(scope="module")
def toy():
    """A small BatchNorm CNN on 8x8 images with non-trivial running statistics, and data."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=4, bn=True, image_size=8)
    x = torch.rand(24, 1, 8, 8)
    y = torch.randint(0, 10, (24,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(40):   # fit the toy data: confident logits, non-trivial BN statistics
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_flat_layers_exclude_normalisation_and_include_biases(toy):
    model = toy[0]
    names = set(fm.flat_layers(model))
    assert names == {"0.weight", "4.weight", "9.weight", "9.bias", "11.weight", "11.bias"}


def test_relative_flatness_is_scale_invariant_absolute_is_not(toy):
    model, x, y = toy
    scaled = fm.rescaled_copy(model, "0", "1", 10.0)
    with torch.no_grad():
        assert torch.allclose(scaled(x), model(x), rtol=1e-4, atol=1e-4)
    ref_norms = {n: w.norm() for n, w in fm.flat_layers(model).items()}
    rel = [fm.average_case(m, x, y, EPS, 0.5, 2, 3, seed=1).mean().item() for m in (model, scaled)]
    ab = [fm.average_case(m, x, y, EPS, 0.5, 2, 3, seed=1, ref_norms=ref_norms).mean().item()
          for m in (model, scaled)]
    assert rel[0] == pytest.approx(rel[1], abs=1e-3)
    assert ab[0] == pytest.approx(rel[0], abs=1e-6)       # absolute = relative at the original
    assert abs(ab[1] - ab[0]) > 20 * abs(rel[1] - rel[0]) + 1e-3


def test_joint_attack_stays_in_the_relative_ball_and_skips_normalisation(toy):
    model, x, y = toy
    xi = 0.01
    res = fm.joint_attack(model, x, y, EPS, xi, iters=2, restarts=2, batch_size=8, seed=0)
    base = fm.flat_layers(model)
    assert set(res["nu"]) == set(base)
    assert not any(n.startswith(("1.", "5.")) for n in res["nu"])   # BatchNorm layers
    for n, v in res["nu"].items():
        assert v.norm() <= xi * base[n].norm() * (1 + 1e-5)
    assert len(res["restart_losses"]) == 2
    assert res["losses"].mean().item() == pytest.approx(max(res["restart_losses"]), rel=1e-5)


def test_measurements_leave_the_model_bit_identical(toy):
    model, x, y = toy
    before = snapshot(model)
    fm.robust_losses(model, x, y, EPS, steps=2, restarts=2)
    fm.average_case(model, x, y, EPS, 0.5, 2, 2)
    fm.joint_attack(model, x, y, EPS, 0.01, iters=2, batch_size=8)
    fm.xi_sweep(model, x, y, EPS, [0.5], 2)
    after = snapshot(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_worst_case_is_at_least_average_case_at_the_same_radius(toy):
    model, x, y = toy
    xi = 0.05
    avg = fm.average_case(model, x, y, EPS, xi, 3, 5, seed=0).mean().item()
    worst = fm.joint_attack(model, x, y, EPS, xi, iters=5, restarts=2, batch_size=8,
                            alpha=EPS / 4)["losses"].mean().item()
    assert worst >= avg


def test_joint_attack_raises_the_robust_loss(toy):
    model, x, y = toy
    no_weights = fm.joint_attack(model, x, y, EPS, 0.0, iters=5, batch_size=8, seed=0)
    joint = fm.joint_attack(model, x, y, EPS, 0.05, iters=5, batch_size=8, seed=0)
    assert all(v.abs().max() == 0 for v in no_weights["nu"].values())
    assert joint["losses"].mean() > no_weights["losses"].mean()


def test_pgd_losses_dominate_the_clean_loss_and_error(toy):
    model, x, y = toy
    loss, wrong = fm.robust_losses(model, x, y, EPS, steps=5, restarts=2)
    with torch.no_grad():
        logits = model(x)
    clean = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.all(loss >= clean - 1e-5)
    assert torch.all(wrong | (logits.argmax(1) == y))        # clean mistakes stay mistakes
    same = fm.robust_losses(model, x, y, EPS, steps=5, restarts=2)[0]
    assert torch.equal(loss, same)                           # common random numbers


def test_average_case_perturbation_has_the_relative_norm(toy):
    base = fm.flat_layers(toy[0])
    nu = fm.sphere_sample(base, 0.3, torch.Generator().manual_seed(0))
    for n, v in nu.items():
        assert v.norm().item() == pytest.approx(0.3 * base[n].norm().item(), rel=1e-5)


def test_label_noise_method():
    model = create_model("small_cnn", 10, 1, width=4, bn=True, image_size=8)
    x, y = torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)
    clean = training.Method("pgd_at", EPS, EPS / 4, 1)
    torch.manual_seed(0)
    assert fm.LabelNoiseAT("pgd_at", EPS, EPS / 4, 1, tau=0.0).loss(model, x, x, y).item() == \
        pytest.approx(clean.loss(model, x, x, y).item())
    with torch.no_grad():
        logits = model(x)
    ce_per_label = torch.nn.functional.cross_entropy(
        logits.repeat(10, 1), torch.arange(10).repeat_interleave(64)).item()
    noisy = fm.LabelNoiseAT("pgd_at", EPS, EPS / 4, 1, tau=1.0).loss(model, x, x, y).item()
    assert noisy == pytest.approx(ce_per_label, rel=0.15)   # labels ~ uniform over classes


def test_rank_correlation_and_intervals():
    a = np.arange(8.0)
    res = fm.rank_correlation_uncertainty(a, 2 * a + 1, n_boot=300, n_perm=2000)
    assert res["rho"] == pytest.approx(1.0) and res["interval"][1] == pytest.approx(1.0)
    assert res["p_perm"] < 0.01
    flip = fm.rank_correlation_uncertainty(a, -a, n_boot=300, n_perm=500)
    assert flip["rho"] == pytest.approx(-1.0) and flip["p_perm"] == pytest.approx(1.0)
    p = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 3.5]])
    r = np.array([0.5, 1.0, 1.5])
    lo, hi = fm.flatness_interval(p, r, n_boot=300)
    assert lo <= p.mean() - r.mean() <= hi
    lo, hi = fm.flatness_interval(p, r, (p, r), n_boot=300)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.0)   # paired: identical arms


def test_landscape_explorer_builds_headless_and_updates(toy):
    pytest.importorskip("ipywidgets")
    model, x, y = toy
    w = fm.landscape_explorer({"a": model, "b": fm.rescaled_copy(model, "0", "1", 2.0)},
                              x[:4], y[:4], EPS, steps=1)
    go, info = w.children[1], w.children[2]
    before = info.value
    go.click()
    assert info.value != before and "a, xi = 0.5" in info.value
    w.children[0].children[1].value = 1.0     # releasing the slider recomputes
    assert "xi = 1" in info.value


def test_subset_sizes_are_checked_against_02s_subsets_and_dataset():
    recipe = {"dataset": "mnist5k", "n_eval_per_class": 4, "n_train_per_class": 5}
    assert fm.subset_sizes(recipe, "mnist5k", 3, 5) == {"n_test_per_class": (3, 4),
                                                        "n_train_per_class": (5, 5)}
    with pytest.raises(ValueError, match="trained on 'mnist5k', not 'fashion_mnist'"):
        fm.subset_sizes(recipe, "fashion_mnist", 3, 5)
