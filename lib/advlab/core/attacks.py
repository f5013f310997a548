"""Input-space attacks: one PGD core, configured by threat model, loss, mask and restarts.

Conventions (all functions):
  * ``x`` is a float tensor [B, C, H, W] with values in [0, 1]; ``y`` int64 labels [B].
  * The returned ``x_adv`` satisfies ``0 <= x_adv <= 1`` and ``||x_adv - x|| <= eps`` in the
    chosen norm (per example), and is detached.
  * Gradients are taken w.r.t. the input only (``torch.autograd.grad``), never accumulated into
    the model's parameters.
  * The model's train/eval mode is left as the caller set it: evaluation code wraps calls in
    ``eval_mode(model)``; training decides through a flag (see ``advlab.core.training``).

The per-norm pieces (``Linf`` / ``L2``: random start, step, projection) follow the small
interface of MadryLab's ``robustness`` package.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


class Linf:
    """The L-infinity ball of radius ``eps``."""

    @staticmethod
    def random(x, eps, generator=None):
        return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps

    @staticmethod
    def step(grad, alpha):
        return alpha * grad.sign()

    @staticmethod
    def project(delta, eps):
        return delta.clamp(-eps, eps)

    @staticmethod
    def norm(delta):
        return delta.flatten(1).abs().amax(1)


class L2:
    """The L2 ball of radius ``eps`` (per example)."""

    @staticmethod
    def random(x, eps, generator=None):
        d = torch.randn(x.shape, generator=generator, device=x.device)
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        r = torch.rand(len(x), generator=generator, device=x.device)
        return d / _expand(n, d) * _expand(r, d) * eps

    @staticmethod
    def step(grad, alpha):
        n = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return alpha * grad / _expand(n, grad)

    @staticmethod
    def project(delta, eps):
        n = delta.flatten(1).norm(dim=1)
        factor = (eps / n.clamp_min(1e-12)).clamp(max=1.0)
        return delta * _expand(factor, delta)

    @staticmethod
    def norm(delta):
        return delta.flatten(1).norm(dim=1)


NORMS = {"linf": Linf, "l2": L2}


def _norm(norm: str):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed: {sorted(NORMS)}")
    return NORMS[norm]


def _check_eps(eps: float, norm: str) -> None:
    upper = 1.0 if norm == "linf" else 100.0
    if not 0 <= eps <= upper:
        raise ValueError(f"eps must be in [0, {upper}] for norm {norm!r} (pixels in [0, 1]); "
                         f"got {eps}")


def attack_loss(logits, y, loss: str = "ce", logits_nat=None, reduction: str = "none"):
    """Per-example attack objectives (larger = more adversarial).

    ``ce``: cross-entropy; ``cw``: the Carlini-Wagner margin max_{j!=y} z_j - z_y;
    ``kl``: KL(p(x_nat) || p(x_adv)) as in TRADES (needs ``logits_nat``).
    """
    if loss == "ce":
        out = F.cross_entropy(logits, y, reduction="none")
    elif loss == "cw":
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
        out = other - true
    elif loss == "kl":
        if logits_nat is None:
            raise ValueError("loss='kl' needs logits_nat")
        out = F.kl_div(F.log_softmax(logits, 1), F.softmax(logits_nat, 1),
                       reduction="none").sum(1)
    else:
        raise ValueError(f"unknown attack loss {loss!r}; allowed: ['ce', 'cw', 'kl']")
    return out.mean() if reduction == "mean" else out


def pgd(model, x, y, eps: float, alpha: float | None = None, steps: int = 10,
        norm: str = "linf", random_start: bool = True, restarts: int = 1,
        mask: torch.Tensor | None = None, loss: str = "ce", targeted: bool = False,
        generator: torch.Generator | None = None, early_stop: bool = False) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) with restarts, keeping the worst case.

    Args:
        model: maps [B, C, H, W] in [0, 1] to logits [B, K].
        x: clean images [B, C, H, W] in [0, 1];  y: labels [B] (the *target* labels when
            ``targeted``, which then minimises the loss towards them).
        eps: radius of the ball (pixel units);  alpha: step size (default 2.5 * eps / steps).
        norm: 'linf' or 'l2'.  restarts: independent runs; per example the run that
            misclassifies (or, among equals, has the highest loss) is kept.
        mask: optional {0, 1} tensor broadcastable to ``x``: only pixels where it is 1 move.
        loss: 'ce' | 'cw' | 'kl' (see ``attack_loss``; 'kl' uses the model's clean logits).
        early_stop: untargeted evaluation shortcut: an example stops moving at the first
            iterate that the model misclassifies (that iterate is returned), and later
            restarts only attack the examples still classified correctly.  The returned
            accuracy can only be lower or equal (success at any step counts), and the work
            shrinks as examples fall -- as AutoAttack attacks only the still-robust points.
    Returns:
        x_adv [B, C, H, W], detached, in [0, 1] and within ``eps`` of ``x``.
    """
    _check_eps(eps, norm)
    ball = _norm(norm)
    if steps < 0 or restarts < 1:
        raise ValueError(f"steps must be >= 0 and restarts >= 1, got {steps}, {restarts}")
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else alpha
    x = x.detach()
    logits_nat = None
    if loss == "kl":
        with torch.no_grad():
            logits_nat = model(x)
    sign = -1.0 if targeted else 1.0
    if early_stop:
        if targeted or logits_nat is not None:
            raise ValueError("early_stop is for untargeted 'ce'/'cw' evaluation attacks")
        return _pgd_early_stop(model, x, y, eps, alpha, steps, ball, random_start, restarts,
                               mask, loss, generator)
    best_x, best_loss, best_wrong = x.clone(), None, None
    for _ in range(restarts):
        delta = ball.random(x, eps, generator) if random_start else torch.zeros_like(x)
        if mask is not None:
            delta = delta * mask
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        for _ in range(steps):
            obj = attack_loss(model(x + delta), y, loss, logits_nat)
            (grad,) = torch.autograd.grad(sign * obj.sum(), delta)
            with torch.no_grad():
                step = ball.step(grad, alpha)
                if mask is not None:
                    step = step * mask
                d = ball.project(delta + step, eps)
                d = (x + d).clamp(0, 1) - x  # stay in the image box; still inside the ball
            delta = d.requires_grad_(True)
        x_adv = (x + delta).detach()
        if restarts == 1:
            return x_adv
        with torch.no_grad():
            logits = model(x_adv)
            cur_loss = sign * attack_loss(logits, y, loss, logits_nat)
            wrong = (logits.argmax(1) == y) if targeted else (logits.argmax(1) != y)
        if best_loss is None:
            best_x, best_loss, best_wrong = x_adv, cur_loss, wrong
            continue
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (cur_loss > best_loss))
        best_x = torch.where(_expand(better, x), x_adv, best_x)
        best_loss = torch.where(better, cur_loss, best_loss)
        best_wrong = best_wrong | wrong
    return best_x


