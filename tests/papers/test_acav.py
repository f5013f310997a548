"""Unit tests of advlab.papers.acav (Adversarial TCAV)."""
import numpy as np
import pytest
import torch

from advlab.core.models import create_model
from advlab.papers import acav


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("small_cnn").eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return (acav.concept_images("stripes", 12, 0), torch.rand(12, 1, 28, 28, generator=g),
            torch.rand(6, 1, 28, 28, generator=g))


@pytest.mark.parametrize("kind", acav.TEXTURES)
def test_textures_are_seeded_binary_and_differ_across_seeds(kind):
    a, b, c = acav.texture(kind, 5, 3), acav.texture(kind, 5, 3), acav.texture(kind, 5, 4)
    assert a.shape == (5, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and 0.1 < a.mean() < 0.9


def test_injection_modulates_garment_pixels_only():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 5:20, 5:20] = 0.8
    t = acav.texture("stripes", 2, 0)
    y = acav.inject(x, t)
    assert torch.all(y[x == 0] == 0)
    on, off = (t[:, None] == 1) & (x > 0), (t[:, None] == 0) & (x > 0)
    assert torch.allclose(y[on], torch.tensor(0.8)) and torch.allclose(y[off], torch.tensor(0.28))


def test_training_set_textures_the_concept_classes_with_the_set_probabilities():
    y = torch.tensor([6] * 400 + [0] * 400)
    x = torch.ones(800, 1, 28, 28)
    xt, kind = acav.texture_training_set(x, y, 0.9, 0.1, 0)
    assert (kind[:400] == acav.TEXTURES.index("stripes")).float().mean().item() == \
        pytest.approx(0.9, abs=0.05)
    assert (kind[400:] >= 0).float().mean().item() == pytest.approx(0.1, abs=0.04)
    assert torch.equal(xt[kind < 0], x[kind < 0]) and not torch.equal(xt[kind >= 0], x[kind >= 0])


def test_gram_schmidt_is_orthonormal_and_drops_dependent_vectors():
    rng = np.random.default_rng(0)
    A = rng.random((20, 300)) + 5                         # a large common component
    A = np.concatenate([A, A[:3] + 2 * A[3:6]])           # 3 dependent rows
    Q = acav.gram_schmidt(A, 1e-6)
    assert Q.shape == (300, 20) and Q.dtype == np.float64
    assert np.abs(Q.T @ Q - np.eye(20)).max() < 1e-12
    assert np.abs(A - (A @ Q) @ Q.T).max() < 1e-8           # spans the rows


@pytest.mark.parametrize("mode", ["complement_random", "complement_gaussian",
                                  "complement_centered"])
def test_gs_negatives_are_orthogonal_to_the_concept_span(mode):
    rng = np.random.default_rng(0)
    A_c, pool = rng.random((10, 50)) + 1, rng.random((40, 50))
    mu, sigma = pool.mean(0), pool.std(0)
    n = acav.gs_negatives(A_c, pool, mode, np.random.default_rng(1), 8, 1e-6, mu, sigma)
    assert n.shape == (8, 50)
    Q = acav.gs_basis(A_c, mode, 1e-6, mu)
    resid = (n - mu) @ Q if mode == "complement_centered" else n @ Q
    assert np.abs(resid).max() < 1e-10


def test_recall_and_specificity_are_a_hand_count_with_the_intercept():
    A = np.array([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [3.0, 1.0]])
    cav = (np.array([1.0, 0.0]), -1.5)          # s = a0 - 1.5 : > 0 for rows 1 and 3
    assert acav.recall(A, cav) == 0.5
    assert acav.specificity(A, cav) == 0.5
    assert acav.recall(A, (cav[0], 0.0)) == 1.0  # dropping b changes the answer
    assert acav.margin(A, cav) == pytest.approx(0.5)


def test_average_is_the_mean_of_normalised_decision_functions():
    cavs = [(np.array([3.0, 4.0]), 5.0), (np.array([0.0, 2.0]), -1.0)]
    w, b = acav.average(cavs)
    a = np.array([0.7, -1.3])
    want = np.mean([(a @ w_ + b_) / np.linalg.norm(w_) for w_, b_ in cavs])
    assert a @ w + b == pytest.approx(want)


def test_separable_toy_gives_a_cav_along_the_true_direction():
    rng = np.random.default_rng(0)
    d = rng.standard_normal(64)
    d /= np.linalg.norm(d)
    noise = 0.3 * rng.standard_normal((200, 64))
    pos, neg = noise[:100] + 2 * d, noise[100:] - 2 * d
    for kind in ("sgd", "logistic"):
        w, b = acav.fit_cav(pos, neg, 0, 0.01, kind)
        assert w @ d / np.linalg.norm(w) > 0.9
        assert acav.recall(pos, (w, b)) == 1.0 and acav.specificity(neg, (w, b)) == 1.0


def test_fit_cav_is_seeded():
    rng = np.random.default_rng(0)
    pos, neg = rng.random((20, 30)) + 0.2, rng.random((20, 30))
    a, b, c = (acav.fit_cav(pos, neg, s) for s in (1, 1, 2))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_activations_match_the_hook_and_captums_flatten_order(model, images):
    x = images[1][:4]
    A = acav.activations(model, "5", x)
    with torch.no_grad():
        ref = model[:6](x).reshape(4, -1)
        hook = acav.layer_output(model, "5", x)
    assert A.shape == (4, 3136)
    assert np.allclose(A, ref.double().numpy()) and np.allclose(A, hook.double().numpy())


