"""Garg, Kumar, Goel & Liang, CIKM 2020: "Can Adversarial Weight Perturbations Inject Neural
Backdoors?" (arXiv:2008.01761).

An attacker who may change every weight of a released model ``theta0`` by at most a small amount
searches for ``theta`` in the L-inf band ``|theta - theta0| <= b`` (absolute: ``b = eps``;
relative: ``b = eps * |theta0|``, per weight) that keeps the original predictions on clean inputs
and sends triggered inputs to a target class ``t``:

    min_theta  CE(f_theta(x), yhat0(x)) + CE(f_theta(T(x)), t) + mu * ||theta - theta0||_2^2

over mixed mini-batches of an attack set (clean images labelled with the original model's
predictions ``yhat0`` plus a triggered copy of each labelled ``t``), with a projection back into
the band after every optimiser step.  The released code optimises with Adam (lr 1e-3) and the
proximity term ``mu = 5e-4``; the paper's text describes projected gradient descent, which we run
as sign-gradient steps of ``sign_step * b`` with ``mu = 0`` (the "paper-literal" variant).

Official code: goel96vibhor/AdvWeightPerturbations (``Vision_Experiments/main.py``,
``adv_extension.py``).  Deviations, and why:
  * The relative band is symmetric, ``|theta - theta0| <= eps * |theta0|``; the code's two
    ``torch.where`` clamps assume ``theta0 > 0`` and pin every negative weight to
    ``theta0 * (1 + eps)`` after each step.
  * BatchNorm running statistics are frozen: the attack runs the model in eval mode through
    ``functional_forward`` (the code runs ``net.train()``, so they drift outside the band).
  * The trigger is applied in pixel space ([0, 1], before any normalisation) and clipped; the
    code writes its patch into already-normalised tensors.
  * The attack works on copies of the parameters: the victim is never modified.
  * Attack success excludes images whose true class is the target (the code counts them); both
    are reported.  The epoch is chosen on a validation split, never on the test set (the code
    keeps the best epoch by test accuracy), and evaluated after the step (the code evaluates at
    the start of each epoch, so its last weights are never seen).

Shapes: images ``x`` [B, C, H, W] in [0, 1]; labels ``y`` int64 [B]; parameter dicts
``{name: tensor}`` with the shapes of ``model.named_parameters()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.data import batches, stratified_indices
from ..core.progress import progress as progress_bar
from ..core.weights import functional_forward, layer_tensors

MODES = ("abs", "rel")
METHODS = ("adam", "sign")


# --------------------------------------------------------------------------- data and trigger
def training_indices(y_train_full: torch.Tensor, n_train_per_class, n_val_per_class: int,
                     seed: int) -> torch.Tensor:
    """Indices (into the full training set) of the images ``data.train_val_test`` gives as the
    training split for these knobs: the images a victim could have been trained on."""
    val_idx = stratified_indices(y_train_full, n_val_per_class, seed + 1)
    return stratified_indices(y_train_full, n_train_per_class, seed, exclude=val_idx)


def apply_trigger(x: torch.Tensor, size: int = 4, value: float = 1.0) -> torch.Tensor:
    """``x`` [B, C, H, W] in [0, 1] with a ``size`` x ``size`` square of intensity ``value`` in
    its bottom-right corner (pixel space, clipped to [0, 1]); a new tensor."""
    out = x.clone()
    out[..., -size:, -size:] = value
    return out.clamp(0.0, 1.0)


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, params: dict | None = None,
                batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes [N] of ``model`` at ``params`` (None: its own weights), eval mode."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [functional_forward(model, params or {}, xb.to(dev)).argmax(1).cpu()
           for xb, _ in batches(x, torch.zeros(len(x)), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def attack_data(model: nn.Module, x: torch.Tensor, target: int, trigger_size: int = 4,
                trigger_value: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack set of the released code: the clean images labelled with the *original
    model's* predictions, followed by a triggered copy of each labelled ``target``.
    Returns (x_mix [2N, C, H, W], y_mix [2N])."""
    y0 = predictions(model, x)
    xt = apply_trigger(x, trigger_size, trigger_value)
    return torch.cat([x, xt]), torch.cat([y0, torch.full_like(y0, target)])


