"""Masking Adversarial Damage (Lee, Kim & Ro, CVPR 2022) and the pruning criteria it is
compared with.

Every criterion has one signature::

    scores = criterion(model, batches)      # {layer: float64 tensor shaped like its weight}

where ``batches`` is a list of ``(x_adv, y)`` mini-batches of adversarial examples crafted once
against the dense model (so all criteria see identical data), and a higher score means "more
important, keep it".  ``pruning.masks_from_scores`` turns scores into a mask.  Criteria run
with the model in eval mode (BatchNorm uses its running statistics and is not updated) and
never change the model's weights.

MAD's saliency of weight (i, j) of layer l, per batch (the official ``compute_saliency.py``)::

    1. m = softplus^-1(1);  20 Adam steps (lr 0.1) on CE(f_{w * softplus(m)}(x_adv), y),
       clamping softplus(m) to [1e-4, 1]                      -> which weights to shrink, how much
    2. Delta = w * (1 - softplus(m))                           -> the weight change, out x in*k*k
    3. K-FAC factors at the masked weights, empirical Fisher (true labels):
       A = input second moment, G = output-gradient second moment (conventions below)
    4. S[i, j] = 1/2 * G[i, i] * Delta[i, j] * (Delta[i, :] @ A)[j]
       (row i's share of the quadratic form 1/2 Delta_i^T (G_ii A) Delta_i; can be negative)

and the scores are averaged over batches.  The K-FAC scaling conventions (patches divided by
the spatial size, gradients multiplied back by the batch size and the spatial size) decide how
layers compare in the global ranking, so they follow the official code exactly.

Official code: ByungKwanLee/Masking-Adversarial-Damage (``compute_saliency.py``, the pruning script),
followed for the mask step, the K-FAC conventions and the ranking.  Deviations: one shared set
of adversarial examples for every criterion; biases are not pruned; ties in the ranking are
broken in a seeded random order; HYDRA-style scores (``hydra_scores``) are a short-budget
stand-in for the official HYDRA (Adam over the shared set with fresh PGD, global ranking).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..core.attacks import eval_mode, pgd
from ..core.pruning import masks_from_scores, prunable_layers

SOFTPLUS_INV_1 = math.log(math.e - 1)        # softplus(m) = 1   (mask fully on)
SOFTPLUS_INV_MIN = math.log(math.expm1(1e-4))  # softplus(m) = 1e-4 (mask's lower bound)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in prunable_layers(model).items()}


def _masked_params(weights: dict, factors: dict) -> dict[str, torch.Tensor]:
    """{'<layer>.weight': w * factor} for ``functional_call``."""
    return {f"{n}.weight": weights[n] * factors[n] for n in weights}


# --------------------------------------------------------------------------- MAD, step by step
def optimize_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20,
                   lr: float = 0.1) -> dict[str, torch.Tensor]:
    """Step 1: the soft masks s = softplus(m) in [1e-4, 1] that minimise the adversarial loss
    of the masked network, starting from s = 1 (Adam, weights frozen, eval mode).

    Returns {layer: s} shaped like the weights."""
    w = _weights(model)
    m = {n: torch.full_like(v, SOFTPLUS_INV_1, requires_grad=True) for n, v in w.items()}
    opt = torch.optim.Adam(m.values(), lr=lr)
    with eval_mode(model):
        for _ in range(steps):
            s = {n: F.softplus(v) for n, v in m.items()}
            loss = F.cross_entropy(functional_call(model, _masked_params(w, s), (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for v in m.values():
                    v.clamp_(SOFTPLUS_INV_MIN, SOFTPLUS_INV_1)
    return {n: F.softplus(v).detach() for n, v in m.items()}


def kfac_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 params: dict[str, torch.Tensor] | None = None) -> dict[str, tuple]:
    """Step 3: per prunable layer, the K-FAC input factor A [in*k*k, in*k*k] and the diagonal
    of the output-gradient factor G [out], from one forward/backward of the mean cross-entropy
    with the true labels (empirical Fisher), in float64.

    ``params`` optionally replaces weights for this pass (e.g. the masked ones).  Conventions
    (the KFAC/EigenDamage code MAD builds on), batch size B, L output positions of a conv:
      conv:   a = unfolded input patches / L;   A = sum_{b,l} a a^T / B
              g = dLoss/doutput * B * L;        G = sum_{b,l} g g^T / (B L)
      linear: A = sum_b a a^T / B;              g = dLoss/doutput * B;  G = sum_b g g^T / B
    Forward hooks capture each layer's input and output and are removed before returning.
    """
    layers = prunable_layers(model)
    inputs, outputs = {}, {}

    def capture(name):
        def hook(module, inp, out):
            inputs[name], outputs[name] = inp[0].detach(), out
            return out.clone()  # later in-place ops (ReLU) must not overwrite the captured output
        return hook

    if params is None:
        params = {f"{n}.weight": m.weight for n, m in layers.items()}
    # leaves that require grad, so every layer output is part of the graph
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    handles = [m.register_forward_hook(capture(n)) for n, m in layers.items()]
    try:
        with eval_mode(model):
            logits = functional_call(model, params, (x,))
            loss = F.cross_entropy(logits, y)
            grads = torch.autograd.grad(loss, [outputs[n] for n in layers])
    finally:
        for h in handles:
            h.remove()
    B, out = x.shape[0], {}
    for (n, layer), g in zip(layers.items(), grads):
        a = inputs[n].double()
        g = g.detach().double()
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or isinstance(layer.padding, str):
                raise NotImplementedError(f"{n}: grouped or string-padded convs unsupported")
            patches = F.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            L = patches.shape[-1]
            a = patches.transpose(1, 2).reshape(-1, patches.shape[1]) / L
            g = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]) * B * L
            A = a.T @ a / B
            g_diag = (g * g).sum(0) / (B * L)
        else:
            g = g * B
            A = a.T @ a / B
            g_diag = (g * g).sum(0) / B
        out[n] = (A, g_diag)
    return out


def block_saliency(delta: torch.Tensor, A: torch.Tensor, g_diag: torch.Tensor) -> torch.Tensor:
    """Step 4: S[i, j] = 1/2 G_ii * Delta[i, j] * (Delta[i, :] @ A)[j], shaped like ``delta``.

    ``delta`` is the weight change [out, ...]; rows are output units. Summing S over a row
    gives that row's quadratic form 1/2 G_ii Delta_i^T A Delta_i."""
    d = delta.reshape(delta.shape[0], -1).double()
    return (0.5 * g_diag[:, None] * d * (d @ A)).view(delta.shape)


