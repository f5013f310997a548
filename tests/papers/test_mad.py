"""MAD saliency and the baseline criteria: hand-computed values on toy problems, K-FAC
conventions, hooks removed, model untouched, and pruning the largest scores hurts more."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab.core import pruning
from advlab.papers import mad


def logreg(seed=0, d=5, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, k))


def toy_data(seed=0, n=12, d=5, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def random_block():
    """A 2x3 weight change, a PSD input factor A [3, 3] and diag(G) [2]."""
    g = torch.Generator().manual_seed(0)
    delta, A0 = torch.randn(2, 3, generator=g), torch.randn(3, 3, generator=g)
    return delta, (A0 @ A0.T).double(), torch.tensor([0.5, 2.0], dtype=torch.float64)


def test_block_saliency_matches_the_element_formula():
    delta, A, gd = random_block()
    S = mad.block_saliency(delta, A, gd)
    for i in range(2):
        for j in range(3):
            want = 0.5 * gd[i] * delta[i, j] * sum(delta[i, q] * A[q, j] for q in range(3))
            assert S[i, j].item() == pytest.approx(want.item(), rel=1e-12)
    # each row sums to its quadratic form
    quad = 0.5 * gd * torch.einsum("ij,jk,ik->i", delta.double(), A, delta.double())
    assert torch.allclose(S.sum(1), quad)


def test_kfac_factors_of_a_linear_layer_by_hand():
    model, (x, y) = logreg(), toy_data()
    A, g_diag = mad.kfac_factors(model, x, y)["0"]
    B = len(x)
    assert torch.allclose(A, (x.T @ x).double() / B)
    # dCE_mean/dlogits = (softmax - onehot) / B; multiplied back by B
    r = (F.softmax(model(x), 1) - F.one_hot(y, 3)).detach().double()
    assert torch.allclose(g_diag, (r ** 2).sum(0) / B)


def test_saliency_of_a_tiny_layer_matches_a_hand_computed_value():
    """Without the mask step, Delta = w: S_ij = 1/2 G_ii w_ij (w_i A)_j with the hand-computed
    A = x^T x / B and G_ii = mean_b (p - onehot)_{b,i}^2."""
    model, (x, y) = logreg(), toy_data()
    w = model[0].weight.detach().double()
    A = (x.T @ x).double() / len(x)
    G = ((F.softmax(model(x), 1) - F.one_hot(y, 3)).detach().double() ** 2).mean(0)
    want = 0.5 * G[:, None] * w * (w @ A)
    got = mad.mad_scores(model, [(x, y)], optimize_mask=False)["0"]
    assert torch.allclose(got, want)


def conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(inplace=True),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 3))


def test_kfac_conv_conventions_by_hand_and_batch_size_invariance():
    model = conv_model().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 2, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)
    f = mad.kfac_factors(model, x, y)
    # first conv: patches [B, 18, 64] / L, A = sum over batch and positions / B
    p = F.unfold(x.double(), 3, padding=1) / 64
    A = torch.einsum("bil,bjl->ij", p, p) / 6
    assert torch.allclose(f["0"][0], A)
    # duplicating the batch leaves every factor unchanged (they are averages)
    f2 = mad.kfac_factors(model, torch.cat([x, x]), torch.cat([y, y]))
    for n in f:
        assert torch.allclose(f[n][0], f2[n][0]) and torch.allclose(f[n][1], f2[n][1])


def test_masks_are_bounded_and_lower_the_adversarial_loss():
    model, (x, y) = logreg(), toy_data()
    s = mad.optimize_masks(model, x, y, steps=20, lr=0.1)["0"]
    assert s.min() >= 1e-4 - 1e-9 and s.max() <= 1 + 1e-6 and (s < 0.99).any()
    w = model[0].weight.detach()
    with torch.no_grad():
        masked = F.cross_entropy(F.linear(x, w * s, model[0].bias), y)
        dense = F.cross_entropy(model(x), y)
    assert masked < dense


def test_hooks_removed_and_model_untouched():
    model = conv_model()
    model.train()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(8, 2, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))]
    state = copy.deepcopy(model.state_dict())
    for name, fn in mad.CRITERIA.items():
        kw = {"sparsity": 0.5, "epochs": 1} if name == "hydra" else {}
        if name == "mad":
            kw = {"mask_steps": 2}
        scores = fn(model, batches, **kw)
        assert set(scores) == {"0", "3", "6"}, name
        assert all(scores[n].shape == layer.weight.shape and torch.isfinite(scores[n]).all()
                   for n, layer in pruning.prunable_layers(model).items()), name
        assert model.training, name  # mode restored
        for k, v in model.state_dict().items():  # weights and BN statistics unchanged
            assert torch.equal(v, state[k]), (name, k)
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with pytest.raises(IndexError):  # labels out of range: the hooks still go away
        mad.kfac_factors(model, batches[0][0], torch.full((8,), 7))
    assert all(not m._forward_hooks for m in model.modules())


def test_fisher_and_taylor_by_hand():
    model, (x, y) = logreg(), toy_data()
    w = model[0].weight.detach().double()
    per_ex = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        per_ex.append(model[0].weight.grad.double().clone())
    fisher = torch.stack(per_ex).pow(2).mean(0)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    assert torch.allclose(mad.fisher_scores(model, batches, chunk=3)["0"], 0.5 * fisher * w ** 2)
    grad_mean = (torch.stack(per_ex[:7]).mean(0) + torch.stack(per_ex[7:]).mean(0)) / 2
    assert torch.allclose(mad.taylor_scores(model, batches)["0"], (w * grad_mean).abs())


def trained_mlp():
    """A small MLP fitted to a 3-class Gaussian-blob problem (seconds)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=g) * 2
    y = torch.arange(600) % 3
    x = centers[y] + 0.7 * torch.randn(600, 10, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_pruning_the_largest_mad_scores_hurts_more_than_the_smallest():
    model, x, y = trained_mlp()
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 600, 100)]
    scores = mad.mad_scores(model, batches)
    losses = {}
    for name, s in {"smallest": scores, "largest": {k: -v for k, v in scores.items()}}.items():
        m = copy.deepcopy(model)
        pruning.apply_masks(m, pruning.masks_from_scores(s, 0.7))
        with torch.no_grad():
            losses[name] = F.cross_entropy(m(x), y).item()
    assert losses["largest"] > losses["smallest"] + 0.1, losses


