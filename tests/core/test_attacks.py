"""Properties every attack must have: it stays in the eps-ball and in [0, 1], it raises the
loss, restarts keep the worst case, masks confine it, and it agrees with torchattacks."""
import pytest
import torch
import torch.nn.functional as F

from advlab.core import attacks, evaluation

EPS = 0.1


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_stays_in_ball_and_box(trained_model, tiny_batch, norm, eps):
    x, y = tiny_batch
    x_adv = attacks.pgd(trained_model, x, y, eps, steps=10, norm=norm, restarts=2)
    dist = attacks.NORMS[norm].norm(x_adv - x)
    assert dist.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_raises_the_loss(trained_model, tiny_batch, norm, eps):
    x, y = tiny_batch
    x_adv = attacks.pgd(trained_model, x, y, eps, steps=10, norm=norm)
    noise = (x + attacks.NORMS[norm].random(x, eps)).clamp(0, 1)
    l_clean, l_noise, l_adv = ce(trained_model, x, y), ce(trained_model, noise, y), \
        ce(trained_model, x_adv, y)
    assert l_adv.mean() > 2 * l_clean.mean()
    assert l_adv.mean() > l_noise.mean()
    assert (l_adv >= l_clean - 1e-4).float().mean() > 0.95


def test_pgd_does_not_touch_parameter_grads(trained_model, tiny_batch):
    x, y = tiny_batch
    for p in trained_model.parameters():
        p.grad = None
    attacks.pgd(trained_model, x, y, EPS, steps=2)
    assert all(p.grad is None for p in trained_model.parameters())


def test_restarts_keep_the_worst_case(trained_model, tiny_batch):
    x, y = tiny_batch
    g = torch.Generator().manual_seed(3)
    best = attacks.pgd(trained_model, x, y, EPS, steps=3, restarts=3, generator=g)
    g = torch.Generator().manual_seed(3)  # the same three random starts, one at a time
    singles = [attacks.pgd(trained_model, x, y, EPS, steps=3, generator=g) for _ in range(3)]
    wrong = torch.stack([trained_model(s).argmax(1) != y for s in singles]).detach()
    losses = torch.stack([ce(trained_model, s, y) for s in singles])
    best_wrong = trained_model(best).argmax(1) != y
    best_loss = ce(trained_model, best, y)
    # misclassified whenever any restart misclassifies
    assert torch.equal(best_wrong, wrong.any(0))
    # and, among restarts with the same outcome, the one with the highest loss
    for i in range(len(y)):
        cand = losses[:, i][wrong[:, i] == best_wrong[i]]
        assert best_loss[i] >= cand.max() - 1e-5


def test_mask_confines_the_perturbation(trained_model, tiny_batch):
    x, y = tiny_batch
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 10:18, 10:18] = 1
    x_adv = attacks.pgd(trained_model, x, y, 0.3, steps=5, mask=mask)
    delta = (x_adv - x).abs()
    assert delta[..., mask[0, 0] == 0].max() == 0
    assert delta[..., mask[0, 0] == 1].max() > 0


def test_targeted_pgd_moves_towards_target(trained_model, tiny_batch):
    x, y = tiny_batch
    target = (y + 1) % 10
    x_adv = attacks.pgd(trained_model, x, target, 0.3, steps=20, targeted=True)
    hit = (trained_model(x_adv).argmax(1) == target).float().mean()
    assert hit > 0.5


def test_fgsm_is_a_single_signed_step(trained_model, tiny_batch):
    x, y = tiny_batch
    x_adv = attacks.fgsm(trained_model, x, y, EPS)
    d = (x_adv - x).abs()
    inside = (x > EPS) & (x < 1 - EPS)  # pixels the box constraint cannot clip
    # every such pixel moves by exactly eps (a zero gradient, sign 0, is the only exception)
    assert ((d[inside] - EPS).abs() < 1e-6).float().mean() > 0.95
    assert d.max() <= EPS + 1e-6


