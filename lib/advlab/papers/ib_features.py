"""Kim, Lee & Ro, NeurIPS 2021: Distilling Robust and Non-Robust Features in Adversarial
Examples by Information Bottleneck (arXiv 2204.02735).

A frozen classifier is split at an intermediate feature map, ``Z = h(x)`` [B, C, H, W] and
``logits = phi(Z)``.  A learnable noise scale ``sigma = softplus(lam)`` [B, C, 1, 1] (one per
sample and channel, ``lam`` initialised to 0) perturbs the features, ``Z~ = Z + sigma * e`` with
``e ~ N(0, 1)`` of shape [B, C, 1, 1] (one draw per channel, shared over its spatial positions,
fresh at every iteration), and only ``lam`` is optimised (Adam) under the Information
Bottleneck objective

    L(lam) = CE(phi(Z~), y) + beta * mean_{b,c} 1/2 [ v / (s2 + d) + log((s2 + d) / (v + d)) - 1 ]

with ``s2 = sigma^2``, ``v`` = the spatial variance of ``Z[b, c]`` (the unit's "natural
variation", torch's unbiased ``var``) and ``d = 1e-10``.  Units whose learned noise variance
exceeds the largest natural variance in the batch are "robust" (``sigma^2 > max v``, one global
threshold), the others "non-robust".  The NRF attack is CW-L2 (tanh parameterisation, Adam,
margin with kappa = 0, cost ``sum ||x'-x||^2 + c sum f``) plus a term ``-gamma * ||Z(x') -
Z(x').detach() + m * g||`` (whole-batch norm) whose gradient pushes the features along the
margin-lowering direction ``g`` restricted to the non-robust channels ``m``.

Official code: github.com/ByungKwanLee/Adversarial-Information-Bottleneck (``model/IFP.py``).
Deviations: the network is frozen (``requires_grad`` off during distillation, restored after)
and in eval mode (the released ``test.py`` loads no weights and never calls ``eval()``); the
split layer is the pre-ReLU output of small_cnn's second conv (64 x 14 x 14 on 28 x 28 inputs,
the paper uses VGG-16-BN's last BN, 512 x 2 x 2); the head replaces in-place ReLUs by
out-of-place ones so the features are never overwritten; CW and NRF share the same early-stop
rule (every ``steps // 3`` steps, as NRF in the official code; torchattacks' CW checks every
``steps // 10``); two ablated split rules (per-sample maximum, per-unit ratio) are ours, and so
are the random-mask control and the noise probe on the full feature map.

Shapes: images ``x`` [B, C, H, W] in [0, 1]; labels ``y`` int64 [B]; features ``Z``
[B, C', H', W']; masks and noise scales [B, C', 1, 1].
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.attacks import eval_mode

DELTA = 1e-10       # the official KL's numerical guard
RULES = ("global", "per_sample", "ratio")
# The claims the notebook makes per distilled model ("<id>_<checkpoint>"), and the paper's two
# models (a standard and an adversarially trained one): their claims are always reported, as
# "not run" when the `checkpoints` knob leaves a model out.
PER_MODEL_CLAIMS = ("nr_part_carries_adv_label", "r_part_keeps_true_label",
                    "noise_on_nr_hurts_more", "split_not_degenerate", "nrf_beats_cw",
                    "nrf_beats_random_mask", "nrf_beats_stronger_cw", "nrf2_weaker_than_cw",
                    "nrf_beats_cw_within_l2_budget")
PAPER_MODELS = ("standard", "pgd_at")


# --------------------------------------------------------------------------- the split
@contextlib.contextmanager
def frozen(model: nn.Module):
    """``model`` in eval mode with every parameter's ``requires_grad`` off, both restored on
    exit (the distillation and the attacks optimise inputs or noise, never the network)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    with eval_mode(model):
        try:
            for p in params:
                p.requires_grad_(False)
            yield model
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)


class SplitNet:
    """A ``nn.Sequential`` classifier cut after layer ``at``: ``features(x)`` is ``Z`` (the
    output of layers 0..at), ``head(Z)`` the logits.  ReLUs in the head run out of place, so
    ``Z`` is never modified by the forward.  The model itself is not changed."""

    def __init__(self, model: nn.Sequential, at: int):
        if not isinstance(model, nn.Sequential) or not 0 <= at < len(model) - 1:
            raise ValueError(f"need an nn.Sequential and 0 <= at < {len(model) - 1}")
        self.model, self.at = model, at
        self.tail = list(model)[at + 1:]

    def features(self, x):
        z = x
        for layer in list(self.model)[:self.at + 1]:
            z = F.relu(z) if isinstance(layer, nn.ReLU) else layer(z)
        return z

    def head(self, z):
        for layer in self.tail:
            z = F.relu(z) if isinstance(layer, nn.ReLU) else layer(z)
        return z

    def __call__(self, x):
        return self.head(self.features(x))