def test_hydra_scores_lower_the_loss_of_their_own_mask():
    model, x, y = trained_mlp()
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 600, 100)]
    init = mad.hydra_scores(model, batches, 0.9, epochs=0)
    tuned = mad.hydra_scores(model, batches, 0.9, epochs=10, lr=0.01)

    def loss(scores):
        m = copy.deepcopy(model)
        pruning.apply_masks(m, pruning.masks_from_scores(scores, 0.9))
        with torch.no_grad():
            return F.cross_entropy(m(x), y).item()

    assert loss(tuned) < loss(init)


def test_diagonal_saliency_is_the_single_weight_quadratic_term():
    delta, A, gd = random_block()
    D = mad.diagonal_saliency(delta, A, gd)
    for i in range(2):
        for j in range(3):
            e = torch.zeros(2, 3, dtype=torch.float64)
            e[i, j] = delta[i, j]  # move weight (i, j) alone
            assert D[i, j].item() == pytest.approx(mad.block_saliency(e, A, gd).sum().item())
    model, (x, y) = logreg(), toy_data()
    share, diag = mad.mad_scores(model, [(x, y)], mask_steps=3, return_diagonal=True)
    assert torch.allclose(share["0"], mad.mad_scores(model, [(x, y)], mask_steps=3)["0"])
    assert (diag["0"] >= 0).all()


def test_hydra_with_fresh_pgd_against_the_masked_network():
    model, x, y = trained_mlp()
    clean = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 600, 100)]
    state = copy.deepcopy(model.state_dict())
    s = mad.hydra_scores(model, clean, 0.7, epochs=1, eps=0.3, attack_steps=2)
    assert all(s[n].shape == layer.weight.shape and torch.isfinite(s[n]).all()
               for n, layer in pruning.prunable_layers(model).items())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="eps"):
        mad.hydra_scores(model, clean, 0.7, epochs=1, attack_steps=2)
