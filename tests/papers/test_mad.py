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


# --------------------------------------------------------------------------- lesson helpers
def small_cnn_bn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3)).eval()


def images(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_the_notebooks_classifier_saliency_from_scratch_equals_mad_scores():
    """The notebook's hand-built steps 2-4 on the classifier (hook, A, diag G, share) equal the
    library's ``mad_scores`` on one batch, and differ from the diagonal variant."""
    from torch.func import functional_call

    net = small_cnn_bn()
    x, y = images()
    layers = pruning.prunable_layers(net)
    clf = pruning.classifier_name(net)
    w = {n: m.weight.detach() for n, m in layers.items()}
    s = mad.optimize_masks(net, x, y, steps=3, lr=0.1)
    seen = {}
    hook = layers[clf].register_forward_hook(lambda m, i, o: seen.update(a=i[0], out=o))
    masked = {f"{n}.weight": (w[n] * s[n]).requires_grad_() for n in w}
    loss = F.cross_entropy(functional_call(net, masked, (x,)), y)
    hook.remove()
    g = torch.autograd.grad(loss, seen["out"])[0].double() * len(y)
    a = seen["a"].detach().double()
    d = (w[clf] * (1 - s[clf])).double()
    S = 0.5 * ((g * g).sum(0) / len(y))[:, None] * d * (d @ (a.T @ a / len(y)))
    share, diag = mad.mad_scores(net, [(x, y)], mask_steps=3, mask_lr=0.1, return_diagonal=True)
    torch.testing.assert_close(S, share[clf], rtol=1e-6, atol=1e-12)
    assert not torch.allclose(S, diag[clf])


def test_layer_labels_and_score_all_by_products():
    net = small_cnn_bn()
    labels = mad.layer_labels(net)
    assert list(labels.values()) == ["conv1", "conv2", "classifier"]
    x, y = images(16)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    methods = ["mad", "mad_largest", "mad_no_mask", "kfac_obd", "magnitude"]
    scores, seconds, halves, parts = mad.score_all(net, batches, methods, 2, 0.1, seed=0)
    assert set(scores) == set(methods) and "mad_diagonal" not in scores
    assert set(parts) == {"share", "diagonal", "mask", "refused"}
    full = mad.mad_scores(net, batches, 2, 0.1)   # the halves' weighted mean == one pass
    for k in full:
        torch.testing.assert_close(scores["mad"][k], full[k], rtol=1e-6, atol=1e-15)
        assert torch.equal(scores["mad_largest"][k], -scores["mad"][k])
    assert len(halves) == 2 and set(seconds) >= {"mad", "mad_largest", "magnitude"}


def test_gap_and_chance_in_points():
    import pandas as pd

    t = pd.Series({("a", 0.9): 0.50, ("a", 0.99): 0.30, ("b", 0.9): 0.40, ("b", 0.99): 0.10})
    assert mad.gap(t, "a", "b", [0.9, 0.99]) == pytest.approx(15.0)
    assert mad.chance(t, "a", "b", [0.99]) == ""
    low = pd.Series({("a", 0.9): 0.12, ("b", 0.9): 0.05})
    assert "uninformative" in mad.chance(low, "a", "b", [0.9])


def test_prune_sweep_reaches_each_sparsity_and_leaves_the_dense_network():
    from functools import partial

    net = small_cnn_bn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = images(20)
    labels = mad.layer_labels(net)
    scores = {"magnitude": mad.magnitude_scores(net)}
    ev = partial(mad.evaluate, x=x, y=y, eps=0.1, steps=1)
    scores["random"] = mad.random_scores(net)
    sweep, kept, masks, ok = mad.prune_sweep(net, scores, ["magnitude", "random"], [0.5, 0.9], (),
                                             0, ev, (x, y), labels, bn_data=x,
                                             only={"random": [0.9]})
    assert list(zip(sweep.method, sweep.sparsity)) == [("magnitude", 0.5), ("magnitude", 0.9),
                                                       ("random", 0.9)]   # random only at 0.9
    assert set(ok) == set(masks) and all(len(v) == len(x) for v in ok.values())
    assert [float(ok[m, p].mean()) for m, p in zip(sweep.method, sweep.sparsity)] == \
        pytest.approx(list(sweep.pgd))      # the per-image outcomes are the reported accuracy
    assert (sweep.actual_sparsity >= sweep.sparsity - 0.02).all()
    assert set(kept.layer) == {"conv1", "conv2", "classifier"}
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_sparsity_explorer_updates_on_the_button_only():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    net = small_cnn_bn()
    x, y = images(12)
    w = mad.sparsity_explorer(net, {"magnitude": mad.magnitude_scores(net),
                                    "random": mad.random_scores(net)}, x, y, 0.1,
                              steps=1, bn_data=x, display=False)
    method, sparsity = w.children[:2]
    assert not sparsity.continuous_update
    sparsity.value = 0.5
    w.manual_button.click()
    first = w.result
    assert first["kept"]["0"] == pytest.approx(0.5, abs=0.2)
    sparsity.value, method.value = 0.95, "random"
    assert w.result is first                      # moving the controls recomputes nothing
    w.manual_button.click()                       # the button does
    assert w.result is not first
    assert sum(w.result["kept"].values()) < sum(first["kept"].values())


def test_verdict_reading_and_summary_follow_the_numbers():
    import pandas as pd

    from advlab.core.claims import Claims

    claims = Claims("05_mad")
    claims.check("mad_beats_magnitude", "MAD beats magnitude", "", -20.0, ">", 0.0, unit="points")
    claims.check("mad_beats_random", "MAD beats random", "", -1.0, ">", 0.0, unit="points",
                 uninformative="both at or below chance level", kind="mechanism")
    mean_pgd = pd.Series({"mad": 0.05, "mad_diagonal": 0.03, "mad_no_mask": 0.08,
                          "kfac_obd": 0.35, "magnitude": 0.39})
    text = mad.read_verdicts(claims, mean_pgd, 0.188)
    assert "20.0 points *less*" in text and "Delta w = w + diagonal (OBD)" in text
    assert "35.0% mean one-shot PGD accuracy" in text and "18.8% of MAD's scores" in text
    assert "inconclusive" in text and "chance level" in text
    pgd_at = pd.Series({("mad", 0.9): 0.1, ("mad", 0.99): 0.05, ("magnitude", 0.9): 0.4,
                        ("magnitude", 0.99): 0.2})
    s = mad.summary(claims, pgd_at, [0.9, 0.99], {"clean": 0.75, "pgd": 0.6}, 0.63, 0.188)
    assert "mad 7.5%, magnitude 30.0%" in s and "**magnitude** (30.0%)" in s
    assert "only moderately stable" in s and "0 of 1 headline claims and 0 of 2 claims" in s
    assert "After the identical fine-tune" not in s        # no fine-tune claim, no bullet
    claims.check("criterion_matters_after_finetune", "After the fine-tune the criterion still "
                 "matters: magnitude pruning beats random pruning", "", 12.0, ">", 0.0,
                 unit="points", interval=(4.0, 20.0))
    s = mad.summary(claims, pgd_at, [0.9, 0.99], {"clean": 0.75, "pgd": 0.6}, 0.63, 0.188)
    assert "**After the identical fine-tune**: the criterion still matters" in s
    assert "holds (+12.0 points)" in s and "1 of 2 headline claims" in s


def test_figures_have_axis_labels_and_a_legend_outside():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    g = torch.Generator().manual_seed(0)
    scores = {"0": torch.randn(40, generator=g).double() * 1e-6,
              "5": torch.randn(30, generator=g).double() * 1e-5}
    fig = mad.plot_saliency(scores, {"0": "conv1", "5": "classifier"})
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and fig.axes[1].get_ylabel()
    assert all(t == 0 or abs(t) >= 10 * 1e-9 for t in ax.get_yticks())   # no crowding near 0
    sweep = pd.DataFrame([{"method": m, "sparsity": p, "pgd": a, "clean": a + 0.1}
                          for m, a in (("mad", 0.1), ("magnitude", 0.3)) for p in (0.5, 0.9)])
    fig2 = mad.plot_accuracy_vs_sparsity(sweep, {"pgd": 0.6, "clean": 0.75},
                                         ["mad", "magnitude"], [0.5, 0.9], 20)
    legend = fig2.axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["mad", "magnitude", "dense"]
    assert legend.get_bbox_to_anchor().x0 > fig2.axes[1].get_window_extent().x1 - 1
    assert "%" in fig2.axes[0].get_ylabel()
    plt.close("all")


# --------------------------------------------------------------------------- the official formula
def official_reference_scores(net, x, y, s):
    """MAD's saliency on one batch as the official code computes it, re-implemented
    independently of the library (``KFACMADPruner._compute_delta_L`` with ``ComputeCovA`` /
    ``ComputeCovG`` of ``utils/kfac_utils.py``, ``batch_averaged=True``): module hooks on a
    copy whose weights are w * s; official ``_extract_patches`` (pad, ``Tensor.unfold``,
    transposes); a column of ones in A for a layer with a bias, whose Delta is 0 because our
    bias masks stay at 1; then, row by row, diag((1/2 G_ii Delta_i^T) @ (Delta_i A))."""
    model = copy.deepcopy(net).eval()
    layers = pruning.prunable_layers(model)
    w0 = {n: m.weight.detach().clone() for n, m in layers.items()}
    with torch.no_grad():
        for n, m in layers.items():
            m.weight.mul_(s[n])
    acts, grads, hooks = {}, {}, []
    for n, m in layers.items():
        hooks.append(m.register_forward_pre_hook(
            lambda mod, inp, n=n: acts.__setitem__(n, inp[0].detach())))
        hooks.append(m.register_full_backward_hook(
            lambda mod, gin, gout, n=n: grads.__setitem__(n, gout[0].detach())))
    F.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    out = {}
    for n, m in layers.items():
        a, g = acts[n].double(), grads[n].double()
        B = a.size(0)
        if isinstance(m, nn.Conv2d):
            (kh, kw), (ph, pw), (sh, sw) = m.kernel_size, m.padding, m.stride
            p = F.pad(a, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)
            p = p.transpose_(1, 2).transpose_(2, 3).contiguous()
            p = p.view(p.size(0), p.size(1), p.size(2), p.size(3) * p.size(4) * p.size(5))
            L = p.size(1) * p.size(2)
            a = p.view(-1, p.size(-1))
            if m.bias is not None:
                a = torch.cat([a, a.new_ones(a.size(0), 1)], 1)
            a = a / L
            cov_a = a.t() @ (a / B)
            g = g.transpose(1, 2).transpose(2, 3).contiguous().view(-1, g.size(1)) * B * L
            cov_g = g.t() @ (g / g.size(0))
        else:
            if m.bias is not None:
                a = torch.cat([a, a.new_ones(B, 1)], 1)
            cov_a = a.t() @ (a / B)
            cov_g = g.t() @ (g * B)
        w = w0[n].double()
        dw = (w - w * s[n].double()).view(w.size(0), -1)       # w - operator(w, mask)
        if m.bias is not None:
            dw = torch.cat([dw, dw.new_zeros(dw.size(0), 1)], 1)  # bias mask stays at 1
        rows = [torch.diag((0.5 * cov_g[i, i] * dw[i][:, None]) @ (dw[i][None, :] @ cov_a))
                for i in range(dw.size(0))]
        S = torch.stack(rows)
        out[n] = (S[:, :-1] if m.bias is not None else S).reshape(w.shape)
    return out


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_official_formula_reference_equals_mad_scores_on_toy_layers():
    """The official computation (reference above) on a conv + BN + linear toy network equals
    ``mad.mad_scores`` on every layer; the diagonal variant does not (the test can fail)."""
    net = small_cnn_bn()
    x, y = images(16)
    s = mad.optimize_masks(net, x, y, steps=5, lr=0.1)
    ref = official_reference_scores(net, x, y, s)
    share, diag = mad.mad_scores(net, [(x, y)], mask_steps=5, mask_lr=0.1, return_diagonal=True)
    assert set(ref) == set(share) and any((v < 0).any() for v in ref.values())
    for n in ref:
        scale = float(ref[n].abs().max())
        assert scale > 0
        torch.testing.assert_close(share[n], ref[n], rtol=1e-5, atol=1e-6 * scale)
        assert not torch.allclose(diag[n], ref[n], rtol=1e-3, atol=1e-6 * scale)


def test_official_clamp_bound_is_one_float32_step_below_ours():
    ours = torch.tensor(mad.SOFTPLUS_INV_1, dtype=torch.float32)
    official = torch.tensor(mad.OFFICIAL_SOFTPLUS_INV_1, dtype=torch.float32)
    assert official < ours and torch.nextafter(official, ours) == ours
    assert "official" in mad.official_check_text() and "bug" in mad.official_check_text()


# --------------------------------------------------------------------------- the ablations
def test_mad_abs_prunes_the_scores_nearest_zero_not_the_most_negative():
    scores = {"l": torch.tensor([[-3.0, 1.0, 0.5, 2.0]], dtype=torch.float64)}
    signed = pruning.masks_from_scores(scores, 0.5)["l"]
    absolute = pruning.masks_from_scores(mad.abs_scores(scores), 0.5)["l"]
    assert signed.tolist() == [[0, 1, 0, 1]]       # the official ascending sort: -3 goes first
    assert absolute.tolist() == [[1, 0, 0, 1]]     # |S|: 0.5 and 1 go first, -3 is kept


def test_mask_value_prunes_where_the_mask_shrank_most():
    mask = {"l": torch.tensor([[0.2, 1.0, 0.9, 0.5]], dtype=torch.float64)}
    kept = pruning.masks_from_scores(mad.mask_value_scores(mask), 0.5)["l"]
    assert kept.tolist() == [[0, 1, 1, 0]]          # s = 0.2 and 0.5 shrank most: pruned
    model, (x, y) = logreg(), toy_data()
    s = mad.optimize_masks(model, x, y, steps=4, lr=0.1)
    got = mad.CRITERIA["mask_value"](model, [(x, y)], mask_steps=4, mask_lr=0.1)
    torch.testing.assert_close(got["0"], s["0"].double())


def test_mad_parts_refused_weights_score_exactly_zero():
    """The mask step leaves some weights at s = 1; their Delta and score are exactly 0 and
    'refused' counts them per batch; without the mask step nothing is refused (Delta = w)."""
    model, (x, y) = logreg(), toy_data()
    s = mad.optimize_masks(model, x, y, steps=3, lr=0.1)
    parts = mad.mad_parts(model, [(x, y)], 3, 0.1)
    refused = s["0"] >= 1
    assert 0 < int(refused.sum()) < refused.numel()
    assert torch.equal(parts["refused"]["0"], refused.double())
    assert (parts["share"]["0"][refused] == 0).all() and (parts["share"]["0"][~refused] != 0).all()
    two = mad.mad_parts(model, [(x, y), (x[:6], y[:6])], 3, 0.1)
    assert ((two["refused"]["0"] * 2) % 1 == 0).all()          # a fraction of the two batches
    dense = mad.mad_parts(model, [(x, y)], optimize_mask=False)
    assert (dense["share"]["0"] != 0).all()


def test_score_all_by_products_of_the_ablations():
    net = small_cnn_bn()
    x, y = images(16)
    methods = ["mad", "mad_abs", "mask_value", "kfac_obd"]
    scores, _, _, parts = mad.score_all(net, [(x[:8], y[:8]), (x[8:], y[8:])], methods, 2, 0.1, 0)
    assert list(scores) == methods
    for n in scores["mad"]:
        assert torch.equal(scores["mad_abs"][n], scores["mad"][n].abs())
        assert torch.equal(scores["mask_value"][n], parts["mask"][n])
        assert ((parts["mask"][n] > 0) & (parts["mask"][n] <= 1)).all()


# --------------------------------------------------------------------------- claims' arithmetic
def test_mechanism_stats_by_hand():
    w = {"a": torch.arange(1.0, 9.0).view(2, 4), "b": torch.arange(9.0, 17.0).view(2, 4)}
    share = {"a": torch.ones(2, 4, dtype=torch.float64),
             "b": torch.tensor([[1, 1, 1, 1], [1, 1, -1, 0]], dtype=torch.float64)}
    refused = {"a": torch.zeros(2, 4, dtype=torch.float64),
               "b": torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0.5]], dtype=torch.float64)}
    st = mad.mechanism_stats(w, {"share": share, "refused": refused}, ["a", "b"], top=0.25)
    assert (st["top_k"], st["top_n"]) == (2, 4)        # |w| 13..16: scores 1, 1, -1, 0
    assert st["q_n"] == [4, 4, 4, 4] and st["q_major"] == [0, 0, 0, 3]
    assert st["refused_by_quartile"] == pytest.approx([0, 0, 0, 2.5 / 4])
    assert st["refused_all"] == pytest.approx(2.5 / 16)


