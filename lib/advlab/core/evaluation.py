"""Clean and robust accuracy on a fixed evaluation subset, plus gradient-masking checks.

Every function takes in-memory tensors ``x`` [N, C, H, W] in [0, 1] and ``y`` [N], runs the
model in eval mode (restoring its mode afterwards), works in mini-batches, and returns plain
Python numbers or tensors so results can go straight into ``metrics.json``.
"""
from __future__ import annotations

import torch

from . import attacks
from .data import batches
from .progress import progress as progress_bar


@torch.inference_mode()
def predict(model, x, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels [N] (eval mode)."""
    with attacks.eval_mode(model):
        dev = next(model.parameters()).device
        return torch.cat([model(xb.to(dev)).argmax(1).cpu()
                          for xb, _ in batches(x, x[:, 0, 0, 0], batch_size)])


def correct(model, x, y, batch_size: int = 1000) -> torch.Tensor:
    """Per-example correctness [N] as 0./1. floats (for intervals over examples)."""
    return (predict(model, x, batch_size) == y).float()


def accuracy(model, x, y, batch_size: int = 1000) -> float:
    """Clean accuracy in [0, 1]."""
    return (predict(model, x, batch_size) == y).float().mean().item()


def adversarial_examples(model, x, y, attack: str = "pgd", eps: float = 0.1,
                         batch_size: int = 500, progress: bool = False, **kw) -> torch.Tensor:
    """Run ``attack`` ('pgd', 'fgsm', 'autoattack') in eval mode, batch by batch.

    ``kw`` go to the attack (steps, restarts, norm, alpha, version, ...).
    """
    dev = next(model.parameters()).device
    if attack not in ("pgd", "fgsm", "autoattack"):
        raise ValueError(f"unknown attack {attack!r}; allowed: ['autoattack', 'fgsm', 'pgd']")
    if attack == "autoattack":
        norm = {"linf": "Linf", "l2": "L2"}.get(kw.pop("norm", "linf"), "Linf")
        return attacks.autoattack(model, x.to(dev), y.to(dev), eps, norm=norm,
                                  batch_size=batch_size, **kw).cpu()
    fn = attacks.pgd if attack == "pgd" else attacks.fgsm
    out = []
    with attacks.eval_mode(model):
        it = batches(x, y, batch_size)
        for xb, yb in progress_bar(it, total=-(-len(x) // batch_size), desc=attack,
                                   disable=not progress, leave=False):
            out.append(fn(model, xb.to(dev), yb.to(dev), eps, **kw).cpu())
    return torch.cat(out)


def robust_accuracy(model, x, y, attack: str = "pgd", eps: float = 0.1, **kw) -> float:
    """Accuracy on adversarial examples of ``attack`` (see ``adversarial_examples``)."""
    return accuracy(model, adversarial_examples(model, x, y, attack, eps, **kw), y)


def per_class_accuracy(model, x, y, num_classes: int | None = None) -> list[float]:
    """Accuracy per class, [K] (NaN for a class absent from ``y``)."""
    pred = predict(model, x)
    k = num_classes or int(y.max()) + 1
    return [((pred[y == c] == c).float().mean().item() if (y == c).any() else float("nan"))
            for c in range(k)]


def robust_accuracy_curve(model, x, y, epsilons, steps: int = 20, restarts: int = 1,
                          norm: str = "linf") -> list[float]:
    """PGD robust accuracy at each eps in ``epsilons`` (eps = 0 gives clean accuracy)."""
    return [accuracy(model, x, y) if e == 0 else
            robust_accuracy(model, x, y, "pgd", e, steps=steps, restarts=restarts, norm=norm)
            for e in epsilons]


def gradient_masking_checks(model, x, y, eps: float, *, pgd_acc: float | None = None,
                            aa_acc: float | None = None, large_eps: float = 0.5,
                            steps: int = 20, tol: float = 0.02) -> dict:
    """Sanity checks against gradient masking (Athalye et al. 2018; Carlini et al. 2019).

    1. Robust accuracy does not increase with eps (within ``tol``) on [0, eps/2, eps, 2eps].
    2. At ``large_eps`` (0.5 on [0,1] images) PGD drives accuracy to about 0 (<= 0.05).
    3. If given, the AutoAttack accuracy is not above the PGD accuracy (+ ``tol``).
    Returns {check: {value..., 'passed': bool}} and 'all_passed'.
    """
    eps_grid = [0.0, eps / 2, eps, min(2 * eps, 1.0)]
    curve = robust_accuracy_curve(model, x, y, eps_grid, steps=steps)
    monotone = all(b <= a + tol for a, b in zip(curve, curve[1:]))
    at_large = robust_accuracy(model, x, y, "pgd", large_eps, steps=steps)
    out = {"monotone_in_eps": {"eps": eps_grid, "accuracy": curve, "passed": bool(monotone)},
           "zero_at_large_eps": {"eps": large_eps, "accuracy": at_large,
                                 "passed": bool(at_large <= 0.05)}}
    if pgd_acc is not None and aa_acc is not None:
        out["autoattack_not_weaker"] = {"pgd": pgd_acc, "autoattack": aa_acc,
                                        "passed": bool(aa_acc <= pgd_acc + tol)}
    out["all_passed"] = bool(all(v["passed"] for v in out.values() if isinstance(v, dict)))
    return out


def transfer_accuracy(source, target, x, y, eps: float, steps: int = 20) -> float:
    """Accuracy of ``target`` on PGD examples crafted on ``source`` (a black-box check)."""
    x_adv = adversarial_examples(source, x, y, "pgd", eps, steps=steps)
    return accuracy(target, x_adv, y)
