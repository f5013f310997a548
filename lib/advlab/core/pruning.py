"""Unstructured pruning masks: what is prunable, masks from scores, applying and enforcing them,
and sparsity accounting.

A *mask* is a dict ``{layer name: bool tensor shaped like that layer's weight}``, True = kept.
*Prunable* means the weight of every ``Conv2d`` and ``Linear`` layer; biases and BatchNorm
parameters are never pruned and never counted, so every sparsity here is "the fraction of
prunable weights that are zero".

A *score* dict has the same keys and shapes (any float dtype); higher score = more important =
kept longer.  ``masks_from_scores`` turns scores into a mask of a requested sparsity, ranking
globally across layers (so the criterion decides how much each layer keeps), except for layers
named in ``per_row``, where each output unit (row) loses the same fraction (MAD's rule for the
classifier, so no class loses all its weights).
"""
from __future__ import annotations

import torch
from torch import nn

from .training import TrainingHook

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv2d and Linear modules of ``model`` in forward-definition order, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def classifier_name(model: nn.Module) -> str:
    """Name of the last Linear layer (the classifier head)."""
    names = [n for n, m in prunable_layers(model).items() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no Linear layer to act as the classifier")
    return names[-1]


def _check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity must be a fraction in [0, 1); got {sparsity!r}")


def _lowest(s: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of the ``k`` lowest entries of the 1-D ``s``; ties broken in a seeded random
    order, not by position (criteria such as MAD give many weights exactly 0, and breaking
    those ties by position would prune the first layers first)."""
    perm = torch.randperm(s.numel(), generator=gen)
    return perm[torch.argsort(s[perm], stable=True)[:k]]


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float,
                      per_row: tuple[str, ...] | list[str] = (), seed: int = 0
                      ) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights; remove ``sparsity`` of them.

    Layers not in ``per_row`` form one global pool: exactly ``round(sparsity * N_pool)`` of its
    weights with the lowest scores are removed (ties broken in a random order drawn from
    ``seed``).  Each layer in ``per_row`` loses ``round(sparsity * row_length)`` weights in
    every row (output unit).  Returns {name: bool mask}, True = kept.
    """
    _check_sparsity(sparsity)
    unknown = [n for n in per_row if n not in scores]
    if unknown:
        raise KeyError(f"per_row layers {unknown} have no scores; layers: {list(scores)}")
    for n, s in scores.items():
        if not torch.isfinite(s).all():
            raise ValueError(f"scores of layer {n!r} contain NaN or inf")
    masks, gen = {}, torch.Generator().manual_seed(seed)
    pool = [n for n in scores if n not in per_row]
    if pool:
        flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in pool])
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[_lowest(flat, round(sparsity * flat.numel()), gen)] = False
        for n, part in zip(pool, keep.split([scores[n].numel() for n in pool])):
            masks[n] = part.view_as(scores[n]).to(scores[n].device)
    for n in per_row:
        s = scores[n].detach().flatten(1).double().cpu()
        k = round(sparsity * s.shape[1])
        keep = torch.ones_like(s, dtype=torch.bool)
        for i, row in enumerate(s):
            keep[i, _lowest(row, k, gen)] = False
        masks[n] = keep.view_as(scores[n]).to(scores[n].device)
    return {n: masks[n] for n in scores}  # the caller's layer order


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned weights of ``model`` in place (returns the model)."""
    layers = prunable_layers(model)
    for n, m in masks.items():
        if n not in layers:
            raise KeyError(f"mask for unknown layer {n!r}; prunable layers: {list(layers)}")
        w = layers[n].weight
        if m.shape != w.shape:
            raise ValueError(f"mask of {n!r} has shape {tuple(m.shape)}, weight {tuple(w.shape)}")
        w.mul_(m.to(w.device, w.dtype))
    return model


class MaskEnforcer(TrainingHook):
    """Keep pruned weights at exactly zero during (fine-)training with ``training.fit``.

    Re-applies the masks right after every ``optimizer.step()``: momentum and weight decay
    still update the pruned entries inside the optimizer, but the forward pass always sees
    them zeroed, so they can never come back.
    """

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    def after_update(self, model) -> None:
        apply_masks(model, self.masks)


def kept_per_layer(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of each layer's weights that the mask keeps."""
    return {n: m.float().mean().item() for n, m in masks.items()}


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of all masked weights that are removed."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1 - kept / total


@torch.no_grad()
def weight_sparsity(model: nn.Module, per_layer: bool = False):
    """Fraction of prunable weights (Conv2d/Linear weights only) that are exactly zero;
    with ``per_layer`` a dict {name: fraction}."""
    layers = prunable_layers(model)
    zeros = {n: int((m.weight == 0).sum()) for n, m in layers.items()}
    if per_layer:
        return {n: zeros[n] / layers[n].weight.numel() for n in layers}
    return sum(zeros.values()) / sum(m.weight.numel() for m in layers.values())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``x`` [N, C, H, W] (in place).

    Pruning changes each layer's pre-activation statistics, so the running statistics learned
    by the dense network no longer fit: a one-shot pruned BN network can collapse to a constant
    prediction although its weights are fine.  This resets the statistics and averages them
    over ``x`` in train mode (cumulative average, no gradients, weights untouched), then
    restores the model's mode.  Returns the model."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    model.train()
    dev = next(model.parameters()).device
    for xb in x.split(batch_size):
        model(xb.to(dev))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return model
