"""Regional adversarial perturbations (Ozbulak et al., ICML 2020 UDL workshop, arXiv 2007.03198).

The attack is the plain iterative cross-entropy-sign update, masked to a region ``L``::

    t <- a random class != c                     (targeted on the SOURCE model g)
    x_{n+1} = clip_[0,1]( x_n - a * sign(grad_x CE(g(x_n), t)) * L ),   n < N
    stop at the first n with argmax h(x_n) != c   (untargeted success on the TARGET model h)

as in the official code (a = 1/255, N = 250, no epsilon ball).  Regions come in three families
(``center`` square, ``frame`` = complement of a centred square, ``random`` pixels) at a pixel
budget (the fraction of pixel locations that may change), plus ``none`` (the whole image).
Distortion is measured as L0 (fraction of pixel *locations* changed), L2 and Linf of the
final clipped image minus the original.

Shapes: images ``x`` [B, C, H, W] in [0, 1]; labels ``y``, targets ``t`` int64 [B]; masks
[B or 1, 1, H, W] in {0, 1}, shared by all channels.

Official code: utkuozbulak/regional-adversarial-perturbation, whose attack loop this module follows
(step 1/255, 250 steps, oracle stopping on the target).  Deviations: random regions are drawn
from a seeded generator (the official code's Bernoulli pixels are unseeded); the models are a
small Fashion-MNIST zoo trained here (no pretrained ImageNet models offline); every target is
read on one batched source trajectory (equal to separate runs per pair, a test checks); and
``fixed_budget_transfer`` adds a pure-transfer variant the paper does not run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import attacks
from ..core.progress import progress as progress_bar

FAMILIES = ("center", "frame", "random")


# --------------------------------------------------------------------------- masks
def _nearest_side(area: float) -> int:
    """The integer side s whose square s*s is nearest to ``area``."""
    s = math.floor(math.sqrt(area))
    return s if abs(s * s - area) <= abs((s + 1) ** 2 - area) else s + 1


def _square(h: int, w: int, side: int) -> torch.Tensor:
    """A centred ``side`` x ``side`` square of ones in an [h, w] map (1 px off-centre towards
    the top-left when ``h - side`` is odd)."""
    m = torch.zeros(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    m[top:top + side, left:left + side] = 1
    return m


def center_mask(h: int, w: int, frac: float) -> torch.Tensor:
    """[1, 1, h, w]: the centred square whose area is nearest to ``frac * h * w``."""
    return _square(h, w, min(_nearest_side(frac * h * w), min(h, w)))[None, None]


def frame_mask(h: int, w: int, frac: float) -> torch.Tensor:
    """[1, 1, h, w]: the border left when the centred square of area nearest to
    ``(1 - frac) * h * w`` is removed (the official code's ``1 - center_square``)."""
    return 1 - _square(h, w, min(_nearest_side((1 - frac) * h * w), min(h, w)))[None, None]


def random_masks(n: int, h: int, w: int, frac: float, seed: int) -> torch.Tensor:
    """[n, 1, h, w]: for each image, exactly ``round(frac * h * w)`` pixel locations drawn
    uniformly without replacement from a generator seeded with ``seed``.

    (The official code draws i.i.d. Bernoulli(frac) pixels with unseeded numpy; an exact count
    removes the +-1.3% budget noise at 28 x 28 and makes the masks reproducible.)
    """
    g = torch.Generator().manual_seed(int(seed))
    k = round(frac * h * w)
    order = torch.argsort(torch.rand(n, h * w, generator=g), dim=1)
    m = torch.zeros(n, h * w)
    m.scatter_(1, order[:, :k], 1.0)
    return m.view(n, 1, h, w)


def region_masks(family: str, frac: float, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """[n, 1, h, w] masks of ``family`` ('center' | 'frame' | 'random' | 'none') at ``frac``."""
    if family == "none":
        return torch.ones(n, 1, h, w)
    if family == "center":
        return center_mask(h, w, frac).expand(n, 1, h, w).clone()
    if family == "frame":
        return frame_mask(h, w, frac).expand(n, 1, h, w).clone()
    if family == "random":
        return random_masks(n, h, w, frac, seed)
    raise ValueError(f"unknown region family {family!r}; allowed: {[*FAMILIES, 'none']}")


def mask_name(family: str, frac: float | None = None) -> str:
    """'center_16', 'frame_28', ..., or 'none'."""
    return "none" if family == "none" else f"{family}_{round(100 * frac)}"


# --------------------------------------------------------------------------- norms
def lp_norms(x_adv: torch.Tensor, x0: torch.Tensor, tol: float = 1e-6) -> dict:
    """Distortion of ``x_adv`` from ``x0`` ([B, C, H, W], pixels in [0, 1]), per image.

    Returns {'l0': fraction of pixel locations where any channel changed by more than ``tol``,
    'l2': Euclidean norm over all C*H*W entries, 'linf': max |change|}, each a float tensor [B].
    L0 counts locations, not channel entries: one changed RGB pixel is 1/(H*W), not 3/(H*W).
    """
    d = (x_adv - x0).flatten(2)          # [B, C, H*W]
    changed = (d.abs() > tol).any(1)     # [B, H*W]
    return {"l0": changed.float().mean(1),
            "l2": d.flatten(1).norm(dim=1),
            "linf": d.flatten(1).abs().amax(1)}


# --------------------------------------------------------------------------- the attack
def random_targets(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A uniformly random class != y for each label (seeded): the attack's targets t [B]."""
    g = torch.Generator().manual_seed(int(seed))
    shift = torch.randint(1, num_classes, y.shape, generator=g)
    return (y + shift) % num_classes


@dataclass
class StopRecord:
    """One stopping rule applied to every image of a batch.

    ``stopped`` bool [B]: the rule fired within ``max_steps``;  ``steps`` int [B]: the step at
    which it fired (``max_steps`` if never);  ``x_adv`` [B, C, H, W]: the iterate at that step
    (the last iterate if it never fired).
    """

    stopped: torch.Tensor
    steps: torch.Tensor
    x_adv: torch.Tensor


@dataclass
class RegionalResult:
    """``oracle[name]``: stop when target ``name``'s label leaves y (the paper's protocol);
    ``source``: stop when the source predicts t (the ``fixed_budget`` variant; None if not
    tracked);  ``active_steps``: total image-steps that needed a gradient (cost);
    ``x_final``: the attack's own iterate when it ended (an image frozen at its last stop)."""

    oracle: dict
    source: StopRecord | None
    active_steps: int
    x_final: torch.Tensor


def _predict(model, x, chunk):
    return torch.cat([model(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)])


def _source_step(source, xn, t, idx, chunk):
    """sign(grad_x CE(g(x), t)) for the images ``idx`` only, and whether g predicts t there."""
    sign, hit_t = [], []
    for i in range(0, len(idx), chunk):
        j = idx[i:i + chunk]
        xa = xn[j].clone().requires_grad_(True)
        logits = source(xa)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, t[j], reduction="sum"), xa)
        sign.append(g.sign())
        hit_t.append(logits.detach().argmax(1) == t[j])
    return torch.cat(sign), torch.cat(hit_t)


def regional_attack(source, x, y, t, mask, targets=None, step: float = 1 / 255,
                    max_steps: int = 250, track_source: bool = False, chunk: int = 1024,
                    progress: bool = False, desc: str = "regional") -> RegionalResult:
    """The masked iterative cross-entropy-sign attack, batched with per-image stopping.

    Args:
        source: model g whose gradients drive the update (eval mode is enforced).
        x, y: clean images [B, C, H, W] in [0, 1] and their labels [B] (correct for every model).
        t: target classes [B] (!= y), e.g. ``random_targets``; the update descends CE(g(x), t).
        mask: {0, 1} [B or 1, 1, H, W]; only pixels where it is 1 move (all channels).
        targets: a model h, or {name: h}; only h's predicted label is read.  For each target
            the image stops at the first step where argmax h(x_n) != y.  None = no oracle.
        step: a (pixel units); max_steps: N.
        track_source: also record the pure-transfer stop: the first step where argmax
            g(x_n) == t (no target query), for ``fixed_budget_transfer``.
    Returns:
        ``RegionalResult``.  An image is *active* while some of its stopping rules has not fired
        and n < N; only active images get gradients, and an inactive image's iterate is frozen.
        With one target and ``track_source=False`` this is exactly the official per-image loop.
        With several targets the source trajectory is shared (the targets are only read, so it
        does not depend on them) and each target's record is the iterate at its own stop step:
        the same numbers as separate runs per pair, at the cost of one.
    """
    if targets is None:
        targets = {}
    elif isinstance(targets, torch.nn.Module):
        targets = {"target": targets}
    if not targets and not track_source:
        raise ValueError("nothing to stop on: give targets and/or track_source=True")
    if not len(x) == len(y) == len(t):
        raise ValueError(f"x, y and t must have the same length; got {len(x)}, {len(y)}, {len(t)}")
    if bool((t == y).any()):
        raise ValueError("targets t must differ from the labels y")
    B = len(x)
    x0 = x.detach()
    mask = mask.to(x0).expand(B, 1, *x0.shape[2:])
    xn = x0.clone()
    dev = x0.device

    def new_record():
        return StopRecord(torch.zeros(B, dtype=torch.bool, device=dev),
                          torch.full((B,), max_steps, dtype=torch.long, device=dev), x0.clone())

    oracle = {name: new_record() for name in targets}
    src = new_record() if track_source else None
    open_ = {name: torch.ones(B, dtype=torch.bool, device=dev) for name in targets}
    src_open = torch.full((B,), track_source, dtype=torch.bool, device=dev)
    models = [source, *targets.values()]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    active_steps = 0
    try:
        bar = progress_bar(range(1, max_steps + 1), desc=desc, disable=not progress, leave=False)
        for n in bar:
            active = src_open.clone()
            for o in open_.values():
                active |= o
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            active_steps += len(idx)
            sign, hit_t = _source_step(source, xn, t, idx, chunk)
            if track_source:  # the source already predicts t at x_{n-1}: pure-transfer stop
                fire = idx[hit_t & src_open[idx]]
                src.stopped[fire], src.steps[fire], src.x_adv[fire] = True, n - 1, xn[fire]
                src_open[fire] = False
                still = src_open[idx].clone()
                for o in open_.values():
                    still |= o[idx]
                idx, sign = idx[still], sign[still]   # images whose every rule fired stay put
            with torch.no_grad():
                xn[idx] = (xn[idx] - step * sign * mask[idx]).clamp_(0, 1)
                for name, h in targets.items():
                    k = idx[open_[name][idx]]
                    if len(k) == 0:
                        continue
                    fire = k[_predict(h, xn[k], chunk) != y[k]]
                    rec = oracle[name]
                    rec.stopped[fire], rec.steps[fire], rec.x_adv[fire] = True, n, xn[fire]
                    open_[name][fire] = False
            bar.set_postfix(active=len(idx))
        with torch.no_grad():
            for name, rec in oracle.items():   # never fired: keep the last iterate
                rec.x_adv[open_[name]] = xn[open_[name]]
            if track_source:
                k = src_open.nonzero().flatten()
                if len(k):
                    hit = _predict(source, xn[k], chunk) == t[k]
                    src.stopped[k[hit]] = True
                src.x_adv[k] = xn[k]
    finally:
        for m, was in zip(models, modes):
            m.train(was)
    return RegionalResult(oracle, src, active_steps, xn)


@torch.no_grad()
def fixed_budget_transfer(x_src: torch.Tensor, y: torch.Tensor, target) -> torch.Tensor:
    """Pure transfer: query ``target`` once on the source-side examples ``x_src`` (e.g.
    ``result.source.x_adv``).  Returns bool [B]: target's label != y."""
    with attacks.eval_mode(target):
        return _predict(target, x_src, 1024) != y


# --------------------------------------------------------------------------- analysis
def paired_lp_test(records, mask: str, norm: str, reference: str = "none") -> dict:
    """Paired comparison of the distortion ``norm`` ('l0' | 'l2' | 'linf') under ``mask`` vs
    ``reference`` on the examples where *both* succeeded (same source, target and image).

    ``records``: a DataFrame with columns source, target, image, mask, success and the norms.
    The unit of the test is the image (log-ratios averaged over the model pairs, which share
    images), tested with a one-sided Wilcoxon signed-rank test.  Returns {'n_pairs', 'n_images',
    'median_ratio' (median over pairs of norm_mask / norm_reference), 'p_lower', 'p_higher'}.
    """
    import numpy as np
    from scipy.stats import wilcoxon

    keys = ["source", "target", "image"]
    a = records[(records["mask"] == mask) & records["success"]][keys + [norm]]
    b = records[(records["mask"] == reference) & records["success"]][keys + [norm]]
    m = a.merge(b, on=keys, suffixes=("", "_ref"))
    out = {"n_pairs": len(m), "n_images": int(m["image"].nunique()), "median_ratio": math.nan,
           "p_lower": math.nan, "p_higher": math.nan}
    if len(m) == 0:
        return out
    log_ratio = np.log(m[norm].clip(lower=1e-12) / m[norm + "_ref"].clip(lower=1e-12))
    out["median_ratio"] = float(np.exp(np.median(log_ratio)))
    per_image = log_ratio.groupby(m["image"]).mean()
    if len(per_image) >= 2 and (per_image != 0).any():
        out["p_lower"] = float(wilcoxon(per_image, alternative="less").pvalue)
        out["p_higher"] = float(wilcoxon(per_image, alternative="greater").pvalue)
    return out


# --------------------------------------------------------------------------- figures
def gallery_figure(x0, y, rows: list, class_names, title: str = ""):
    """Original | mask | perturbation | adversarial, one row per region, for a few images.

    ``x0``: [G, C, H, W] clean images, ``y`` [G] their labels;  ``rows``: dicts with 'label', 'mask' [G, 1, H, W],
    'x_adv' [G, C, H, W], 'pred' [G] (target's label), 'success' [G] bool, 'steps' [G].
    Perturbations are shown in a diverging map scaled to each panel's own max |change|.
    """
    import matplotlib.pyplot as plt

    G = len(x0)
    fig, axes = plt.subplots(len(rows), 4 * G, figsize=(1.55 * 4 * G, 2.1 * len(rows) + 0.4),
                             squeeze=False)
    for r, row in enumerate(rows):
        nrm = lp_norms(row["x_adv"], x0)
        for g in range(G):
            d = (row["x_adv"][g] - x0[g]).mean(0)
            s = max(float(d.abs().max()), 1e-8)
            ok = bool(row["success"][g])
            panels = [(x0[g].mean(0), "gray", 0, 1, class_names[int(y[g])]),
                      (row["mask"][g, 0], "gray", 0, 1, row["label"]),
                      (d, "seismic", -s, s, f"max |d| {s:.2f}"),
                      (row["x_adv"][g].mean(0), "gray", 0, 1,
                       f"{class_names[int(row['pred'][g])]} {'(flip @' + str(int(row['steps'][g])) + ')' if ok else '(no flip)'}")]
            for c, (img, cmap, lo, hi, t) in enumerate(panels):
                ax = axes[r, 4 * g + c]
                ax.imshow(img.detach().cpu().numpy(), cmap=cmap, vmin=lo, vmax=hi)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(t, fontsize=7, color="black" if c < 3 or ok else "tab:red")
                if c == 3:
                    ax.set_xlabel(f"L0 {nrm['l0'][g]:.2f} L2 {nrm['l2'][g]:.2f}\n"
                                  f"Linf {nrm['linf'][g]:.2f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def rate_heatmaps(rates: dict, vmax: float = 1.0, ncols: int = 5):
    """One source x target heatmap per mask: ``rates = {mask: DataFrame(index=source,
    columns=target)}`` (NaN on the diagonal)."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rates)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 3.1 * nrows), squeeze=False)
    fig.subplots_adjust(hspace=0.7)  # room for the rotated tick labels above the next titles
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, df) in zip(axes.flat, rates.items()):
        v = df.to_numpy(dtype=float)
        im = ax.imshow(v, vmin=0, vmax=vmax, cmap="viridis")
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if not np.isnan(v[i, j]):
                    ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v[i, j] < 0.6 * vmax else "black")
        ax.set_xticks(range(len(df.columns)), df.columns, rotation=45, ha="right", fontsize=7)
        first = ax in axes[:, 0]
        ax.set_yticks(range(len(df.index)), df.index if first else [], fontsize=7)
        ax.set_title(f"{name} (mean {np.nanmean(v):.2f})", fontsize=9)
        ax.grid(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("source")
    for ax in axes[-1]:
        ax.set_xlabel("target")
    fig.colorbar(im, ax=axes, shrink=0.6, label="transfer rate")
    return fig


# --------------------------------------------------------------------------- the picker
def region_picker(models: dict, x, y, t, class_names, fracs: dict, step: float = 1 / 255,
                  max_steps: int = 250, seed: int = 0, display: bool = True):
    """An ipywidgets view: pick a family, a budget, an image and a (source, target) pair; the
    attack runs live on that image (when a slider is released or a menu changes, never on
    every tick) and shows original, mask, perturbation and adversarial.

    ``models``: {name: model};  ``fracs``: {family: [budgets]}.  Returns the widget; after
    each update its ``result`` is ``{"mask", "source", "target", "index", "flipped",
    "steps", "l0", "l2", "linf"}``.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    names = list(models)

    def show(family="center", budget=0, index=0, source=names[0], target=names[-1]):
        fams = fracs.get(family, [1.0])
        frac = fams[min(budget, len(fams) - 1)]
        xi, yi, ti = x[index:index + 1], y[index:index + 1], t[index:index + 1]
        m = region_masks(family, frac, 1, *x.shape[2:], seed=seed + index)
        res = regional_attack(models[source], xi, yi, ti, m, {target: models[target]},
                              step, max_steps)
        rec = res.oracle[target]
        xa = rec.x_adv
        nrm = {k: float(v) for k, v in lp_norms(xa, xi).items()}
        with torch.no_grad():
            pred = int(models[target](xa).argmax(1))
        d = (xa - xi)[0, 0]
        s = max(float(d.abs().max()), 1e-8)
        fig, axes = plt.subplots(1, 4, figsize=(9, 2.6))
        panels = [(xi[0, 0], "gray", 0, 1, f"original: {class_names[int(yi)]}"),
                  (m[0, 0], "gray", 0, 1, f"mask {mask_name(family, frac)}"),
                  (d, "seismic", -s, s, f"perturbation (max {s:.2f})"),
                  (xa[0, 0], "gray", 0, 1, f"{target}: {class_names[pred]}")]
        for ax, (img, cmap, lo, hi, title) in zip(axes, panels):
            ax.imshow(img.detach().cpu().numpy(), cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        verdict = f"flipped at step {int(rec.steps)}" if bool(rec.stopped) else "no flip in N steps"
        fig.suptitle(f"{source} -> {target}, target class {class_names[int(ti)]}: {verdict};  "
                     f"L0 {nrm['l0']:.2f}  L2 {nrm['l2']:.2f}  Linf {nrm['linf']:.2f}",
                     fontsize=9)
        plt.show()
        plt.close(fig)
        return {"mask": mask_name(family, frac), "source": source, "target": target,
                "index": index, "flipped": bool(rec.stopped), "steps": int(rec.steps), **nrm}

    w = W.interactive(show, family=W.Dropdown(options=[*FAMILIES, "none"], value="center"),
                      budget=W.IntSlider(0, 0, 2, continuous_update=False),
                      index=W.IntSlider(0, 0, len(x) - 1, continuous_update=False),
                      source=W.Dropdown(options=names, value=names[0]),
                      target=W.Dropdown(options=names, value=names[-1]))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w


# --------------------------------------------------------------------------- the experiment
def region_set(masks: dict, n: int, h: int, w: int, seed: int):
    """The experiment's regions: ``none`` (the whole image) then every (family, budget) of
    ``masks = {family: [budgets]}``.

    Returns ``(mask_list, names, tensors, actual)``: ``mask_list`` [(family, budget)],
    ``names`` ['none', 'center_16', ...], ``tensors[name]`` {0, 1} [n, 1, h, w] (region ``k``
    drawn with seed ``seed + 101 k``), ``actual[name]`` the mean fraction of pixels it covers.
    """
    mask_list = [("none", 1.0)] + [(fam, f) for fam, fracs in masks.items() for f in fracs]
    names = [mask_name(fam, f) for fam, f in mask_list]
    tensors = {name: region_masks(fam, f, n, h, w, seed=seed + 101 * k)
               for k, (name, (fam, f)) in enumerate(zip(names, mask_list))}
    actual = {name: m.flatten(1).mean(1).mean().item() for name, m in tensors.items()}
    return mask_list, names, tensors, actual


@torch.no_grad()
def select_images(models: dict, x, y, n: int, seed: int):
    """Up to ``n`` indices of ``x`` that every model classifies correctly, in a seeded random
    order (the paper attacks images correct for both models).  Returns ``(idx, n_correct)``
    with ``n_correct`` the number of images correct for all models."""
    correct = torch.stack([_predict(m, x.to(next(m.parameters()).device), 1024).cpu() == y
                           for m in models.values()]).all(0)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return order[correct[order]][:n], int(correct.sum())


def masks_figure(x, tensors: dict, actual: dict):
    """One image under every region (region pixels bright, the rest dimmed), titled with the
    region's name and its actual pixel fraction.  ``x`` [C, H, W]; ``tensors[name]``
    [n, 1, H, W]."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tensors), figsize=(1.3 * len(tensors), 1.8))
    for ax, (name, m) in zip(axes, tensors.items()):
        ax.imshow(x.mean(0) * (0.35 + 0.65 * m[0, 0]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}\n{actual[name]:.1%}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def attack_all_pairs(zoo: dict, x, y, t, mask_list, names, tensors, step, max_steps,
                     device="cpu", progress=True):
    """Every ordered (source, target) pair of ``zoo`` x every region x every image: one
    batched ``regional_attack`` per source (all regions in one batch, every other model a
    target), plus the pure-transfer stop queried once per target (``fixed_budget_transfer``).

    ``x, y, t``: the N attacked images [N, C, H, W], labels and targets [N];  ``tensors``:
    ``region_set``'s masks.  Returns ``(records, store, seconds)``: ``records`` a DataFrame
    with one row per (source, target, region, image) [success, steps, l0, l2, linf,
    fixed_success, source_reached_t, background_share, ...]; ``store[(source, target)]`` its
    ``StopRecord`` over the stacked batch (region-major: row ``k * N + i`` is region ``k``,
    image ``i``); ``seconds[source]`` the attack's wall time.
    """
    import time

    import numpy as np
    import pandas as pd

    N, R = len(x), len(names)
    X, Y, T = x.repeat(R, 1, 1, 1).to(device), y.repeat(R).to(device), t.repeat(R).to(device)
    M = torch.cat([tensors[n] for n in names]).to(device)
    region = M.flatten(1).sum(1)
    rows = {"mask": np.repeat(names, N), "family": np.repeat([f for f, _ in mask_list], N),
            "budget": np.repeat([b for _, b in mask_list], N),
            "actual": M.flatten(1).mean(1).cpu().numpy(), "image": np.tile(np.arange(N), R),
            # share of the region that is black background (where darkening is clipped away)
            "background_share": (((X == 0).all(1, keepdim=True) & (M > 0)).flatten(1).sum(1)
                                 / region).cpu().numpy()}
    frames, store, seconds = [], {}, {}
    for src in zoo:
        targets = {h: m for h, m in zoo.items() if h != src}
        t0 = time.perf_counter()
        res = regional_attack(zoo[src], X, Y, T, M, targets, step=step, max_steps=max_steps,
                              track_source=True, progress=progress, desc=f"source {src}")
        seconds[src] = time.perf_counter() - t0
        for h, rec in res.oracle.items():
            nrm = {k: v.cpu().numpy() for k, v in lp_norms(rec.x_adv, X).items()}
            fixed = fixed_budget_transfer(res.source.x_adv, Y, zoo[h]).cpu().numpy()
            frames.append(pd.DataFrame({
                "source": src, "target": h, **rows, "success": rec.stopped.cpu().numpy(),
                "steps": rec.steps.cpu().numpy(), **nrm, "fixed_success": fixed,
                "source_reached_t": res.source.stopped.cpu().numpy()}))
            store[(src, h)] = rec
        print(f"source {src}: {seconds[src]:.0f} s, {res.active_steps / len(X):.0f} steps per "
              "(region, image) on average")
    cols = ["source", "target", "mask", "family", "budget", "actual", "image", "success",
            "steps", "l0", "l2", "linf", "fixed_success", "source_reached_t",
            "background_share"]
    return pd.concat(frames, ignore_index=True)[cols], store, seconds


def rate_matrix(records, order, col: str = "success"):
    """Mean of ``col`` per (source, target): a DataFrame source x target in ``order``."""
    return (records.pivot_table(index="source", columns="target", values=col, aggfunc="mean")
            .reindex(index=order, columns=order))


def paired_long(records, localized):
    """Long table [mask, attack ('regional' | 'whole image'), norm, value] of the distortions
    on the (source, target, image) triples where both the regional and the whole-image
    attack succeeded, for each region in ``localized``."""
    import pandas as pd

    out = []
    b = records[(records["mask"] == "none") & records["success"]]
    for name in localized:
        a = records[(records["mask"] == name) & records["success"]]
        m = a.merge(b, on=["source", "target", "image"], suffixes=("", "_none"))
        if not len(m):
            continue
        out += [pd.DataFrame({"mask": name, "attack": lab, "norm": nn, "value": m[col]})
                for nn in ("l0", "l2", "linf")
                for lab, col in (("regional", nn), ("whole image", f"{nn}_none"))]
    cols = ["mask", "attack", "norm", "value"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def paired_norms_figure(long, localized):
    """Three box-plot panels (L0, L2, Linf), regional vs whole image per region, on the
    paired successes of ``paired_long``; x tick labels give the number of pairs."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    units = {"l0": "L0 (fraction of pixels)", "l2": "L2 (pixel units)",
             "linf": "Linf (pixel units)"}
    for ax, nn in zip(axes, units):
        d = long[long["norm"] == nn]
        if len(d):
            sns.boxplot(d, x="mask", y="value", hue="attack", ax=ax, fliersize=1.5,
                        order=localized)
        ax.set_ylabel(units[nn])
        ax.set_xlabel("")
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95),
                   frameon=False)
    n = {m: int(((long["mask"] == m) & (long["norm"] == "l0")).sum() // 2) for m in localized}
    axes[-1].set_xticks(range(len(localized)), [f"{m}\n(n={n[m]})" for m in localized],
                        fontsize=8)
    axes[-1].set_xlabel("region (n = paired successes)")
    fig.suptitle("Paired successes: regional vs whole-image distortion")
    fig.tight_layout()
    return fig


def summary_table(records, mask_list, names, masks: dict, actual: dict, tests: dict,
                  paper_figure: dict):
    """One row per region: actual fraction, transfer (oracle and fixed budget), unpaired
    medians of the norms and steps over successes, and the paired ratios and one-sided
    Wilcoxon p-values of ``tests[(region, norm)]`` (``paired_lp_test``), with the paper's
    ratio range (from ``paper_figure = {family: [(L0, L2, Linf) per image]}``) beside ours at
    each family's smallest budget."""
    import numpy as np
    import pandas as pd

    def paper_ratio(fam, j):
        r = [m[j] / n[j] for m, n in zip(paper_figure[fam], paper_figure["none"])]
        return f"{min(r):.2f}–{max(r):.2f}"

    rows = []
    for name, (fam, f) in zip(names, mask_list):
        d = records[records["mask"] == name]
        s = d[d["success"]]
        loc, smallest = name != "none", name != "none" and f == masks[fam][0]
        pt = {nn: tests.get((name, nn), {}) for nn in ("l0", "l2", "linf")}
        rows.append({
            "mask": name, "actual fraction": actual[name],
            "transfer (oracle)": d["success"].mean(),
            "paper: transfer": "0.76 (mean of localized)" if loc else "—",
            "transfer (fixed budget)": d["fixed_success"].mean(),
            "median L0": s["l0"].median(), "median L2": s["l2"].median(),
            "median Linf": s["linf"].median(), "median steps": s["steps"].median(),
            "n paired": pt["l2"].get("n_pairs", np.nan),
            "L0 ratio": pt["l0"].get("median_ratio", np.nan),
            "L2 ratio": pt["l2"].get("median_ratio", np.nan),
            "paper: L2 ratio": paper_ratio(fam, 1) if smallest else "—",
            "p(L2 lower)": pt["l2"].get("p_lower", np.nan),
            "Linf ratio": pt["linf"].get("median_ratio", np.nan),
            "paper: Linf ratio": paper_ratio(fam, 2) if smallest else "—",
            "p(Linf lower)": pt["linf"].get("p_lower", np.nan)})
    return pd.DataFrame(rows).set_index("mask")


def why_table(records, localized, actual: dict, tests: dict):
    """Per region: transfer, the paired median step ratio region / whole image, the L2 and
    Linf ratios, the L2 break-even step ratio sqrt(m0 / m) (m = changed pixels), the share of
    the region on black background, and the share of the region that changed."""
    import numpy as np
    import pandas as pd

    rows = []
    b = records[(records["mask"] == "none") & records["success"]]
    for name in localized:
        a = records[(records["mask"] == name) & records["success"]]
        m = a.merge(b, on=["source", "target", "image"], suffixes=("", "_none"))
        rows.append({
            "mask": name, "family": name.split("_")[0], "actual": actual[name],
            "transfer": records.loc[records["mask"] == name, "success"].mean(),
            "step ratio": (m["steps"] / m["steps_none"]).median() if len(m) else np.nan,
            "L2 ratio": tests[(name, "l2")]["median_ratio"],
            "Linf ratio": tests[(name, "linf")]["median_ratio"],
            "L2 break-even": np.sqrt(m["l0_none"] / m["l0"]).median() if len(m) else np.nan,
            "background share": records.loc[records["mask"] == name,
                                            "background_share"].mean(),
            "changed / region": (a["l0"] / a["actual"]).median() if len(a) else np.nan})
    return pd.DataFrame(rows).set_index("mask")


def why_figure(why, none_rate: float, l0_none: float, paper_rate: float):
    """Three panels against the region fraction: transfer (with the whole image's rate and
    the paper's mean), the paired L2 / Linf ratios, and the step ratio with the L2 and Linf
    break-even curves (``l0_none``: the whole-image attack's median L0)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for k, (fam, d) in enumerate(why.groupby("family", sort=False)):
        color = f"C{k}"
        axes[0].plot(d["actual"], d["transfer"], marker="o", color=color, label=fam)
        axes[1].plot(d["actual"], d["L2 ratio"], marker="o", color=color, label=f"{fam} L2")
        axes[1].plot(d["actual"], d["Linf ratio"], marker="s", ls="--", color=color,
                     label=f"{fam} Linf")
        axes[2].plot(d["actual"], d["step ratio"], marker="o", color=color, label=fam)
    axes[0].axhline(none_rate, color="k", ls=":", lw=1, label="whole image")
    axes[0].axhline(paper_rate, color="gray", ls="--", lw=1, label=f"paper mean {paper_rate}")
    axes[0].set(xlabel="region (fraction of pixels)", ylabel="transfer rate", ylim=(0, 1.05),
                title="transfer (oracle stop)")
    axes[1].axhline(1, color="k", ls=":", lw=1, label="no change")
    axes[1].set(xlabel="region (fraction of pixels)", ylabel="paired median ratio",
                ylim=(0, None), title="distortion: region / whole image")
    fr = np.linspace(0.12, 0.5, 50)
    axes[2].plot(fr, np.sqrt(l0_none / fr), color="gray", ls="--", label="L2 break-even")
    axes[2].axhline(1, color="k", ls=":", lw=1, label="Linf break-even")
    axes[2].set(xlabel="region (fraction of pixels)", ylabel="paired median step ratio",
                title="steps: region / whole image")
    fig.tight_layout()
    for ax in axes:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2,
                  frameon=False)
    return fig


def worst_value(values) -> float:
    """The largest value; NaN (no paired data for some region) if any is NaN."""
    values = [float(v) for v in values]
    return math.nan if any(math.isnan(v) for v in values) else max(values)