# --------------------------------------------------------------------------- the band
def band_bounds(theta0: dict[str, torch.Tensor], eps: float, mode: str) -> dict[str, torch.Tensor]:
    """Per-weight half-width of the band: ``eps`` everywhere (``mode="abs"``) or
    ``eps * |theta0|`` (``"rel"``, eps a fraction: 0.01 = 1 %).  ``eps = inf``: no band."""
    if mode not in MODES:
        raise ValueError(f"unknown band mode {mode!r}; allowed: {MODES}")
    if mode == "abs" or math.isinf(eps):
        return {k: torch.full_like(w, float(eps)) for k, w in theta0.items()}
    return {k: float(eps) * w.abs() for k, w in theta0.items()}


@torch.no_grad()
def project_(params: dict[str, torch.Tensor], theta0: dict[str, torch.Tensor],
             bounds: dict[str, torch.Tensor]) -> None:
    """In place: ``theta <- theta0 + clamp(theta - theta0, -b, b)`` for every tensor."""
    for k, p in params.items():
        d = p - theta0[k]
        p.copy_(theta0[k] + torch.maximum(torch.minimum(d, bounds[k]), -bounds[k]))


def attack_loss(model: nn.Module, params: dict, theta0: dict, xb, yb, mu: float) -> torch.Tensor:
    """Mean cross-entropy of the mixed batch at ``params`` plus ``mu * ||theta - theta0||^2``
    (the released code's proximity term).  BatchNorm uses the model's running statistics (eval
    mode is the caller's job)."""
    loss = F.cross_entropy(functional_forward(model, params, xb), yb)
    if mu:
        loss = loss + mu * sum(((p - theta0[k]) ** 2).sum() for k, p in params.items())
    return loss


def attack_step(model: nn.Module, params: dict, theta0: dict, bounds: dict, xb, yb, *,
                mu: float, optimizer: torch.optim.Optimizer | None = None,
                sign_step: float = 0.1) -> float:
    """One projected step on ``params`` (leaf tensors with ``requires_grad``), in place.

    ``optimizer`` given: its step (Adam in the released code); None: the paper-literal signed
    gradient step ``theta -= sign_step * b * sign(grad)``.  Then the projection into the band.
    Returns the loss before the step."""
    loss = attack_loss(model, params, theta0, xb, yb, mu)
    grads = torch.autograd.grad(loss, list(params.values()))
    if optimizer is not None:
        for p, g in zip(params.values(), grads):
            p.grad = g
        optimizer.step()
    else:
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                p -= sign_step * bounds[k] * g.sign()
    project_(params, theta0, bounds)
    return loss.item()


# --------------------------------------------------------------------------- the attack
@dataclass
class AttackResult:
    params: dict            # the chosen weights {name: tensor} (detached copies)
    epoch: int              # the epoch they come from (chosen on the validation split)
    history: list = field(default_factory=list)   # per epoch: loss, val fidelity, val ASR
    max_violation: float = 0.0   # largest |theta - theta0| - b seen after any step (<= 0)