def test_paired_and_unpaired_gaps():
    from advlab.core.claims import paired_proportions_interval, wilson_interval

    a, b = torch.tensor([1.0, 1, 0, 1, 1, 0]), torch.tensor([0.0, 1, 0, 0, 1, 0])
    g, (lo, hi), kind = mad.paired_gap(a, b)
    assert g == pytest.approx(100 * 2 / 6) and "Newcombe" in kind
    assert (lo, hi) == pytest.approx(tuple(100 * v for v in paired_proportions_interval(a, b)))
    oks = {("m", 0.5): a, ("m", 0.9): b}
    avg = mad.per_image(oks, "m", [0.5, 0.9])
    assert avg.tolist() == [0.5, 1, 0, 0.5, 1, 0]
    assert "bootstrap" in mad.paired_gap(avg, b)[2]
    d, (lo, hi) = mad.unpaired_gap(30, 100, 10, 100)
    l1, u1 = wilson_interval(30, 100)
    l2, u2 = wilson_interval(10, 100)
    assert d == pytest.approx(20.0)
    assert lo == pytest.approx(100 * (0.2 - ((0.3 - l1) ** 2 + (u2 - 0.1) ** 2) ** 0.5))
    assert hi == pytest.approx(100 * (0.2 + ((u1 - 0.3) ** 2 + (0.1 - l2) ** 2) ** 0.5))
    assert lo < d < hi


