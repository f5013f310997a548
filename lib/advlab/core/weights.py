"""Weight-space helpers shared by the AWP, flat-minima and weight-backdoor notebooks.

Conventions:
  * A *layer tensor* is one named parameter of the model (a conv kernel, a linear matrix, a bias,
    a BatchNorm scale...); its norm ``||w_l||`` is the L2 (Frobenius) norm of the flattened tensor.
  * Weight perturbations are dicts ``{name: tensor}`` with the shapes of the named parameters.
  * ``functional_forward`` evaluates the model at ``w + v`` through ``torch.func.functional_call``,
    so the model itself is never modified (nothing to restore) -- BatchNorm running statistics
    included, even in train mode.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import attacks
from .data import batches
from .progress import progress as progress_bar

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                nn.modules.instancenorm._InstanceNorm)

WHICH = ("conv_linear_weights", "non_norm", "all")


def layer_tensors(model: nn.Module, which: str = "conv_linear_weights") -> dict[str, nn.Parameter]:
    """The model's trainable layer tensors, by name, in registration order.

    ``which``:
      * ``"conv_linear_weights"`` -- tensors whose name contains ``weight`` and that have more
        than one dimension: conv kernels and linear matrices (AWP, official code);
      * ``"non_norm"`` -- every trainable tensor except those of normalisation layers (BatchNorm,
        GroupNorm, LayerNorm, InstanceNorm), biases included (Stutz et al.'s flatness);
      * ``"all"`` -- every trainable tensor (the weight-backdoor code).
    """
    if which not in WHICH:
        raise ValueError(f"unknown layer selection {which!r}; allowed: {list(WHICH)}")
    norm_names = {f"{m_name}.{p_name}" if m_name else p_name
                  for m_name, m in model.named_modules() if isinstance(m, _NORM_LAYERS)
                  for p_name, _ in m.named_parameters(recurse=False)}
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if which == "conv_linear_weights" and not ("weight" in name and p.ndim > 1):
            continue
        if which == "non_norm" and name in norm_names:
            continue
        out[name] = p
    return out


def layer_norms(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{name: ||t||_2}`` of each tensor (flattened), as Python floats."""
    return {k: t.detach().norm().item() for k, t in tensors.items()}


def functional_forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``x`` with the parameters in ``params`` substituted.

    ``params`` may name a subset of the parameters (the others are the model's own).  The model
    runs in its current mode; in train mode BatchNorm updates *copies* of its running
    statistics (or the given ``buffers``), never the model's own, so the model is left exactly as
    it was.  Gradients flow to whatever tensors ``params`` holds.
    """
    if model.training and buffers is None:
        buffers = {k: b.clone() for k, b in model.named_buffers()}
    return functional_call(model, {**params, **(buffers or {})}, (x,))


class PerturbedModel(nn.Module):
    """``model`` evaluated at the parameters ``params`` (``functional_forward``), as a module.

    Attacks and evaluation helpers that expect an ``nn.Module`` can run on it; ``model`` is a
    submodule (so ``.eval()`` and ``.parameters()`` reach it) and is never modified.
    """

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.params = model, params

    def forward(self, x):
        return functional_forward(self.model, self.params, x)


def add_perturbation(params: dict[str, torch.Tensor], v: dict[str, torch.Tensor],
                     scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``{name: params[name] + scale * v[name]}`` for the names in ``v`` (new tensors)."""
    return {k: params[k].detach() + scale * d for k, d in v.items()}


def filter_normalized_direction(model: nn.Module, which: str = "conv_linear_weights",
                                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A Gaussian direction in weight space, filter-normalised (Li et al., 2018).

    For every selected tensor with ``ndim > 1`` the direction is drawn from N(0, I) and each
    output filter ``d[i]`` is rescaled to the norm of the matching filter ``w[i]``; 1-D tensors
    (biases, BatchNorm scales) get a zero direction.  Returns ``{name: d}``, shapes as the
    parameters, so ``w + alpha * d`` moves every filter by ``alpha`` times its own scale.
    """
    out = {}
    for name, w in layer_tensors(model, which).items():
        w = w.detach()
        if w.ndim <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator).to(w)
        w_n = w.flatten(1).norm(dim=1)
        d_n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        out[name] = d * (w_n / d_n).view(-1, *([1] * (w.ndim - 1)))
    return out


def relative_sphere_sample(params: dict[str, torch.Tensor], xi: float,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random perturbation with ``||v_l|| = xi * ||w_l||`` for every layer (uniform direction
    on each layer's sphere)."""
    out = {}
    for name, w in params.items():
        z = torch.randn(w.shape, generator=generator).to(w)
        out[name] = xi * w.detach().norm() * z / z.norm().clamp_min(1e-12)
    return out


def relative_ball_project(v: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
                          xi: float) -> dict[str, torch.Tensor]:
    """Project each ``v_l`` onto the ball ``||v_l|| <= xi * ||w_l||`` (per layer)."""
    out = {}
    for name, d in v.items():
        radius = xi * params[name].detach().norm()
        out[name] = d * (radius / d.norm().clamp_min(1e-12)).clamp(max=1.0)
    return out


def robust_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                params: dict[str, torch.Tensor] | None = None, steps: int = 10,
                alpha: float | None = None, batch_size: int = 500) -> tuple[float, float]:
    """(mean robust cross-entropy, robust accuracy) of the model at weights ``params``.

    PGD-``steps`` (Linf, random start) is re-run *at the given weights*, in eval mode, so the
    adversarial examples belong to the perturbed model.  ``params=None``: the model's own.
    """
    dev = next(model.parameters()).device
    params = {} if params is None else params
    tot_loss, correct = 0.0, 0
    f = PerturbedModel(model, params)
    with attacks.eval_mode(model):
        for xb, yb in batches(x, y, batch_size):
            xb, yb = xb.to(dev), yb.to(dev)
            x_adv = attacks.pgd(f, xb, yb, eps, alpha, steps) if eps > 0 and steps > 0 else xb
            with torch.no_grad():
                logits = f(x_adv)
            tot_loss += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return tot_loss / len(x), correct / len(x)


def weight_loss_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          direction: dict[str, torch.Tensor], alphas, eps: float,
                          steps: int = 10, batch_size: int = 500, progress: bool = False) -> dict:
    """The 1-D weight-loss landscape ``alpha -> RLoss(w + alpha * d)``.

    For each ``alpha`` in ``alphas`` the robust loss (``robust_loss``: PGD re-crafted at the
    perturbed weights, eval mode, BN statistics of the unperturbed model) is measured on (x, y).
    ``eps = 0`` gives the clean-loss landscape.  Returns lists ``alpha``, ``loss``, ``acc``.
    """
    base = {k: p.detach() for k, p in model.named_parameters() if k in direction}
    out = {"alpha": [], "loss": [], "acc": []}
    for a in progress_bar(list(alphas), desc="landscape", disable=not progress, leave=False):
        params = add_perturbation(base, direction, float(a))
        loss, acc = robust_loss(model, x, y, eps, params, steps, batch_size=batch_size)
        out["alpha"].append(float(a))
        out["loss"].append(loss)
        out["acc"].append(acc)
    return out


def landscape_sharpness(curve: dict, at: float = 0.5) -> float:
    """Mean rise of the landscape at ``alpha = +-at`` over its value at ``alpha = 0``.

    ``curve`` is the dict of ``weight_loss_landscape``; ``at`` must be one of its alphas (and so
    must ``-at`` and 0).  Smaller = flatter.
    """
    a = curve["alpha"]

    def value(t):
        i = min(range(len(a)), key=lambda j: abs(a[j] - t))
        if not math.isclose(a[i], t, abs_tol=1e-9):
            raise ValueError(f"alpha {t} not in the landscape's grid {a}")
        return curve["loss"][i]

    return 0.5 * (value(at) + value(-at)) - value(0.0)