def diagonal_saliency(delta: torch.Tensor, A: torch.Tensor, g_diag: torch.Tensor) -> torch.Tensor:
    """A diagnostic variant of ``block_saliency``: the loss change of moving weight (i, j)
    *alone*, 1/2 G_ii A_jj Delta[i, j]^2 (never negative), instead of its share of the whole
    row's quadratic form (which contains the cross terms Delta_ij A_jk Delta_ik)."""
    d = delta.reshape(delta.shape[0], -1).double()
    return (0.5 * g_diag[:, None] * torch.diagonal(A)[None, :] * d * d).view(delta.shape)


def mad_scores(model: nn.Module, batches: Batches, mask_steps: int = 20, mask_lr: float = 0.1,
               optimize_mask: bool = True, progress=None, return_diagonal: bool = False):
    """MAD's adversarial saliency, averaged over ``batches`` (float64, shaped like weights).

    ``optimize_mask=False`` is the ablation "MAD without the mask step": Delta = w (removing
    the weight entirely) with K-FAC factors of the dense network.  ``progress``: an optional
    wrapper for the batch iterator (e.g. a tqdm bar).  ``return_diagonal``: also return the
    ``diagonal_saliency`` of the same Delta and factors, as a second dict."""
    w = _weights(model)
    total = {n: torch.zeros_like(v, dtype=torch.float64) for n, v in w.items()}
    diag = {n: torch.zeros_like(v, dtype=torch.float64) for n, v in w.items()}
    it = progress(batches) if progress else batches
    for x, y in it:
        if optimize_mask:
            s = optimize_masks(model, x, y, mask_steps, mask_lr)  # masks start at 1 every batch
            factors = kfac_factors(model, x, y, _masked_params(w, s))
            deltas = {n: w[n] * (1 - s[n]) for n in w}
        else:
            factors = kfac_factors(model, x, y)
            deltas = w
        for n in w:
            total[n] += block_saliency(deltas[n], *factors[n])
            if return_diagonal:
                diag[n] += diagonal_saliency(deltas[n], *factors[n])
    share = {n: t / len(batches) for n, t in total.items()}
    if return_diagonal:
        return share, {n: t / len(batches) for n, t in diag.items()}
    return share