def weight_backdoor(model: nn.Module, x_attack: torch.Tensor, *, eps: float, mode: str = "abs",
                    target: int = 1, method: str = "adam", lr: float = 1e-3, mu: float = 5e-4,
                    sign_step: float = 0.1, epochs: int = 10, batch_size: int = 128,
                    which: str = "all", val: tuple | None = None, fidelity_bar: float = 0.98,
                    trigger_size: int = 4, trigger_value: float = 1.0, seed: int = 0,
                    progress: bool = False) -> AttackResult:
    """Search for backdoored weights in the band of half-width ``eps`` around the model's own.

    ``x_attack`` [N, C, H, W]: clean images held out from the victim's training data; the attack
    set is ``attack_data`` of them (2N samples).  ``method="adam"`` is the released code
    (projected Adam, ``lr``, proximity ``mu``); ``"sign"`` the paper-literal signed-gradient
    PGD (step ``sign_step * b``; pass ``mu=0``).  ``eps = inf`` (Adam only): the unconstrained
    fine-tune control.  The model runs in eval mode (BatchNorm statistics frozen) on copies of
    the ``layer_tensors(model, which)``; the model itself is never modified.

    ``val = (x_val, y_val)``: after every epoch the weights are scored on the validation images
    (fidelity to the original predictions, success on triggered images of other classes); the
    result is the epoch with the highest validation success among those with fidelity >=
    ``fidelity_bar`` (else the most faithful epoch).  ``val=None``: the last epoch.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {METHODS}")
    if method == "sign" and math.isinf(eps):
        raise ValueError("the signed-gradient attack needs a finite band")
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    theta0 = {k: p.detach().clone() for k, p in layer_tensors(model, which).items()}
    params = {k: w.clone().requires_grad_(True) for k, w in theta0.items()}
    bounds = band_bounds(theta0, eps, mode)
    x_mix, y_mix = attack_data(model, x_attack, target, trigger_size, trigger_value)
    opt = torch.optim.Adam(params.values(), lr=lr) if method == "adam" else None
    if val is not None:
        y0_val = predictions(model, val[0])
        xt_val = apply_trigger(val[0], trigger_size, trigger_value)
    g = torch.Generator().manual_seed(int(seed))
    res, best_key = AttackResult({}, 0), None
    for epoch in progress_bar(range(1, epochs + 1), desc=f"{method} {mode} {eps:g}",
                              disable=not progress, leave=False):
        losses = []
        for xb, yb in batches(x_mix, y_mix, batch_size, shuffle=True, generator=g):
            losses.append(attack_step(model, params, theta0, bounds, xb.to(dev), yb.to(dev),
                                      mu=mu, optimizer=opt, sign_step=sign_step))
        with torch.no_grad():
            viol = max(((p - theta0[k]).abs() - bounds[k]).max().item() for k, p in params.items())
        res.max_violation = max(res.max_violation, viol) if epoch > 1 else viol
        row = {"epoch": epoch, "loss": float(np.mean(losses))}
        snap = {k: p.detach().clone() for k, p in params.items()}
        if val is not None:
            row["val_fidelity"] = float((predictions(model, val[0], snap) == y0_val).float().mean())
            row["val_asr"] = success_rate(predictions(model, xt_val, snap), val[1], target)
            ok = row["val_fidelity"] >= fidelity_bar
            key = (ok, row["val_asr"] if ok else row["val_fidelity"])
        else:
            key = (True, epoch)
        if best_key is None or key > best_key:
            best_key, res.params, res.epoch = key, snap, epoch
        res.history.append(row)
    model.train(was)
    return res


# --------------------------------------------------------------------------- metrics
def success_rate(pred_triggered: torch.Tensor, y_true: torch.Tensor, target: int,
                 inclusive: bool = False) -> float:
    """Fraction of triggered images predicted as ``target``, over images whose true class is not
    the target (``inclusive=True``: over all images, the released code's number)."""
    hit = pred_triggered == target
    if not inclusive:
        hit = hit[y_true != target]
    return float(hit.float().mean()) if len(hit) else float("nan")


def evaluate(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor, target: int,
             y0: torch.Tensor | None = None, trigger_size: int = 4,
             trigger_value: float = 1.0) -> dict:
    """Per-image 0/1 arrays (numpy) of the model at ``params`` on test images (x, y):
    ``correct`` (clean prediction == y), ``agree`` (clean prediction == the original model's,
    ``y0``; computed when None), ``hit`` (triggered prediction == target, on every image) and
    ``nontarget`` (y != target).  ``summary(...)`` turns them into rates."""
    y0 = predictions(model, x) if y0 is None else y0
    pred = predictions(model, x, params)
    pred_t = predictions(model, apply_trigger(x, trigger_size, trigger_value), params)
    return {"correct": (pred == y).numpy().astype(int), "agree": (pred == y0).numpy().astype(int),
            "hit": (pred_t == target).numpy().astype(int),
            "nontarget": (y != target).numpy().astype(bool)}


def summary(ev: dict) -> dict:
    """Rates from ``evaluate``'s arrays: clean accuracy, fidelity, attack success on non-target
    images (``asr``), the inclusive variant and the counts behind them."""
    nt = ev["nontarget"]
    return {"clean_acc": float(ev["correct"].mean()), "fidelity": float(ev["agree"].mean()),
            "asr": float(ev["hit"][nt].mean()), "asr_inclusive": float(ev["hit"].mean()),
            "n": int(len(nt)), "n_nontarget": int(nt.sum()), "hits": int(ev["hit"][nt].sum())}


def weight_change(theta0: dict[str, torch.Tensor], theta: dict[str, torch.Tensor],
                  bounds: dict[str, torch.Tensor] | None = None, zero: float = 1e-8,
                  q=(25, 50, 75, 90)) -> dict:
    """How much the weights moved.  ``rel_pXX``: percentiles of ``|theta - theta0| / |theta0|``
    over the weights with ``|theta0| > zero`` (near-zero weights make the ratio explode);
    ``linf`` = max |delta|; ``l2_ratio`` = ||delta||_2 / ||theta0||_2 over all tensors;
    ``at_bound`` = fraction of weights on their band edge, up to float32 rounding (when
    ``bounds``);
    ``per_layer`` = {name: ||delta_l|| / ||theta0_l||}."""
    d = torch.cat([(theta[k] - w).flatten() for k, w in theta0.items()]).double()
    w0 = torch.cat([w.flatten() for w in theta0.values()]).double()
    keep = w0.abs() > zero
    rel = (d.abs()[keep] / w0.abs()[keep]).numpy()
    out = {f"rel_p{p}": float(np.percentile(rel, p)) for p in q}
    out.update(linf=float(d.abs().max()), l2_ratio=float(d.norm() / w0.norm()),
               n_weights=int(len(w0)), n_near_zero=int((~keep).sum()), rel=rel)
    if bounds is not None:
        b = torch.cat([bounds[k].flatten() for k in theta0]).double()
        tol = 1e-6 * (w0.abs() + b) + 1e-12          # float32 rounding of theta0 + delta
        out["at_bound"] = float(((d.abs() - b).abs() <= tol).float().mean())
    out["per_layer"] = {k: float((theta[k] - w).norm() / w.norm().clamp_min(1e-12))
                        for k, w in theta0.items()}
    return out


def random_band_noise(theta0: dict[str, torch.Tensor], bounds: dict[str, torch.Tensor],
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The control: every weight moved to a random edge of its band, ``theta0 + s * b`` with
    independent random signs ``s`` (the largest change the band allows, in no chosen
    direction)."""
    out = {}
    for k, w in theta0.items():
        s = torch.randint(0, 2, w.shape, generator=generator).to(w) * 2 - 1
        out[k] = w + s * bounds[k]
    return out


def smallest_budget(rows: list[dict], asr_bar: float = 0.9, fidelity_bar: float = 0.98):
    """The row with the smallest ``eps`` whose ASR >= ``asr_bar`` and fidelity >=
    ``fidelity_bar`` (rows: dicts with eps, asr, fidelity), or None."""
    ok = [r for r in rows if r["asr"] >= asr_bar and r["fidelity"] >= fidelity_bar]
    return min(ok, key=lambda r: r["eps"]) if ok else None


# --------------------------------------------------------------------------- figures
def asr_curves(table, modes=("abs", "rel"), method: str = "adam"):
    """ASR (solid) and clean accuracy (dashed) against the budget, one panel per band mode,
    one colour per victim.  ``table``: a DataFrame with columns victim, mode, method, eps, asr,
    clean_acc, asr_lo, asr_hi."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.6), squeeze=False)
    colours = dict(zip(sorted(table["victim"].unique()), plt.cm.tab10.colors))
    for ax, mode in zip(axes[0], modes):
        sub = table[(table["mode"] == mode) & (table["method"] == method)]
        for v, g in sub.groupby("victim"):
            g = g.sort_values("eps")
            ax.plot(g["eps"], g["asr"], "-o", color=colours[v], label=f"{v}: success")
            ax.fill_between(g["eps"], g["asr_lo"], g["asr_hi"], color=colours[v], alpha=0.15)
            ax.plot(g["eps"], g["clean_acc"], "--", color=colours[v], label=f"{v}: clean acc.")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("budget eps (|delta w| <= eps)" if mode == "abs"
                      else "budget eps (|delta w| <= eps * |w|, fraction)")
        ax.set_ylabel("rate on test images")
        ax.set_title(f"{'absolute' if mode == 'abs' else 'relative'} band")
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def change_histogram(rel: np.ndarray, eps: float, mode: str, label: str):
    """Histogram of per-weight relative change |delta w| / |w| (log-x, percent) of the weights
    that moved; the median line and the title count every weight in ``rel`` (unmoved ones
    included)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    r = np.asarray(rel) * 100
    moved = r[r > 0]
    ax.hist(moved, bins=np.logspace(np.log10(moved.min()), np.log10(moved.max() * 1.01), 60),
            color="tab:red", alpha=0.8, label="weights that moved")
    ax.axvline(np.median(r), color="k", ls="--", label=f"median, all weights: {np.median(r):.3g} %")
    ax.set_xscale("log")
    ax.set_xlabel("relative change of one weight |delta w| / |w| (%)")
    ax.set_ylabel("number of weights")
    ax.set_title(f"{label}, {mode} band eps = {eps:g} ({(r == 0).sum():,} unmoved weights not shown)",
                 fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def per_layer_bars(per_layer: dict[str, dict[str, float]]):
    """Bars of ||delta_l|| / ||w_l|| per layer tensor, one group per attack ({label: {name: r}})."""
    import matplotlib.pyplot as plt

    labels = list(per_layer)
    names = list(next(iter(per_layer.values())))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 3.6))
    w = 0.8 / len(labels)
    for i, lab in enumerate(labels):
        ax.bar(np.arange(len(names)) + i * w, [per_layer[lab][n] * 100 for n in names], w,
               label=lab)
    ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names, rotation=45, ha="right")
    ax.set_ylabel("||delta w_l|| / ||w_l|| (%)")
    ax.set_xlabel("layer tensor")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- explorer
def budget_explorer(model: nn.Module, attacked: dict, x: torch.Tensor, y: torch.Tensor,
                    target: int, class_names, trigger_size: int = 4, n_show: int = 6):
    """A budget slider (updates on release) over precomputed attacks ``attacked`` ({eps:
    params}, one band mode) of ``model``: it shows the test success rate and fidelity at that
    budget and ``n_show`` triggered test images with the attacked model's predictions.

    Returns the ``ipywidgets.VBox`` (slider, HTML summary, image output); display it."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    from ..core.plots import image_grid

    keep = (y != target).nonzero().flatten()[:n_show]
    xs, y0 = x[keep], predictions(model, x)
    xt = apply_trigger(xs, trigger_size)
    slider = W.SelectionSlider(options=sorted(attacked), description="budget eps",
                               continuous_update=False)
    text, out = W.HTML(), W.Output()

    def update(_=None):
        p = attacked[slider.value]
        s = summary(evaluate(model, p, x, y, target, y0, trigger_size))
        text.value = (f"<b>eps = {slider.value:g}</b>: success on triggered images "
                      f"{s['asr']:.1%}, agreement with the original on clean images "
                      f"{s['fidelity']:.1%}, clean accuracy {s['clean_acc']:.1%}")
        pred = predictions(model, xt, p)
        out.clear_output(wait=True)
        with out:
            fig = image_grid(xt, [f"{class_names[int(a)]}{' (target)' if a == target else ''}"
                                  for a in pred], ncols=n_show, suptitle="triggered, predicted:")
            display(fig)
            plt.close(fig)

    slider.observe(update, names="value")
    update()
    return W.VBox([slider, text, out])


# --------------------------------------------------------------------------- one sweep point
def attack_and_measure(model: nn.Module, x_attack: torch.Tensor, test: tuple, *, eps: float,
                       mode: str, method: str, target: int, y0_test: torch.Tensor,
                       noise_seed: int = 0, **attack_kw) -> dict:
    """Run ``weight_backdoor`` at one budget and measure it on ``test = (x, y)``.

    Returns ``{"row": {...}, "params": chosen weights, "ev": evaluate arrays, "noise_ev":
    evaluate arrays of the random-band-noise control at the same budget (None for eps = inf),
    "change": weight_change dict}``; ``row`` holds the rates, the weight-change summary,
    the chosen epoch and the largest band violation (<= 0 up to float rounding)."""
    res = weight_backdoor(model, x_attack, eps=eps, mode=mode, method=method, target=target,
                          **attack_kw)
    theta0 = {k: p.detach() for k, p in layer_tensors(model, attack_kw.get("which", "all")).items()}
    bounds = band_bounds(theta0, eps, mode)
    size = attack_kw.get("trigger_size", 4)
    ev = evaluate(model, res.params, test[0], test[1], target, y0_test, size)
    change = weight_change(theta0, res.params, None if math.isinf(eps) else bounds)
    noise_ev = None
    if not math.isinf(eps):
        noise = random_band_noise(theta0, bounds, torch.Generator().manual_seed(noise_seed))
        noise_ev = evaluate(model, noise, test[0], test[1], target, y0_test, size)
    row = {"mode": mode, "method": method, "eps": eps, **summary(ev), "epoch": res.epoch,
           "max_violation": res.max_violation,
           **{k: v for k, v in change.items() if k not in ("rel", "per_layer")}}
    if noise_ev is not None:
        row["noise_asr"] = summary(noise_ev)["asr"]
        row["noise_fidelity"] = summary(noise_ev)["fidelity"]
    return {"row": row, "params": res.params, "ev": ev, "noise_ev": noise_ev, "change": change,
            "history": res.history}