def test_at_chance_marks_a_check_of_a_method_at_chance():
    import pandas as pd

    t = pd.Series({("mad", 0.9): 0.08, ("mad_largest", 0.9): 0.02, ("magnitude", 0.9): 0.4})
    assert "uninformative" in mad.at_chance(t, "mad", [0.9])
    assert mad.at_chance(t, "magnitude", [0.9]) == ""


def test_evaluate_reports_per_image_outcomes():
    net = small_cnn_bn()
    x, y = images(12)
    out = mad.evaluate(net, x, y, eps=0.05, steps=2,
                       aa=dict(idx=torch.arange(4), version="lite", n_iter=2, targets=1, seed=0))
    assert out["ok"]["pgd"].shape == (12,) and out["ok"]["aa"].shape == (4,)
    assert out["pgd"] == pytest.approx(float(out["ok"]["pgd"].mean()))
    assert out["aa"] == pytest.approx(float(out["ok"]["aa"].mean()))
    assert out["pgd"] <= out["clean"]


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_sizes_fit_mnist5k_per_class(profile):
    """05 with common.dataset: mnist5k (about 400 train / 100 test images per class, stored
    sorted by class): every per-class size fits, so the stratified subsets are what they
    claim.  Skipped when the data are absent."""
    from advlab.core import data
    from advlab.pipeline import params

    try:
        _, y_tr = data.load_dataset("mnist5k", "train")
        _, y_te = data.load_dataset("mnist5k", "test")
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"mnist5k not available: {e}")
    p = params.resolve("05_mad", profile)
    k = int(y_tr.max()) + 1
    tr, te = int(torch.bincount(y_tr).min()), int(torch.bincount(y_te).min())
    assert -(-p["sal_n_batches"] * p["sal_batch_size"] // k) <= tr
    assert (p["finetune_n_per_class"] or 0) <= tr
    assert p["n_eval_per_class"] <= te and p["aa_n_per_class"] <= p["n_eval_per_class"]


def test_one_shot_from_sweep_reuses_the_sweep_and_attacks_only_where_read():
    import pandas as pd

    sweep = pd.DataFrame([{"method": "mad", "sparsity": 0.9, "clean": 0.1, "pgd": 0.02},
                          {"method": "hydra", "sparsity": 0.9, "clean": 0.6, "pgd": 0.5}])
    ok = {("mad", 0.9): torch.tensor([0.0, 1.0]), ("hydra", 0.9): torch.tensor([1.0, 1.0])}
    calls = []

    def aa_fn(model):
        calls.append(model)
        return {"aa": 0.5, "ok": {"aa": torch.tensor([1.0, 0.0])}}

    got = mad.one_shot_from_sweep(sweep, ok, "net", "mad", 0.9, aa_fn, {"mad"})
    assert (got["clean"], got["pgd"], got["aa"]) == (0.1, 0.02, 0.5) and calls == ["net"]
    assert got["ok"]["pgd"] is ok["mad", 0.9] and got["ok"]["aa"].tolist() == [1.0, 0.0]
    other = mad.one_shot_from_sweep(sweep, ok, "net", "hydra", 0.9, aa_fn, {"mad"})
    assert other["pgd"] == 0.5 and "aa" not in other["ok"] and len(calls) == 1