def natural_variance(z: torch.Tensor) -> torch.Tensor:
    """Spatial variance of every unit (torch's unbiased ``var``, as the official code):
    [B, C, 1, 1] from features [B, C, H, W] (H * W >= 2)."""
    return z.var(dim=(2, 3), keepdim=True)


def ib_loss(head, z, y, lam, noise, beta: float = 0.3):
    """The IB objective for one batch: (loss, ce, kl) with ``sigma = softplus(lam)`` and
    ``Z~ = z + sigma * noise`` (``lam``, ``noise`` [B, C, 1, 1]; ``z`` detached)."""
    sigma = F.softplus(lam)
    ce = F.cross_entropy(head(z + sigma * noise), y)
    v, s2 = natural_variance(z), sigma ** 2
    kl = (0.5 * (v / (s2 + DELTA) + torch.log((s2 + DELTA) / (v + DELTA)) - 1)).mean()
    return ce + beta * kl, ce, kl


@dataclass
class Distilled:
    z: torch.Tensor          # features [B, C, H, W]
    sigma: torch.Tensor      # learned noise scale softplus(lam) [B, C, 1, 1], >= 0
    var: torch.Tensor        # natural variance [B, C, 1, 1]
    loss: list               # IB loss per iteration


def distill(net: SplitNet, x, y, beta: float = 0.3, iters: int = 200, lr: float = 0.1,
            generator: torch.Generator | None = None) -> Distilled:
    """Learn the per-(sample, channel) noise scale of ``x`` [B, ...] under the IB objective,
    the network frozen and in eval mode (its parameters' ``requires_grad`` and mode are
    restored afterwards).  ``y``: the labels the prediction must keep (ground truth, also for
    adversarial inputs, as the official code)."""
    with frozen(net.model):
        with torch.no_grad():
            z = net.features(x)
        lam = torch.zeros(*z.shape[:2], 1, 1, device=z.device, requires_grad=True)
        opt = torch.optim.Adam([lam], lr=lr)
        losses = []
        for _ in range(iters):
            noise = torch.randn(lam.shape, generator=generator).to(z.device)
            loss, _, _ = ib_loss(net.head, z, y, lam, noise, beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return Distilled(z, F.softplus(lam).detach(), natural_variance(z), losses)


def split_units(sigma, var, rule: str = "global", tau: float = 1.0) -> torch.Tensor:
    """Boolean robust mask [B, C, 1, 1].  ``global`` (official): sigma^2 > the largest natural
    variance over the whole batch; ``per_sample``: sigma^2 > that sample's largest natural
    variance; ``ratio``: sigma / sqrt(var) > ``tau`` unit by unit."""
    s2 = sigma ** 2
    if rule == "global":
        return s2 > var.max()
    if rule == "per_sample":
        return s2 > var.amax(dim=(1, 2, 3), keepdim=True)
    if rule == "ratio":
        return torch.sqrt(s2 / (var + DELTA)) > tau
    raise ValueError(f"unknown split rule {rule!r}; allowed: {list(RULES)}")


@torch.no_grad()
def part_predictions(net: SplitNet, z, robust) -> dict:
    """Predicted labels [B] from the full features, the robust part ``Z * 1[robust]`` and the
    non-robust part ``Z * 1[not robust]``."""
    m = robust.float()
    return {"full": net.head(z).argmax(1), "robust": net.head(z * m).argmax(1),
            "non_robust": net.head(z * (1 - m)).argmax(1)}


@torch.no_grad()
def noise_probe(net: SplitNet, z, robust, y, stds, generator=None) -> dict:
    """Accuracy of ``phi(Z + s * e * m)`` for each noise std ``s`` in ``stds`` when the mask
    ``m`` is the robust units or the non-robust units (``e`` ~ N(0, 1) per element, one draw
    per std reused for both masks).  Returns per-image 0/1 correctness, {part: [len(stds), B]}."""
    m = robust.float()
    out = {"robust": [], "non_robust": []}
    for s in stds:
        e = torch.randn(z.shape, generator=generator).to(z.device) * s
        out["robust"].append(net.head(z + e * m).argmax(1) == y)
        out["non_robust"].append(net.head(z + e * (1 - m)).argmax(1) == y)
    return {k: torch.stack(v).float() for k, v in out.items()}


def random_mask_like(mask, generator=None) -> torch.Tensor:
    """A random channel mask with, for every sample, as many units as ``mask`` [B, C, 1, 1]
    (the channels are permuted independently per sample)."""
    out = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        perm = torch.randperm(mask.shape[1], generator=generator)
        out[b, :, 0, 0] = mask[b, perm.to(mask.device), 0, 0]
    return out


# --------------------------------------------------------------------------- the attacks
def _margin(logits, y):
    """max(Z_y - max_{k != y} Z_k, 0) per example [B] (CW's f with kappa = 0)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (true - other).clamp(min=0)


def attack_cost(net: SplitNet, xa, x, y, mask=None, c: float = 0.1, gamma: float = 1.0):
    """NRF's cost at ``xa``: sum ||xa - x||^2 + c sum f(xa) - gamma ||Z - Z.detach() + m g||
    (whole-batch norm; ``g`` the detached gradient of -sum f w.r.t. Z; the last term is left
    out when ``mask`` is None, i.e. CW, or selects no unit).  Returns (cost, logits, squared
    L2 [B])."""
    z = net.features(xa)
    logits = net.head(z)
    l2 = (xa - x).flatten(1).pow(2).sum(1)
    marg = _margin(logits, y)
    cost = l2.sum() + c * marg.sum()
    if mask is not None and gamma != 0:
        (g,) = torch.autograd.grad(-marg.sum(), z, retain_graph=True)
        push = mask * g.detach()
        if float(push.abs().sum()) > 0:
            cost = cost - gamma * torch.linalg.vector_norm(z - z.detach() + push)
    return cost, logits, l2


def min_norm_attack(net: SplitNet, x, y, mask=None, c: float = 0.1, gamma: float = 1.0,
                    steps: int = 200, lr: float = 0.1):
    """CW-L2 (``mask`` None) or NRF (``mask`` [B, C, 1, 1] of the channels to push; a negative
    ``gamma`` suppresses them instead, the NRF2 ablation).  Adam on ``w`` with
    ``x' = (tanh(w) + 1) / 2``; every ``steps // 3`` steps it stops early if the cost rose.
    Per example it keeps the misclassified ``x'`` of smallest L2, else returns the clean ``x``.
    Returns (x_adv [B, ...] in [0, 1], found [B] bool)."""
    x = x.detach()
    with frozen(net.model):
        w = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        best, best_l2 = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        check, prev = max(steps // 3, 1), float("inf")
        for t in range(steps):
            xa = (torch.tanh(w) + 1) / 2
            cost, logits, l2 = attack_cost(net, xa, x, y, mask, c, gamma)
            opt.zero_grad()
            cost.backward()
            opt.step()
            with torch.no_grad():
                better = (logits.argmax(1) != y) & (l2.sqrt() < best_l2)
                best_l2 = torch.where(better, l2.sqrt(), best_l2)
                best[better] = xa.detach()[better]
            if t % check == 0:
                if float(cost.detach()) > prev:
                    break
                prev = float(cost.detach())
    return best, torch.isfinite(best_l2)


def run_attacks(net: SplitNet, x, y, attacks: dict, batch_size: int = 100, desc="attacks"):
    """Run every attack in ``attacks`` ({name: fn(xb, yb, sl) -> x_adv}, ``sl`` the batch's
    slice of ``x``, to pick its rows of a mask) batch by batch (the NRF
    term's norm and the global split depend on the batch: keep ``batch_size`` fixed) and
    evaluate each result afresh with the model in eval mode.  Returns {name: {"x_adv",
    "correct" [N] 0/1, "l2" [N] (0 where the attack returned x)}}."""
    from ..core.progress import progress

    out = {}
    for name, fn in progress(list(attacks.items()), desc=desc):
        sls = [slice(i, i + batch_size) for i in range(0, len(x), batch_size)]
        xs = [fn(x[sl], y[sl], sl) for sl in sls]
        xa = torch.cat(xs)
        with torch.no_grad(), eval_mode(net.model):
            ok = (net.model(xa).argmax(1) == y).float()
        out[name] = {"x_adv": xa, "correct": ok, "l2": (xa - x).flatten(1).norm(dim=1)}
    return out


def nonrobust_masks(net: SplitNet, x, y, batch_size=100, beta=0.3, iters=200, lr=0.1,
                    generator=None, rule="global", tau=1.0) -> torch.Tensor:
    """NRF's first step: distil the clean ``x`` with its true labels batch by batch and return
    the float mask of the non-robust units [N, C, 1, 1] (1 = non-robust)."""
    out = []
    for i in range(0, len(x), batch_size):
        d = distill(net, x[i:i + batch_size], y[i:i + batch_size], beta, iters, lr, generator)
        out.append((~split_units(d.sigma, d.var, rule, tau)).float())
    return torch.cat(out)


def attack_table(results: dict, x, clean_correct, l2_budget: float) -> list[dict]:
    """One row per attack of ``run_attacks``' output: robust accuracy (re-evaluated), how many
    clean-correct images it fooled, the median L2 of those, the official code's distortion
    (RMS per pixel, sqrt(mean_b ||delta_b||^2 / D), over all images) and the fraction of
    clean-correct images fooled within L2 <= ``l2_budget``."""
    d = x[0].numel()
    rows = []
    for name, r in results.items():
        fooled = (r["correct"] == 0) & (clean_correct == 1)
        rows.append({"attack": name, "robust_acc": float(r["correct"].mean()),
                     "n_fooled": int(fooled.sum()),
                     "median_l2": median_l2(r["correct"], r["l2"], clean_correct),
                     "rms_distortion": float((r["l2"].pow(2).mean() / d).sqrt()),
                     "fooled_within_budget": float(success_curve(
                         r["correct"], r["l2"], clean_correct, [l2_budget])[0])})
    return rows


def success_curve(correct, l2, clean_correct, radii) -> torch.Tensor:
    """Fraction of the clean-correct images fooled with L2 <= r, for every r in ``radii``."""
    fooled = (correct == 0) & (clean_correct == 1)
    n = max(int(clean_correct.sum()), 1)
    return torch.tensor([float((fooled & (l2 <= r)).sum()) / n for r in radii])


def median_l2(correct, l2, clean_correct) -> float:
    """Median L2 of the successful adversarial examples (clean-correct images now wrong);
    nan if none."""
    ok = (correct == 0) & (clean_correct == 1)
    return float(l2[ok].median()) if ok.any() else float("nan")


def paired_interval(a, b, level: float = 0.95):
    """Interval of mean(a) - mean(b) over paired examples (1-D, same length): the workbook's
    ``core.claims.paired_bootstrap_interval`` (Newcombe's interval for 0/1 outcomes, a paired
    bootstrap otherwise), on tensors or arrays."""
    import numpy as np

    from ..core.claims import paired_bootstrap_interval

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two 1-D arms of at least 2 examples, got shape {a.shape}")
    return paired_bootstrap_interval(a, b, level)


# --------------------------------------------------------------------------- analysis
def correspondence(net: SplitNet, x, y, y_adv=None, beta=0.3, iters=200, lr=0.1,
                   batch_size=100, rules=RULES, tau=1.0, generator=None, desc="distill"):
    """Distil ``x`` in batches of ``batch_size`` and split with every rule in ``rules``.
    Returns {"sigma", "var", "z" (concatenated), rule: {"robust" mask, "frac_robust",
    "pred": part_predictions}}.  ``y_adv`` is unused here (kept for the caller's table)."""
    from ..core.progress import progress

    zs, sig, var, masks = [], [], [], {r: [] for r in rules}
    for i in progress(range(0, len(x), batch_size), desc=desc):
        d = distill(net, x[i:i + batch_size], y[i:i + batch_size], beta, iters, lr, generator)
        zs.append(d.z), sig.append(d.sigma), var.append(d.var)
        for r in rules:
            masks[r].append(split_units(d.sigma, d.var, r, tau))
    out = {"z": torch.cat(zs), "sigma": torch.cat(sig), "var": torch.cat(var)}
    for r in rules:
        m = torch.cat(masks[r])
        out[r] = {"robust": m, "frac_robust": float(m.float().mean()),
                  "pred": part_predictions(net, out["z"], m)}
    return out


def table1_rows(model_name, dist_clean, dist_adv, y, y_adv_pred, rules=RULES) -> list[dict]:
    """Rows of the Table 1 analogue for one model: per input kind and split rule, the
    accuracy of the full / robust / non-robust parts, the fraction of robust units and, on the
    adversarial inputs the attack fooled, the agreement of the non-robust part with the
    adversarial label and of the robust part with the true label (and with the adversarial
    label).  ``y_adv_pred`` [N]: the model's prediction on the adversarial inputs."""
    rows = []
    fooled = y_adv_pred != y
    for kind, dist in (("clean", dist_clean), ("PGD", dist_adv)):
        for r in rules:
            p = dist[r]["pred"]
            row = {"model": model_name, "input": kind, "rule": r,
                   "frac_robust": dist[r]["frac_robust"],
                   "acc_full": float((p["full"] == y).float().mean()),
                   "acc_robust": float((p["robust"] == y).float().mean()),
                   "acc_non_robust": float((p["non_robust"] == y).float().mean())}
            if kind == "PGD":
                n = int(fooled.sum())
                row.update(n_fooled=n,
                           nr_agrees_adv=_frac(p["non_robust"][fooled] == y_adv_pred[fooled]),
                           r_agrees_adv=_frac(p["robust"][fooled] == y_adv_pred[fooled]),
                           r_keeps_true=_frac(p["robust"][fooled] == y[fooled]))
            rows.append(row)
    return rows


def _frac(b) -> float:
    return float(b.float().mean()) if b.numel() else float("nan")


# --------------------------------------------------------------------------- figures, widget
def noise_probe_figure(curves: dict, levels, median_sd: dict):
    """Accuracy vs noise std (in units of the median natural std) for noise on the robust
    vs the non-robust units, one panel per model.  ``curves``: {model: noise_probe output}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        for part, style in (("robust", "o-"), ("non_robust", "s--")):
            ax.plot(levels, c[part].mean(1).numpy(), style,
                    label=f"noise on {part.replace('_', '-')} units only")
        ax.set_title(f"{name} (median natural std {median_sd[name]:.2g})")
        ax.set_xlabel("noise std / median natural std")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("clean accuracy")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def success_figure(curves: dict, radii):
    """Success rate vs L2 distortion, one panel per model: {model: {attack: curve}}."""
    import matplotlib.pyplot as plt

    styles = ["-", "--", "-", ":", "-."]
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, per_attack) in zip(axes[0], curves.items()):
        for i, (attack, c) in enumerate(per_attack.items()):
            ax.plot(radii, c.numpy(), styles[i % len(styles)], label=attack, lw=2 if i else 3,
                    alpha=0.85)
        ax.set_title(name)
        ax.set_xlabel("L2 distortion (pixels in [0, 1])")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("fraction of clean-correct\nimages fooled")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def _unit_panel(sigma, var, robust, title):
    """PNG (base64) of one image's per-channel noise std vs natural std, robust marked."""
    import base64
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    ch = torch.arange(len(sigma))
    ax.bar(ch[robust].numpy(), sigma[robust].numpy(), color="tab:blue", label="robust")
    ax.bar(ch[~robust].numpy(), sigma[~robust].numpy(), color="tab:red", label="non-robust")
    ax.plot(ch.numpy(), var.sqrt().numpy(), "k.", ms=3, label="natural std")
    ax.set_xlabel("channel of the split layer")
    ax.set_ylabel("learned noise std")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def unit_explorer(results: dict, y, class_names, display: bool = True):
    """Pick a model, an input (clean or PGD), a split rule and an image: see every channel's
    learned noise std (robust in blue, non-robust in red, the natural std as dots) and the
    class each part predicts.  ``results``: {(model, input): correspondence output}.
    Returns the widget (an ``ipywidgets.VBox``; ``display=False`` only builds it)."""
    import ipywidgets as W

    keys = list(results)
    pick = W.Dropdown(options=[(f"{m} · {k}", (m, k)) for m, k in keys], value=keys[0],
                      description="features")
    rule = W.Dropdown(options=list(RULES), value="global", description="split rule")
    idx = W.IntSlider(0, 0, len(y) - 1, description="image", continuous_update=False)
    html = W.HTML()

    def update(_=None):
        res, i = results[pick.value], idx.value
        m = res[rule.value]["robust"][i, :, 0, 0]
        p = {k: class_names[int(v[i])] for k, v in res[rule.value]["pred"].items()}
        img = _unit_panel(res["sigma"][i, :, 0, 0], res["var"][i, :, 0, 0], m,
                          f"true: {class_names[int(y[i])]} · {int(m.sum())} robust units")
        html.value = (f"<img src='data:image/png;base64,{img}'/><br>full features → "
                      f"<b>{p['full']}</b>; robust part → <b>{p['robust']}</b>; "
                      f"non-robust part → <b>{p['non_robust']}</b>")

    for w in (pick, rule, idx):
        w.observe(update, names="value")
    update()
    box = W.VBox([W.HBox([pick, rule]), idx, html])
    if display:
        from IPython.display import display as ipy_display
        ipy_display(box)
    return box
