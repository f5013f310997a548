"""Pruning masks: exact sparsity, ranking, per-row rule, enforcement during training with
momentum and weight decay, and sparsity accounting over prunable weights only."""
import pytest
import torch
from torch import nn

from advlab.core import pruning, training


def toy_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"conv": torch.randn(8, 3, 3, 3, generator=g), "fc1": torch.randn(16, 72, generator=g),
            "fc2": torch.randn(10, 16, generator=g)}


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 0.99])
def test_global_mask_has_exactly_the_requested_sparsity(p):
    scores = toy_scores()
    masks = pruning.masks_from_scores(scores, p)
    n = sum(s.numel() for s in scores.values())
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(p * n)
    assert pruning.mask_sparsity(masks) == pytest.approx(round(p * n) / n)
    assert all(m.shape == scores[k].shape and m.dtype == torch.bool for k, m in masks.items())


def test_global_mask_keeps_the_highest_scores_across_layers():
    scores = toy_scores()
    masks = pruning.masks_from_scores(scores, 0.7)
    kept = torch.cat([s[m] for s, m in zip(scores.values(), masks.values())])
    removed = torch.cat([s[~m] for s, m in zip(scores.values(), masks.values())])
    assert kept.min() >= removed.max()
    # global ranking: layers with larger scores keep more
    scores["fc1"] = scores["fc1"] + 100
    kept = pruning.kept_per_layer(pruning.masks_from_scores(scores, 0.7))
    assert kept["fc1"] > 0.35 and kept["conv"] == 0.0 and kept["fc2"] == 0.0


def test_ties_are_broken_randomly_not_by_position():
    scores = {"first": torch.zeros(1000), "second": torch.zeros(1000)}  # all tied
    kept = pruning.kept_per_layer(pruning.masks_from_scores(scores, 0.5))
    assert abs(kept["first"] - 0.5) < 0.06 and abs(kept["second"] - 0.5) < 0.06
    again = pruning.masks_from_scores(scores, 0.5)
    assert torch.equal(again["first"], pruning.masks_from_scores(scores, 0.5)["first"])


def test_per_row_layer_loses_the_same_fraction_in_every_row():
    scores = toy_scores()
    scores["fc2"][0] += 100  # a row with huge scores still loses its share
    masks = pruning.masks_from_scores(scores, 0.5, per_row=("fc2",))
    assert ((~masks["fc2"]).sum(1) == 8).all()
    row = scores["fc2"][3]
    assert row[masks["fc2"][3]].min() >= row[~masks["fc2"][3]].max()
    pool = {k: v for k, v in scores.items() if k != "fc2"}
    removed = sum(int((~masks[k]).sum()) for k in pool)
    assert removed == round(0.5 * sum(v.numel() for v in pool.values()))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.5"])
def test_bad_sparsity_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="sparsity"):
        pruning.masks_from_scores(toy_scores(), bad)


def test_bad_scores_and_layers_are_clear_errors():
    s = toy_scores()
    s["fc1"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc1"):
        pruning.masks_from_scores(s, 0.5)
    with pytest.raises(KeyError, match="nope"):
        pruning.masks_from_scores(toy_scores(), 0.5, per_row=("nope",))
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(KeyError, match="prunable"):
        pruning.apply_masks(model, {"x": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        pruning.apply_masks(model, {"0": torch.ones(4, 3, dtype=torch.bool)})


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))


def test_prunable_layers_and_classifier():
    m = bn_model()
    assert list(pruning.prunable_layers(m)) == ["0", "4", "6"]
    assert pruning.classifier_name(m) == "6"
    with pytest.raises(ValueError, match="Linear"):
        pruning.classifier_name(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_sparsity_counts_prunable_weights_only():
    m = bn_model()
    with torch.no_grad():
        m[1].weight.zero_()   # BatchNorm weights and
        m[4].bias.zero_()     # biases are not prunable weights: not counted
    assert pruning.weight_sparsity(m) == 0.0
    masks = pruning.masks_from_scores({n: layer.weight.abs() for n, layer in
                                       pruning.prunable_layers(m).items()}, 0.8)
    pruning.apply_masks(m, masks)
    n = sum(layer.weight.numel() for layer in pruning.prunable_layers(m).values())
    assert pruning.weight_sparsity(m) == pytest.approx(round(0.8 * n) / n)
    per_layer = pruning.weight_sparsity(m, per_layer=True)
    assert per_layer == pytest.approx({k: 1 - v for k, v in pruning.kept_per_layer(masks).items()})


@pytest.mark.parametrize("enforce", [True, False])
def test_masks_survive_training_with_momentum_and_weight_decay(enforce):
    m = bn_model()
    masks = pruning.masks_from_scores({n: layer.weight.abs() for n, layer in
                                       pruning.prunable_layers(m).items()}, 0.6)
    pruning.apply_masks(m, masks)
    before = pruning.weight_sparsity(m)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    hooks = [pruning.MaskEnforcer(masks)] if enforce else []
    cfg = training.TrainConfig(epochs=3, batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-3)
    training.fit(m, (x, y), training.Method("pgd_at", eps=0.1, steps=1), cfg, hooks=hooks,
                 progress=False)
    after = pruning.weight_sparsity(m)
    if enforce:
        assert after == before
        for n, layer in pruning.prunable_layers(m).items():
            assert (layer.weight[~masks[n]] == 0).all()
            assert (layer.weight[masks[n]] != 0).all()  # kept weights still train
    else:  # without the hook, gradients revive pruned weights: the test above can fail
        assert after < before / 2


def test_batchnorm_recalibration_matches_the_data_and_touches_nothing_else():
    m = bn_model().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 8, 8, generator=g) * 3 + 1
    params = {k: v.clone() for k, v in m.named_parameters()}
    pruning.recalibrate_batchnorm(m, x, batch_size=64)
    bn = m[1]
    with torch.no_grad():
        pre = m[0](x)  # the conv output the BN sees
    assert torch.allclose(bn.running_mean, pre.mean((0, 2, 3)), atol=2e-3)  # batch-weighted
    assert torch.allclose(bn.running_var, pre.var((0, 2, 3)), rtol=2e-2)
    assert not m.training and bn.momentum == 0.1
    assert all(torch.equal(v, params[k]) for k, v in m.named_parameters())


def test_sparsity_explorer_builds_and_prunes_a_copy():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    from advlab.papers import mad

    m = bn_model().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=g), torch.randint(0, 3, (20,), generator=g)
    w = mad.sparsity_explorer(m, {"magnitude": mad.magnitude_scores(m)}, x, y, 0.1,
                                  per_row=("6",), bn_data=x, display=False)
    assert [c.description for c in w.children[:2]] == ["method", "sparsity"]
    w.children[1].value = 0.5  # re-renders: prunes a copy, recalibrates its BN
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