def test_captum_fits_the_same_seeded_cavs_and_two_seeds_differ(model, images):
    conc, rnd, x = images
    concepts = {0: ("c", conc), 1: ("r1", rnd[:6]), 2: ("r2", rnd[6:])}
    pairs = [(0, 1), (0, 2)]
    sc, mag, cavs = acav.captum_tcav(model, "8", x, 3, concepts, pairs, {(0, 1): 7, (0, 2): 8})
    A_c = acav.activations(model, "8", conc)
    for (p, n), seed in zip(pairs, (7, 8)):
        w, b = acav.fit_cav(A_c, acav.activations(model, "8", concepts[n][1]), seed)
        assert np.allclose(cavs[(p, n)][0], w) and cavs[(p, n)][1] == pytest.approx(b)
    assert not np.allclose(cavs[(0, 1)][0], cavs[(0, 2)][0])
    # a second call with the same ids but another seed is not served from a cache
    _, _, again = acav.captum_tcav(model, "8", x, 3, concepts, pairs[:1], {(0, 1): 9})
    assert not np.allclose(again[(0, 1)][0], cavs[(0, 1)][0])


def test_from_scratch_tcav_score_equals_captums(model, images):
    conc, rnd, x = images
    A_c, A_r = (acav.activations(model, "8", t) for t in (conc, rnd))
    w, b = acav.fit_cav(A_c, A_r, 0)
    with torch.no_grad():
        acts = model[:9](x)
    ours = acav.tcav_score_from_scratch(model[9:], acts, 2, w)
    sc, _, _ = acav.captum_tcav(model, "8", x, 2, {0: ("c", conc), 1: ("r", rnd)}, [(0, 1)],
                                {(0, 1): (w, b)})
    assert ours == pytest.approx(sc[0])


def test_acav_with_zero_step_refits_on_duplicated_data(model, images):
    conc, rnd, _ = images
    A_c, A_r = (acav.activations(model, "8", t) for t in (conc, rnd))
    base = acav.fit_cav(A_c, A_r, 0)
    got = acav.acav_fit(model, "8", conc, rnd, base, eps=0.0, seed=0)
    want = acav.fit_cav(np.concatenate([A_c, A_c]), np.concatenate([A_r, A_r]), 0)
    assert np.allclose(got[0], want[0], atol=1e-8)
    moved = acav.acav_fit(model, "8", conc, rnd, base, eps=0.1, seed=0)
    assert not np.allclose(moved[0], want[0])
    with pytest.raises(ValueError, match="adv_train"):
        acav.acav_fit(model, "8", conc, rnd, base, eps=0.1, mode="sideways")


def test_sweep_and_evaluate_give_every_method_every_seed(model):
    x_te = torch.rand(300, 1, 28, 28)
    y_te = torch.arange(300) % 10
    world = acav.make_world(x_te, y_te, "stripes", n_concept=8, n_heldout=6,
                            pool_sizes=(20, 5, 5), n_recall=10, n_specificity=10, n_tcav=4,
                            seed=0)
    acts = {s: acav.activations(model, "8", world[s]) for s in acav.SETS}
    cavs = acav.sweep(model, "8", world, acts, n_seeds=2, n_random=8, K=2,
                      acav_modes=["adv_train"], acav_eps=[0.1],
                      gs_modes=["complement_centered", "complement_random"])
    methods = acav.method_names(["adv_train"], [0.1], ["complement_centered",
                                                      "complement_random"])
    assert set(methods) <= set(cavs) and all(len(cavs[m]) == 2 for m in methods)
    assert not np.array_equal(cavs["random_sets"][0], cavs["random_sets"][1])
    rows = acav.evaluate(cavs, acts)
    assert len(rows) == 2 * len(methods)
    assert all(0 <= r["recall"] <= 1 and 0 <= r["specificity"] <= 1 for r in rows)
    tc = acav.tcav_all(model, "8", world, cavs, n_rand_pairs=2, n_random=8)
    assert len(tc["random"]) == 2 and all(len(tc[m]) == 2 for m in methods)
    for a, c in zip(tc["tcav_cavs"], cavs["tcav"]):     # Captum's fit == the sweep's fit
        assert np.allclose(a[0], c[0])


def test_significance_only_counts_scores_above_the_null():
    assert acav.significance([0.2, 0.3, 0.25], [0.5, 0.6, 0.55]) == 1.0
    assert acav.significance([0.9, 0.95, 1.0, 0.92], [0.5, 0.4, 0.6, 0.45]) < 0.01


def test_std_ratio_interval_contains_the_ratio():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 20), rng.normal(0, 2, 20)
    r, (lo, hi) = acav.std_ratio_interval(a, b)
    assert r == pytest.approx(a.std(ddof=1) / b.std(ddof=1)) and lo <= r <= hi


def test_score_explorer_updates_when_the_seed_changes():
    rng = np.random.default_rng(0)
    acts = {"8": {"recall": rng.normal(1, 1, (30, 4)), "specificity": rng.normal(-1, 1, (30, 4))}}
    cavs = {"8": {"tcav": [(np.array([1.0, 0, 0, 0]), 0.0), (np.array([1.0, 0, 0, 0]), -5.0)],
                  "random_sets": []}}
    box = acav.score_explorer(cavs, acts, {"tcav": "TCAV"})
    before = box.last
    box.children[0].children[2].value = 1
    assert box.last != before and box.last[2] == 1 and box.last[3] < before[3]