# --------------------------------------------------------------------------- baselines
def random_scores(model: nn.Module, batches: Batches = (), seed: int = 0) -> dict:
    """Uniform random scores (random pruning)."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(v.shape, generator=gen, dtype=torch.float64)
            for n, v in _weights(model).items()}


def magnitude_scores(model: nn.Module, batches: Batches = ()) -> dict:
    """|w|: global lowest-weight-magnitude pruning (LWM)."""
    return {n: v.abs().double().cpu() for n, v in _weights(model).items()}


def _loss_grads(model, batches) -> dict:
    """Mean adversarial cross-entropy gradient w.r.t. each prunable weight (eval mode)."""
    layers = prunable_layers(model)
    total = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in layers.items()}
    with eval_mode(model):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            gs = torch.autograd.grad(loss, [m.weight for m in layers.values()])
            for n, g in zip(layers, gs):
                total[n] += g.double()
    return {n: t / len(batches) for n, t in total.items()}


def taylor_scores(model: nn.Module, batches: Batches) -> dict:
    """First-order adversarial Taylor: |w * dL_adv/dw| (the loss change of removing w, to first
    order)."""
    w = _weights(model)
    return {n: (w[n].double() * g).abs() for n, g in _loss_grads(model, batches).items()}


def fisher_scores(model: nn.Module, batches: Batches, chunk: int = 64) -> dict:
    """Diagonal empirical Fisher (OBD): 1/2 F_ii w_i^2, F_ii = mean over examples of the squared
    per-example gradient of the adversarial cross-entropy (true labels). No mask step, no
    K-FAC blocks: it isolates what those add."""
    w = _weights(model)
    names = [f"{n}.weight" for n in w]
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in names}
    frozen.update(dict(model.named_buffers()))

    def one_loss(p, x, y):
        logits = functional_call(model, {**frozen, **p}, (x[None],))
        return F.cross_entropy(logits, y[None])

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(w[k.removesuffix(".weight")], dtype=torch.float64)
              for k in names}
    n_ex = 0
    with eval_mode(model):
        p = {k: w[k.removesuffix(".weight")] for k in names}
        for x, y in batches:
            for xs, ys in zip(x.split(chunk), y.split(chunk)):
                g = per_example(p, xs, ys)
                for k in names:
                    fisher[k] += (g[k].double() ** 2).sum(0)
                n_ex += len(ys)
    return {k.removesuffix(".weight"): 0.5 * f / n_ex * w[k.removesuffix(".weight")].double() ** 2
            for k, f in fisher.items()}


def hydra_scores(model: nn.Module, batches: Batches, sparsity: float, epochs: int = 3,
                 lr: float = 0.01, per_row: tuple[str, ...] = (), eps: float | None = None,
                 attack_steps: int = 0) -> dict:
    """HYDRA-style importance scores (Sehwag et al. 2020), optimised for one ``sparsity``.

    Scores start at |w| / max|w| * sqrt(6 / fan_in) per layer (HYDRA's scaled init); the
    network's forward uses w * mask, mask = top-k of |scores| (same global + per-row rule as
    every other criterion here), and the adversarial loss is minimised w.r.t. the scores only,
    with a straight-through gradient through the top-k (d mask / d score = 1).  Weights stay
    frozen; BatchNorm uses batch statistics, as HYDRA trains its scores (on a copy, so the
    caller's running statistics are untouched).

    ``attack_steps = 0``: ``batches`` are the shared adversarial batches (crafted against the
    dense network).  ``attack_steps > 0``: ``batches`` hold *clean* images and every step
    crafts fresh PGD-``attack_steps`` (Linf ``eps``) against the current masked network, as
    HYDRA does.  Other deviations from the official HYDRA, for a CPU budget: Adam for
    ``epochs`` passes (HYDRA: SGD, 20 epochs) and global instead of layer-wise top-k."""
    if attack_steps and eps is None:
        raise ValueError("hydra_scores: attack_steps > 0 needs eps")
    w = _weights(model)
    scores = {}
    for n, v in w.items():
        fan_in = v[0].numel()
        scores[n] = (v.abs() / v.abs().max() * math.sqrt(6 / fan_in)).clone().requires_grad_(True)
    opt = torch.optim.Adam(scores.values(), lr=lr)
    model = copy.deepcopy(model).train()
    for _ in range(epochs):
        for x, y in batches:
            keep = masks_from_scores({n: s.detach().abs() for n, s in scores.items()},
                                     sparsity, per_row)
            if attack_steps:
                hard = _masked_params(w, {n: k.to(w[n].dtype) for n, k in keep.items()})
                x = pgd(lambda inp, p=hard: functional_call(model, p, (inp,)), x, y, eps,
                        steps=attack_steps)
            factors = {n: keep[n].to(s.dtype) + s.abs() - s.abs().detach()
                       for n, s in scores.items()}
            loss = F.cross_entropy(functional_call(model, _masked_params(w, factors), (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {n: s.detach().abs().double() for n, s in scores.items()}


CRITERIA = {
    "mad": mad_scores,
    "mad_no_mask": lambda model, batches, **kw: mad_scores(model, batches, optimize_mask=False,
                                                          **kw),
    "mad_diagonal": lambda model, batches, **kw: mad_scores(model, batches,
                                                            return_diagonal=True, **kw)[1],
    "kfac_obd": lambda model, batches, **kw: mad_scores(model, batches, optimize_mask=False,
                                                        return_diagonal=True, **kw)[1],
    "random": random_scores,
    "magnitude": magnitude_scores,
    "taylor": taylor_scores,
    "fisher": fisher_scores,
    "hydra": hydra_scores,
}
"""The criteria by name. 'mad_largest' (the ablation that prunes the *highest* MAD scores
first) is ``-mad``; 'hydra' additionally needs the target sparsity.  Two diagnostics, not
methods of the paper, separate MAD's two ingredients: 'mad_diagonal' (the mask step's Delta,
scored by ``diagonal_saliency``) and 'kfac_obd' (Delta = w, ``diagonal_saliency``: Optimal
Brain Damage with the same K-FAC curvature)."""


# --------------------------------------------------------------------------- explorer

def sparsity_explorer(model, scores: dict, x, y, eps: float, per_row=(), steps: int = 10,
                      bn_data=None, display: bool = True):
    """A sparsity slider and a criterion picker: prunes a copy of ``model`` with that
    criterion's ``scores`` ({method: {layer: scores}}) and shows its clean and PGD accuracy on
    (x, y) next to the kept fraction of every prunable layer.  ``bn_data``: images on which to
    re-estimate BatchNorm statistics after pruning (``pruning.recalibrate_batchnorm``).

    Returns the ``ipywidgets.interactive`` object (``display=False`` only builds it)."""
    import copy

    import ipywidgets as W
    import matplotlib.pyplot as plt

    from ..core import evaluation, pruning

    def show(method, sparsity=0.9):
        masks = pruning.masks_from_scores(scores[method], sparsity, per_row)
        pruned = pruning.apply_masks(copy.deepcopy(model), masks)
        if bn_data is not None:
            pruning.recalibrate_batchnorm(pruned, bn_data)
        clean = evaluation.accuracy(pruned, x, y)
        rob = evaluation.robust_accuracy(pruned, x, y, "pgd", eps, steps=steps, early_stop=True)
        kept = pruning.kept_per_layer(masks)
        fig, ax = plt.subplots(figsize=(7, 2.8))
        ax.bar(range(len(kept)), list(kept.values()), color="tab:blue")
        ax.set_xticks(range(len(kept)), list(kept), rotation=30, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept fraction")
        ax.set_title(f"{method} at {sparsity:.0%} sparsity: clean {clean:.1%}, "
                     f"PGD-{steps} {rob:.1%} ({len(x)} images)", fontsize=10)
        plt.show()

    w = W.interactive(show, method=W.Dropdown(options=list(scores)),
                      sparsity=W.FloatSlider(value=0.9, min=0.0, max=0.995, step=0.005,
                                             readout_format=".3f"))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w