def _pgd_early_stop(model, x, y, eps, alpha, steps, ball, random_start, restarts, mask, loss,
                    generator):
    """``pgd`` where each example stops at its first misclassified iterate (see ``pgd``)."""
    per_example = mask is not None and mask.dim() == x.dim() and mask.shape[0] == len(x) > 1
    x_adv = x.clone()
    with torch.no_grad():
        fooled = model(x).argmax(1) != y        # already wrong on the clean input
    for _ in range(restarts):
        idx = (~fooled).nonzero().flatten()     # examples still classified correctly
        if not len(idx):
            break
        xi, yi = x[idx], y[idx]
        mi = mask[idx] if per_example else mask
        delta = ball.random(xi, eps, generator) if random_start else torch.zeros_like(xi)
        if mi is not None:
            delta = delta * mi
        delta = (xi + delta).clamp(0, 1) - xi
        for step in range(steps + 1):
            delta.requires_grad_(True)
            logits = model(xi + delta)
            wrong = logits.argmax(1) != yi
            x_adv[idx] = (xi + delta).detach()  # survivors keep their latest iterate
            fooled[idx[wrong]] = True           # successes are final: drop them
            if step == steps or wrong.all():
                break
            keep = ~wrong
            (grad,) = torch.autograd.grad(attack_loss(logits, yi, loss)[keep].sum(), delta)
            with torch.no_grad():
                idx, xi, yi, delta, grad = idx[keep], xi[keep], yi[keep], delta[keep], grad[keep]
                if per_example:
                    mi = mi[keep]
                st = ball.step(grad, alpha)
                if mi is not None:
                    st = st * mi
                d = ball.project(delta + st, eps)
                delta = (xi + d).clamp(0, 1) - xi
    return x_adv


def fgsm(model, x, y, eps: float, random_start: bool = False, alpha: float | None = None,
         generator=None) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015); with ``random_start`` the FGSM-RS of Wong et al. 2020
    (uniform start, step ``alpha`` = 1.25 eps by default)."""
    if random_start:
        return pgd(model, x, y, eps, alpha=1.25 * eps if alpha is None else alpha, steps=1,
                   random_start=True, generator=generator)
    return pgd(model, x, y, eps, alpha=eps, steps=1, random_start=False)


def set_apgd_iterations(apgd, n_iter: int) -> None:
    """Give an APGD attack of ``pyautoattack`` ``n_iter`` iterations *and* the step-size
    schedule that goes with them.  APGD computes its checkpoints (when the step may be halved:
    ``n_iter_2`` = 22%, ``n_iter_min`` = 6%, ``size_decr`` = 3% of the iterations) in its
    constructor, so setting ``n_iter`` afterwards would keep the 100-iteration schedule; this
    recomputes them with the official formulas (``autopgd_base.py``)."""
    apgd.n_iter = apgd.n_iter_orig = int(n_iter)
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def autoattack(model, x, y, eps: float, norm: str = "Linf", version: str = "standard",
               n_iter: int = 100, n_target_classes: int = 9, batch_size: int = 500,
               seed: int = 0, verbose: bool = False) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through ``pyautoattack``, the official code on PyPI.

    ``version='standard'`` runs APGD-CE, APGD-T, FAB-T and Square with the official settings.
    ``version='lite'`` is the cheaper CPU subset used by the default profile: APGD-CE +
    APGD-T only, with ``n_iter`` iterations and ``n_target_classes`` targets -- always label
    numbers obtained with it "AA-lite".  Returns x_adv (same contract as ``pgd``).
    """
    from pyautoattack import AutoAttack

    if version not in ("standard", "lite"):
        raise ValueError(f"unknown AutoAttack version {version!r}; allowed: ['standard', 'lite']")
    _check_eps(eps, norm.lower())
    with eval_mode(model):
        dev = next(model.parameters()).device
        if version == "standard":
            adversary = AutoAttack(model, norm=norm, eps=eps, version="standard",
                                   device=str(dev), seed=seed)
        else:
            adversary = AutoAttack(model, norm=norm, eps=eps, version="custom",
                                   attacks=["apgd-ce", "apgd-t"], device=str(dev), seed=seed)
            adversary.apgd.n_restarts = 1
            adversary.apgd_targeted.n_target_classes = n_target_classes
            for apgd in (adversary.apgd, adversary.apgd_targeted):
                set_apgd_iterations(apgd, n_iter)
        adversary.verbose = verbose
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()