def test_matches_torchattacks_pgd(trained_model, fmnist):
    """Same model, same eps/alpha/steps, no random start: the two PGDs agree pixel-wise
    (up to gradient-sign ties) and in robust accuracy within 1 point."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = fmnist[2][:200], fmnist[3][:200]
    ours = attacks.pgd(trained_model, x, y, EPS, alpha=0.01, steps=10, random_start=False)
    ref = torchattacks.PGD(trained_model, eps=EPS, alpha=0.01, steps=10, random_start=False)(x, y)
    assert ((ours - ref).abs() < 1e-5).float().mean() > 0.99
    acc = [evaluation.accuracy(trained_model, a, y) for a in (ours, ref)]
    assert abs(acc[0] - acc[1]) <= 0.01


def test_autoattack_lite_is_valid_and_not_weaker_than_clean(trained_model, fmnist):
    x, y = fmnist[2][:40], fmnist[3][:40]
    x_adv = attacks.autoattack(trained_model, x, y, EPS, version="lite", n_iter=10,
                               n_target_classes=2, batch_size=40)
    assert (x_adv - x).abs().max() <= EPS + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean = evaluation.accuracy(trained_model, x, y)
    assert evaluation.accuracy(trained_model, x_adv, y) < clean


def test_eval_mode_restores_training_flag(trained_model):
    trained_model.train()
    with attacks.eval_mode(trained_model):
        assert not trained_model.training
    assert trained_model.training
    trained_model.eval()


@pytest.mark.parametrize("kwargs,match", [({"eps": 1.5}, "eps must be in"),
                                          ({"eps": -0.1}, "eps must be in"),
                                          ({"eps": 0.1, "norm": "l7"}, "unknown norm"),
                                          ({"eps": 0.1, "loss": "hinge"}, "unknown attack loss")])
def test_bad_arguments_fail_clearly(trained_model, tiny_batch, kwargs, match):
    x, y = tiny_batch
    with pytest.raises(ValueError, match=match):
        attacks.pgd(trained_model, x[:2], y[:2], steps=1, **kwargs)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.8)])
def test_early_stop_is_valid_and_never_weaker(trained_model, tiny_batch, norm, eps):
    """Early stopping follows plain PGD's trajectory until an example is fooled, so with a
    fixed start it can only find more (or the same) adversarial examples."""
    x, y = tiny_batch
    plain = attacks.pgd(trained_model, x, y, eps, steps=10, norm=norm, random_start=False)
    early = attacks.pgd(trained_model, x, y, eps, steps=10, norm=norm, random_start=False,
                        early_stop=True)
    assert attacks.NORMS[norm].norm(early - x).max() <= eps + 1e-5
    assert early.min() >= 0 and early.max() <= 1 and not early.requires_grad
    acc_plain = evaluation.accuracy(trained_model, plain, y)
    acc_early = evaluation.accuracy(trained_model, early, y)
    assert acc_early <= acc_plain + 1 / len(y)
    assert acc_early < evaluation.accuracy(trained_model, x, y)  # it does attack
    g = torch.Generator().manual_seed(0)
    restarted = attacks.pgd(trained_model, x, y, eps, steps=3, norm=norm, restarts=3,
                            early_stop=True, generator=g)
    assert attacks.NORMS[norm].norm(restarted - x).max() <= eps + 1e-5


def test_early_stop_refuses_targeted_and_kl(trained_model, tiny_batch):
    x, y = tiny_batch
    for kw in ({"targeted": True}, {"loss": "kl"}):
        with pytest.raises(ValueError, match="early_stop"):
            attacks.pgd(trained_model, x, y, EPS, steps=2, early_stop=True, **kw)


def test_aa_lite_runs_the_step_schedule_of_its_own_iterations(monkeypatch):
    """APGD fixes its step-size checkpoints in its constructor: AA-lite with 50 iterations must
    halve the step at the 50-iteration checkpoints (22/6/3% of 50), not the 100-iteration ones."""
    import pyautoattack

    from advlab.core import models

    seen = {}

    def capture(self, x, y, batch_size=None, **kw):
        for name, a in (("ce", self.apgd), ("t", self.apgd_targeted)):
            seen[name] = (a.n_iter, a.n_iter_2, a.n_iter_min, a.size_decr)
        return x, y

    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", capture)
    model = models.create_model("small_cnn").eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    attacks.autoattack(model, x, y, 0.1, version="lite", n_iter=50, n_target_classes=3)
    assert seen["ce"] == seen["t"] == (50, 11, 3, 1)
