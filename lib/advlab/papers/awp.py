"""Adversarial Weight Perturbation (Wu, Xia & Wang, NeurIPS 2020) as a training hook.

AWP minimises the adversarial loss at the worst nearby weights,

    min_w  max_{v in V(w)}  rho(w + v),    V(w) = { v : ||v_l|| <= gamma ||w_l|| for every layer l },

with one normalised ascent step from v = 0 (the official code): for every conv / linear weight
tensor ``w_l``

    v_l = gamma * ||w_l|| * g_l / ||g_l||,     g_l = grad_{w_l} L_B(w)   (L_B on the batch x').

Per mini-batch, around ``advlab.core.training.fit``'s update::

    before_update:  v = awp_perturbation(...)  on a proxy copy (BN buffers of the model untouched)
                    w <- w + v
    fit:            loss(w + v).backward(); optimizer.step()       # step from the perturbed point
    after_update:   w <- w - v                                     # the same v, after the step

The adversarial inputs x' are crafted at the unperturbed w (``fit`` makes them before the hook
runs), as in the official code.

Official code: csdongxian/AWP (AT-AWP and TRADES-AWP), whose one-step normalised ascent,
layer set (conv / linear weights, no biases or BatchNorm) and update order this module follows.
Deviations: the ascent runs on a proxy copy so the model's BatchNorm buffers are untouched by
it (the official code perturbs a proxy too, but crafts x' in train mode: here the BN mode
while crafting is a parameter, eval by default); the step-overhead measurement
(``step_overhead``) and the robust monitor (``RobustMonitor``) are ours.

The notebook's orchestration also lives here, so its lesson cells stay short: ``hooked_step``
(one training step exactly as ``fit`` runs it, for the from-scratch check), ``train_one``,
``evaluate``, ``masking_check_rows`` / ``masking_caveat``, ``per_seed_table``,
``claim_interval`` / ``gap_interval`` / ``spread``, ``sharpness_over_directions``, the three
figures and
``run_metrics``; and the ``landscape_explorer`` widget.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..core.training import TrainingHook, save_checkpoint
from ..core.weights import layer_tensors, robust_loss


def awp_perturbation(proxy: nn.Module, names: list[str], gamma: float, loss) -> dict:
    """The AWP perturbation ``{name: v_l}`` with ``||v_l|| = gamma * ||w_l||``.

    ``proxy`` holds a copy of the model's current state (parameters *and* buffers) and is the
    only module run, so the real model's BatchNorm statistics and gradients are untouched;
    ``loss(proxy)`` returns the scalar objective to ascend (the training loss on the batch).
    ``names``: the perturbed tensors (conv / linear weights).  Equals the official code's
    proxy-SGD step ``proxy - model`` rescaled to each layer's norm (up to rounding).
    """
    params = dict(proxy.named_parameters())
    tensors = [params[n] for n in names]
    grads = torch.autograd.grad(loss(proxy), tensors)
    with torch.no_grad():
        return {n: gamma * w.norm() * g / (g.norm() + 1e-20)
                for n, w, g in zip(names, tensors, grads)}


class AWP(TrainingHook):
    """AWP for ``training.fit``: perturb before the update, restore the same ``v`` after it.

    Args:
        model: the model being trained, already on its device (a proxy copy is made once; its
            state is refreshed from the model before every perturbation).
        gamma: relative radius (0.01 for AT-AWP, 0.005 for TRADES-AWP in the official code);
            ``gamma = 0`` reproduces plain training bit for bit.
        warmup_steps: optimiser steps without perturbation at the start (the official TRADES-AWP
            waits 10 of 200 epochs; pass ``epochs * batches_per_epoch``).
        which: the perturbed tensors (``weights.layer_tensors``); AWP uses conv / linear weights.
    """

    def __init__(self, model: nn.Module, gamma: float = 0.01, warmup_steps: int = 0,
                 which: str = "conv_linear_weights"):
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.warmup_steps = float(gamma), int(warmup_steps)
        self.names = list(layer_tensors(model, which))
        if not self.names:
            raise ValueError(f"AWP found no {which!r} tensors in the model: nothing to perturb")
        self.proxy = copy.deepcopy(model)
        for name, p in self.proxy.named_parameters():  # gradients only where v is needed
            p.requires_grad_(name in self.names)
        self.steps = 0
        self.v: dict | None = None

    def _sync_proxy(self, model):
        with torch.no_grad():
            for t_proxy, t_model in zip(self.proxy.state_dict().values(),
                                        model.state_dict().values()):
                t_proxy.copy_(t_model)
        self.proxy.train(model.training)

    def before_update(self, model, x, x_adv, y, loss_fn) -> None:
        self.steps += 1
        if self.steps <= self.warmup_steps:
            return
        self._sync_proxy(model)
        self.v = awp_perturbation(self.proxy, self.names, self.gamma,
                                  lambda m: loss_fn(m, x, x_adv, y))
        self._apply(model, +1.0)

    def after_update(self, model) -> None:
        if self.v is not None:
            self._apply(model, -1.0)
            self.v = None

    def _apply(self, model, sign: float) -> None:
        with torch.no_grad():
            for n, d in self.v.items():
                model.get_parameter(n).add_(d, alpha=sign)

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))


# --------------------------------------------------------------------------- measuring it
class RobustMonitor:
    """``epoch_callback`` for ``training.fit`` that watches robust overfitting.

    Every ``every`` epochs it measures, in eval mode and at the model's own (unperturbed)
    weights, the clean accuracy and the PGD-``steps`` robust accuracy and robust loss on each
    named subset of ``sets = {name: (x, y)}``, as ``{name}_clean_acc``, ``{name}_rob_acc`` and
    ``{name}_rob_loss``.  The model with the highest ``{select}_rob_acc`` (a validation split,
    never the test set) is kept in memory and, if ``best_path`` is given, on disk, so a resumed
    training still knows its best epoch.  Not AWP-specific: any adversarial training can use it.
    """

    def __init__(self, sets: dict, eps: float, steps: int = 10, select: str = "val",
                 every: int = 1, best_path=None, resume: bool = False):
        if select not in sets:
            raise ValueError(f"select={select!r} must name one of the monitored sets {list(sets)}")
        self.sets, self.eps, self.steps, self.select = sets, eps, steps, select
        self.every, self.best_path = max(1, int(every)), best_path
        self.best_acc, self.best_epoch, self._best_state = -1.0, 0, None
        if best_path is not None and Path(best_path).exists():
            if resume:
                meta = torch.load(best_path, map_location="cpu", weights_only=True)["meta"]
                self.best_acc, self.best_epoch = meta["best_acc"], meta["epoch"]
            else:
                Path(best_path).unlink()

    def __call__(self, model, epoch: int) -> dict:
        if epoch % self.every:
            return {}
        row = {}
        for name, (x, y) in self.sets.items():
            row[f"{name}_clean_acc"] = robust_loss(model, x, y, 0.0)[1]
            loss, acc = robust_loss(model, x, y, self.eps, steps=self.steps)
            row[f"{name}_rob_acc"], row[f"{name}_rob_loss"] = acc, loss
        if row[f"{self.select}_rob_acc"] > self.best_acc:
            self.best_acc, self.best_epoch = row[f"{self.select}_rob_acc"], epoch
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.best_path is not None:
                save_checkpoint(self.best_path, model, {"epoch": epoch, "best_acc": self.best_acc})
        return row

    def best_state(self) -> dict:
        """State dict of the best model so far (from disk after a resumed run)."""
        if self._best_state is None:
            if self.best_path is None or not Path(self.best_path).exists():
                raise RuntimeError("no best model recorded yet")
            self._best_state = torch.load(self.best_path, map_location="cpu",
                                          weights_only=True)["model"]
        return self._best_state


def step_overhead(model: nn.Module, method, x: torch.Tensor, y: torch.Tensor,
                  gamma: float = 0.01, repeats: int = 30, lr: float = 0.01) -> dict:
    """Seconds per training step of plain ``method`` vs ``method`` + AWP on the batch (x, y).

    The two steps are timed alternately on a copy of ``model`` (the model is untouched), so a
    load that changes during the measurement affects both alike.  The overhead is the median
    over the ``repeats`` (>= 2) alternated pairs of ``awp / at - 1``, with a 95% bootstrap
    interval of that median over the pairs: a run-to-run spread, not only a point.  Returns
    ``{"at_s", "awp_s"`` (the fastest repeat of each, as ``timeit`` reports), ``"overhead",
    "interval", "pair_overheads"`` (numpy, one per pair)``}``.
    """
    import numpy as np

    from ..core import claims

    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 (an interval needs pairs), got {repeats}")
    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    hook = AWP(net, gamma)
    times = {False: [], True: []}
    for _ in range(repeats):
        for use_awp in (False, True):
            t0 = time.perf_counter()
            x_adv = method.adversarial(net, x, y)
            if use_awp:
                hook.before_update(net, x, x_adv, y, method.loss)
            loss = method.loss(net, x, x_adv, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_awp:
                hook.after_update(net)
            times[use_awp].append(time.perf_counter() - t0)
    pairs = np.array(times[True]) / np.array(times[False]) - 1
    return {"at_s": min(times[False]), "awp_s": min(times[True]),
            "overhead": float(np.median(pairs)),
            "interval": claims.bootstrap_interval(pairs, stat=np.median),
            "pair_overheads": pairs}


def hooked_step(model: nn.Module, opt, method, x, x_adv, y, gamma: float) -> dict:
    """One AT-AWP training step on the batch, in the order ``training.fit`` calls the hook:
    ``before_update`` (v at w, added), the optimiser step on the loss at w + v,
    ``after_update`` (the same v subtracted).  ``x``, ``x_adv``: (B, C, H, W) in [0, 1], ``y``:
    (B,).  Updates ``model`` and ``opt`` in place; returns v ``{name: tensor shaped like w_l}``."""
    hook = AWP(model, gamma)
    hook.before_update(model, x, x_adv, y, method.loss)
    v = {k: t.clone() for k, t in hook.v.items()}
    loss = method.loss(model, x, x_adv, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    hook.after_update(model)
    return v


# --------------------------------------------------------------------------- the experiment
def train_one(run, name: str, seed: int, method, gamma: float, warmup_epochs: int, *, cfg,
              train: tuple, monitor_sets: dict, arch: str, model_kwargs: dict, eps: float,
              dataset: str, monitor: tuple) -> dict:
    """Train one model (``gamma = 0``: plain ``method``; else ``method`` + AWP), resumable.

    ``train`` = (x (N, C, H, W) in [0, 1], y (N,)); ``monitor_sets`` = {"train"|"val"|"test":
    (x, y)} watched by a ``RobustMonitor`` every ``monitor[2]`` epochs with PGD-``monitor[1]``
    (``monitor`` = (n_monitor_per_class, monitor_steps, monitor_every_epochs)); the best epoch
    is picked on "val".  ``run`` is the notebook's ``Run`` (models, work checkpoints).  Returns
    ``{"last", "best"}`` models (eval mode), ``best_epoch``, ``history`` (one dict per epoch),
    ``seconds`` and ``resumed_from``."""
    from ..core import training, weights

    model = run.make_model(arch, seed, **model_kwargs)
    config = {"name": name, "arch": arch, "model_kwargs": model_kwargs, "gamma": gamma,
              "warmup": warmup_epochs, "method": vars(method), "cfg": vars(cfg), "seed": seed,
              "n_train": len(train[0]), "monitor": list(monitor)}
    ckpt = run.work_checkpoint(f"{name}-s{seed}-g{gamma}", config,
                               code=[sys.modules[__name__], weights])
    mon = RobustMonitor(monitor_sets, eps, monitor[1], select="val", every=monitor[2],
                        best_path=ckpt.with_name(ckpt.stem + "-best.pt"), resume=ckpt.exists())
    steps_per_epoch = -(-len(train[0]) // cfg.batch_size)
    hooks = [AWP(model, gamma, warmup_epochs * steps_per_epoch)] if gamma > 0 else []
    res = training.fit(model, train, method, training.TrainConfig(**{**vars(cfg), "seed": seed}),
                       hooks=hooks, epoch_callback=mon, checkpoint=ckpt,
                       meta={"arch": arch, "dataset": dataset}, desc=f"{name} seed {seed}")
    best = run.make_model(arch, seed, **model_kwargs)
    best.load_state_dict(mon.best_state())
    best.eval()
    return {"last": res.model, "best": best, "best_epoch": mon.best_epoch,
            "history": res.history, "seconds": res.seconds, "resumed_from": res.resumed_from}


def evaluate(model: nn.Module, x, y, x_train, y_train, eps: float, steps: int,
             strong: dict | None = None) -> tuple:
    """One row of the evaluation table, and per-image correctness (numpy 0/1 arrays).

    ``x`` (N, C, H, W), ``y`` (N,): the test subset; ``x_train``, ``y_train``: a training slice
    for the robust generalisation gap (train minus test PGD accuracy, both at the unperturbed
    weights).  Accuracies are fractions in [0, 1].  Every PGD stops attacking an image once it
    is fooled and restarts only the images still robust (``early_stop``: the accuracy can only
    be lower than without it).  ``strong``: ``idx`` and ``aa_idx`` (sorted index arrays into
    x, e.g. from ``data.stratified_indices``), ``steps``, ``restarts`` (PGD with restarts, worst
    case per image), ``aa_version``, ``aa_iter``, ``aa_targets``, ``seed`` (AutoAttack); the row
    then also holds PGD-``steps`` on the same subsets, for a like-for-like comparison, and
    ``worst``: the accuracy on the ``aa_idx`` images when every attack run counts (an image is
    robust only if PGD-``steps``, AutoAttack and, where ``aa_idx`` lies inside ``idx``, the PGD
    with restarts all fail on it).  Returns ``(row, {"pgd20": (N,), "train_pgd20":
    (len(x_train),), "worst": (len(aa_idx),)})`` (``worst`` only with ``strong``)."""
    from ..core import evaluation

    acc, adv, correct = evaluation.accuracy, evaluation.adversarial_examples, evaluation.correct
    x_pgd = adv(model, x, y, "pgd", eps, steps=steps, early_stop=True)
    x_train_pgd = adv(model, x_train, y_train, "pgd", eps, steps=steps, early_stop=True)
    row = {"clean": acc(model, x, y), "pgd20": acc(model, x_pgd, y),
           "train_pgd20": acc(model, x_train_pgd, y_train)}
    row["gap"] = row["train_pgd20"] - row["pgd20"]
    per_image = {"pgd20": correct(model, x_pgd, y).numpy(),
                 "train_pgd20": correct(model, x_train_pgd, y_train).numpy()}
    if strong:
        i, j = torch.as_tensor(strong["idx"]), torch.as_tensor(strong["aa_idx"])
        x50 = adv(model, x[i], y[i], "pgd", eps, steps=strong["steps"],
                  restarts=strong["restarts"], early_stop=True)
        x_aa = adv(model, x[j], y[j], "autoattack", eps, version=strong["aa_version"],
                   n_iter=strong["aa_iter"], n_target_classes=strong["aa_targets"],
                   seed=strong["seed"])
        worst = correct(model, x_pgd[j], y[j]) * correct(model, x_aa, y[j])
        if torch.isin(j, i).all():  # stratified subsets of one seed are nested
            worst = worst * correct(model, x50, y[i])[torch.searchsorted(i, j)]
        row.update({"pgd20_strong_subset": acc(model, x_pgd[i], y[i]),
                    "pgd50_restarts": acc(model, x50, y[i]),
                    "pgd20_aa_subset": acc(model, x_pgd[j], y[j]),
                    "autoattack": acc(model, x_aa, y[j]), "worst": float(worst.float().mean())})
        per_image["worst"] = worst.numpy()
    return row, per_image


def masking_check_rows(model: nn.Module, x, y, eps: float, row: dict, steps: int,
                       strong_label: str, aa_name: str) -> list:
    """The gradient-masking checks of one model, as ``(check, value, passed)`` rows.

    ``x`` (N, C, H, W), ``y`` (N,): the AutoAttack subset; ``row``: the model's row of the
    evaluation table (``evaluate`` with ``strong``; accuracies as fractions).  Checks: the
    PGD-``steps`` accuracy falls as eps grows and is about 0 at a large eps; AutoAttack
    (``aa_name``) is not weaker than PGD-``steps`` on the same images; the PGD with restarts
    (``strong_label``) is not weaker than PGD-``steps`` on its own subset (2-point tolerance)."""
    from ..core import evaluation

    checks = evaluation.gradient_masking_checks(model, x, y, eps, steps=steps,
                                                pgd_acc=row["pgd20_aa_subset"],
                                                aa_acc=row["autoattack"])
    mono, large = checks["monotone_in_eps"], checks["zero_at_large_eps"]
    return [
        (f"PGD-{steps} accuracy falls as eps grows",
         ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(mono["eps"], mono["accuracy"])),
         bool(mono["passed"])),
        (f"PGD-{steps} accuracy about 0 at eps={large['eps']}", f"{large['accuracy']:.3f}",
         bool(large["passed"])),
        (f"{aa_name} <= PGD-{steps} (same images)",
         f"{row['autoattack']:.3f} vs {row['pgd20_aa_subset']:.3f}",
         bool(checks["autoattack_not_weaker"]["passed"])),
        (f"{strong_label} <= PGD-{steps} (same images)",
         f"{row['pgd50_restarts']:.3f} vs {row['pgd20_strong_subset']:.3f}",
         bool(row["pgd50_restarts"] <= row["pgd20_strong_subset"] + 0.02))]


def masking_caveat(failed, *models) -> str:
    """The caveat of a claim resting on ``models`` ((method, checkpoint) pairs, every seed):
    empty when none of them is in ``failed`` ((method, checkpoint, seed) triples)."""
    names = sorted(f"{m} {w} (seed {s})" for m, w, s in failed if (m, w) in models)
    return "gradient-masking checks failed on " + ", ".join(names) if names else ""


def pick_on_validation(val_acc: dict) -> dict:
    """The candidate of each arm with the highest validation robust accuracy.

    ``val_acc``: ``{(arm, value): accuracy}``, e.g. ``{("AT", 5e-4): 0.49, ("AT", 5e-3): 0.51,
    ("AT-AWP", 0.005): 0.53, ...}``.  Returns ``{arm: value}``.  Every arm must have the same
    number of candidates: a knob tuned for one arm is tuned the same way for the other (ties go
    to the first candidate)."""
    arms: dict = {}
    for (arm, value), a in val_acc.items():
        arms.setdefault(arm, []).append((value, a))
    sizes = {arm: len(c) for arm, c in arms.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every arm needs the same number of candidates, got {sizes}")
    return {arm: max(c, key=lambda va: va[1])[0] for arm, c in arms.items()}


def drop_of(results, name: str, seed: int, key: str = "pgd20") -> float:
    """Best-minus-last ``key`` accuracy of ``name`` on ``seed``, in points (the evaluation table
    ``results`` has columns method, seed, checkpoint = best|last and ``key`` as a fraction)."""
    t = results[(results.method == name) & (results.seed == seed)].set_index("checkpoint")
    return 100 * (t.loc["best", key] - t.loc["last", key])


def per_seed_table(results, seeds):
    """Per seed, in points: PGD-20 test accuracy of the best and last checkpoints of AT and
    AT-AWP, their best-minus-last drop and train-test gap, and, where the strong attacks ran
    (a ``worst`` column), the same under the worst case of all attacks (the numbers behind
    the claims)."""
    import pandas as pd

    rows = []
    for s in seeds:
        row = {"seed": s}
        for name in ("AT", "AT-AWP"):
            t = results[(results.method == name) & (results.seed == s)].set_index("checkpoint")
            row.update({f"{name} best": 100 * t.loc["best", "pgd20"],
                        f"{name} last": 100 * t.loc["last", "pgd20"],
                        f"{name} drop": drop_of(results, name, s),
                        f"{name} gap": 100 * t.loc["last", "gap"]})
            if "worst" in t and t["worst"].notna().all():
                row.update({f"{name} worst best": 100 * t.loc["best", "worst"],
                            f"{name} worst last": 100 * t.loc["last", "worst"],
                            f"{name} worst drop": drop_of(results, name, s, "worst")})
        rows.append(row)
    return pd.DataFrame(rows).set_index("seed")


def claim_interval(seed_values, a, b) -> dict:
    """95% interval, in points, of a claim on a difference ``mean(a) - mean(b)``: a t-interval
    over the seeds when there are several (``seed_values``: the claim's number per seed, in
    points), else a paired interval over the test images of the one seed (``a``, ``b``: that
    seed's per-image values on the same images; 0/1 correctness gets Newcombe's interval,
    anything else, e.g. -1/0/1 per-image drops, a bootstrap over the images)."""
    from ..core import claims

    seed_values = list(seed_values)
    if len(seed_values) > 1:
        return dict(interval=claims.seed_interval(seed_values),
                    interval_kind=f"95% t-interval over {len(seed_values)} seeds")
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    binary = bool(np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all())
    lo, hi = claims.paired_bootstrap_interval(a, b)
    return dict(interval=[100 * lo, 100 * hi],
                interval_kind=f"95% {'Newcombe (paired)' if binary else 'paired bootstrap'} "
                              f"over {len(a)} test images, 1 seed")


def gap_interval(seed_values, a: dict, b: dict) -> dict:
    """95% interval, in points, of the difference of two robust generalisation gaps (train
    minus test PGD accuracy) of models ``a`` and ``b``: a t-interval over the seeds when there
    are several (``seed_values``: gap(a) - gap(b) per seed, in points), else a bootstrap over
    the training and the test images of the one seed, each resampled on its own (``a``, ``b``:
    the per-image dicts of ``evaluate``, with ``train_pgd20`` and ``pgd20`` 0/1 arrays)."""
    import numpy as np

    from ..core import claims

    seed_values = list(seed_values)
    if len(seed_values) > 1:
        return dict(interval=claims.seed_interval(seed_values),
                    interval_kind=f"95% t-interval over {len(seed_values)} seeds")
    d_train = np.asarray(a["train_pgd20"], float) - np.asarray(b["train_pgd20"], float)
    d_test = np.asarray(a["pgd20"], float) - np.asarray(b["pgd20"], float)
    lo, hi = claims.two_sample_bootstrap_interval(d_train, d_test)
    return dict(interval=[100 * lo, 100 * hi],
                interval_kind=f"95% bootstrap over {len(d_train)} training and {len(d_test)} "
                              "test images (paired per set), 1 seed")


def spread(per_seed, *keys) -> str:
    """'mean (std) of n seeds' of the per-seed columns behind a claim, or their one value."""
    mean = per_seed.mean()
    if len(per_seed) < 2:
        return "1 seed, no spread: " + ", ".join(f"{k} {mean[k]:.1f}" for k in keys)
    std = per_seed.std()
    return f"mean (std) of {len(per_seed)} seeds: " + ", ".join(
        f"{k} {mean[k]:.1f} ({std[k]:.1f})" for k in keys)


def run_metrics(table, per_seed, sharpness: dict, **extra) -> dict:
    """The flat metrics dict of the run: every (method, checkpoint) x column of ``table`` that
    was measured (the strong attacks run on the first seed only: no NaN entries), the
    per-seed means, the landscape sharpness of each model, and ``extra``."""
    def key(k):
        return k.lower().replace("-", "_").replace(" ", "_")

    metrics = {f"{key(name)}_{which}_{k}": float(v)
               for (name, which), row in table.iterrows() for k, v in row.items() if v == v}
    metrics.update({f"mean_{key(k)}": float(v) for k, v in per_seed.mean().items()})
    metrics.update({f"sharpness_{key(k)}": float(v) for k, v in sharpness.items()})
    return {**metrics, **extra}


def sharpness_over_directions(models: dict, x, y, eps: float, seeds, at: float = 0.5,
                              steps: int = 10) -> dict:
    """Sharpness of each model along further random directions: ``{label: [one value per
    seed]}``.

    ``models``: ``{label: model}``; direction ``k`` is ``filter_normalized_direction`` drawn
    with ``torch.Generator().manual_seed(seeds[k])``, the same draw for every model (same
    architecture).  Only ``alpha = -at, 0, at`` are measured (all that ``landscape_sharpness``
    reads), with PGD-``steps`` re-crafted at each; ``x`` (N, C, H, W), ``y`` (N,)."""
    from ..core import weights

    out = {label: [] for label in models}
    for s in seeds:
        for label, model in models.items():
            d = weights.filter_normalized_direction(model,
                                                    generator=torch.Generator().manual_seed(s))
            curve = weights.weight_loss_landscape(model, x, y, d, [-at, 0.0, at], eps,
                                                  steps=steps)
            out[label].append(weights.landscape_sharpness(curve, at))
    return out


def landscape_table(curves: dict):
    """Long table (model, alpha, robust_loss, robust_acc) of the landscapes in ``curves``."""
    import pandas as pd

    return pd.DataFrame([{"model": k, "alpha": a, "robust_loss": lo, "robust_acc": ac}
                         for k, c in curves.items()
                         for a, lo, ac in zip(c["alpha"], c["loss"], c["acc"])])


def _fmt_claim(c) -> str:
    iv = "" if not c.interval else f", 95% interval [{c.interval[0]:+.2f}, {c.interval[1]:+.2f}]"
    return (f"**{c.statement}**: {c.verdict} (ours {c.measured:+.2f} {c.unit}{iv}; "
            f"{c.criterion})")


def read_verdicts(claims, diag) -> str:
    """Markdown bullets reading each claim's verdict on this run, with the likely reason when a
    claim does not hold (``diag``: the learning-curve table indexed by method, with the test
    and train robust losses).  Every number comes from ``claims`` and ``diag``."""
    by_id = {c.id: c for c in claims.items}
    lines = [f"- {_fmt_claim(c)}." for c in claims.items]
    at, awp_ = diag.loc["AT"], diag.loc["AT-AWP"]
    rise = at["last test rob loss"] - at["min test rob loss"]
    if "at_overfits" in by_id and not by_id["at_overfits"].holds:
        lines.append(f"- AT's accuracy drop did not clear the bar; its test robust loss rose by "
                     f"{rise:.2f} from its minimum, so "
                     + ("robust overfitting shows in the loss (reason (i) applies to the "
                        "accuracy only)." if rise > 0.05 else
                        "there was little robust overfitting to cure (reason (i))."))
    if "awp_smaller_gap" in by_id and by_id["awp_smaller_gap"].holds:
        under = awp_["last train rob loss"] > at["last train rob loss"]
        lines.append(f"- AT-AWP's final training robust loss is "
                     f"{awp_['last train rob loss']:.2f} against AT's "
                     f"{at['last train rob loss']:.2f}: its smaller gap comes "
                     + ("partly from fitting the training set less (reason (ii) in part)."
                        if under else "with a training fit as good as AT's."))
    for cid in ("awp_shrinks_drop", "awp_last_not_worse"):
        c = by_id.get(cid)
        if c is not None and c.verdict == "inconclusive":
            lines.append(f"- *{c.statement}* is inconclusive: its interval straddles the bar "
                         "(reason (iii), seed and test-set noise; more seeds or test images "
                         "would decide it)" + (f"; {c.note.split('caveat: ')[-1]}"
                                               if "caveat" in c.note else "") + ".")
    return "\n".join(lines)


def summary(claims, diag, per_seed, sharpness: dict, overhead: float, gamma: float) -> str:
    """The lesson's summary as Markdown bullets, every number from the run."""
    at, awp_ = diag.loc["AT"], diag.loc["AT-AWP"]
    mean = per_seed.mean()
    s = claims.summary
    heads = [c for c in claims.items if c.kind == "headline"]
    rise = at["last test rob loss"] - at["min test rob loss"]
    return "\n".join([
        f"- **Robust overfitting.** AT's test robust loss went from its minimum "
        f"{at['min test rob loss']:.2f} (epoch {at['min-loss epoch']:.0f}) to "
        f"{at['last test rob loss']:.2f} at the end "
        + ("(robust overfitting in the loss)" if rise > 0.05 else "(little robust overfitting)")
        + f"; its PGD accuracy changed by {-mean['AT drop']:+.1f} points from the best to the "
        "last checkpoint" + (f" ({-mean['AT worst drop']:+.1f} under the worst case of all "
                             "attacks)." if "AT worst drop" in mean else "."),
        f"- **AWP** (one normalised ascent step per layer, gamma = {gamma:g} picked on "
        f"validation) kept the test loss at {awp_['last test rob loss']:.2f}; its best-minus-last "
        f"drop is {mean['AT-AWP drop']:.1f} points and its last checkpoint scores "
        f"{mean['AT-AWP last']:.1f}% against AT's {mean['AT last']:.1f}% (PGD).",
        f"- **Flatness.** Along one random direction the robust loss of AT-AWP rises by "
        f"{sharpness['AT-AWP last']:.2f} at the probe, AT's by {sharpness['AT last']:.2f}; "
        f"AWP costs {overhead:+.0%} per training step.",
        f"- **Verdict.** {sum(c.holds for c in heads)} of {len(heads)} headline claims and "
        f"{s['holds']} of {s['n']} claims in all hold on this run; an interval that straddles "
        "its bar makes a claim inconclusive rather than a success.",
    ])


# --------------------------------------------------------------------------- figures
def plot_learning_curves(histories: dict, best_epochs: dict, decays, colors: dict,
                         title: str, monitor_steps: int):
    """Robust accuracy (%) and robust loss per epoch of each method (``histories``: {name:
    DataFrame with epoch and {train,val,test}_rob_{acc,loss}}), train dashed, val dotted, test
    solid; a star at the epoch picked on validation; grey lines at the learning-rate decays.
    The legend sits outside the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.8))
    for name, h in histories.items():
        for ax, key, scale in zip(axes, ("rob_acc", "rob_loss"), (100, 1)):
            for part, ls in (("train", "--"), ("val", ":"), ("test", "-")):
                ax.plot(h["epoch"], scale * h[f"{part}_{key}"], ls=ls, color=colors[name])
            be = best_epochs[name]
            ax.plot(be, scale * h.set_index("epoch").loc[be, f"test_{key}"], "*", ms=13,
                    color=colors[name])
    for ax, ylabel in zip(axes, (f"robust accuracy, PGD-{monitor_steps} (%)",
                                 f"robust loss, PGD-{monitor_steps} cross-entropy (nats)")):
        for d in decays:
            ax.axvline(d + 0.5, color="gray", lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    handles = [Line2D([], [], color=c, label=n) for n, c in colors.items() if n in histories]
    handles += [Line2D([], [], color="k", ls=ls, label=p) for p, ls in
                (("train slice", "--"), ("validation", ":"), ("test slice", "-"))]
    handles += [Line2D([], [], color="k", marker="*", ls="", ms=10, label="best epoch (val)"),
                Line2D([], [], color="gray", label="learning-rate decay")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(w_pad=3)
    return fig


def plot_landscape(curves: dict, sharpness: dict, colors: dict, title: str):
    """The 1-D weight-loss landscapes (``curves``: {label: weight_loss_landscape dict}), robust
    loss and robust accuracy (%) against alpha; the legend (outside) gives each sharpness."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, c in curves.items():
        style = dict(color=colors[label.split()[0]], ls=":" if "best" in label else "-",
                     marker="o", ms=3, label=f"{label} (sharpness {sharpness[label]:.2f})")
        axes[0].plot(c["alpha"], c["loss"], **style)
        axes[1].plot(c["alpha"], [100 * a for a in c["acc"]], **style)
    axes[0].set_ylabel("robust loss (cross-entropy, nats)")
    axes[1].set_ylabel("robust accuracy (%)")
    for ax in axes:
        ax.set_xlabel("alpha: step along d, in units of each filter's norm")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gamma_sweep(sweep, gamma: float):
    """Validation (last epoch) and test (best / last checkpoint) PGD accuracy, in %, against
    gamma (``sweep``: DataFrame with gamma, val_last, test_best, test_last as fractions); a
    grey line at the gamma picked on validation."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    labels = {"val_last": "validation, last epoch", "test_best": "test, best checkpoint",
              "test_last": "test, last checkpoint"}
    for key, style in (("val_last", ":"), ("test_best", "--"), ("test_last", "-")):
        ax.plot(sweep["gamma"], 100 * sweep[key], marker="o", ls=style, label=labels[key])
    ax.axvline(gamma, color="gray", lw=1, label=f"picked on validation ({gamma:g})")
    ax.set_xlabel("gamma, AWP's relative radius (0 = plain AT)")
    ax.set_ylabel("PGD robust accuracy (%)")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    ax.set_title("How large a weight perturbation?", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- explorer
def landscape_explorer(models: dict, x, y, eps: float, colors: dict | None = None,
                       steps: int = 5, display: bool = True):
    """A widget that answers: *is AT-AWP's landscape flatter than AT's along any direction, or
    only along the one the notebook drew?*  Controls pick a random filter-normalised direction
    (``direction seed``), the range of alpha and clean vs robust loss (PGD-``steps`` re-crafted
    at every alpha); the **Draw** button recomputes the 1-D landscape of every model in
    ``models`` ({name: model}) on (x, y) (x: (N, C, H, W) in [0, 1], y: (N,)).  Nothing is
    recomputed while a slider moves.

    Returns the ``ipywidgets.VBox``; ``box.update()`` draws as the button does, and
    ``box.curves`` holds the last drawn ``{name: weight_loss_landscape dict}``.  With
    ``display=False`` it is only built (and drawn once)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    import numpy as np

    from ..core.weights import filter_normalized_direction, weight_loss_landscape

    seed_w = W.IntSlider(0, 0, 20, description="direction seed", continuous_update=False)
    amax_w = W.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1, description="alpha max",
                           continuous_update=False)
    robust_w = W.Checkbox(False, description=f"robust loss (PGD-{steps})")
    button = W.Button(description="Draw")
    out = W.Output()
    box = W.VBox([W.HBox([seed_w, amax_w, robust_w, button]), out])
    box.curves = {}

    def update(*_):
        alphas = np.linspace(-amax_w.value, amax_w.value, 9)
        curves = {}
        for name, model in models.items():
            d = filter_normalized_direction(
                model, generator=torch.Generator().manual_seed(seed_w.value))
            curves[name] = weight_loss_landscape(model, x, y, d, alphas,
                                                 eps if robust_w.value else 0.0, steps=steps)
        box.curves = curves
        out.clear_output(wait=True)
        with out:
            fig, ax = plt.subplots(figsize=(6.5, 3.2))
            for name, c in curves.items():
                ax.plot(c["alpha"], c["loss"], marker="o", label=name,
                        color=(colors or {}).get(name))
            ax.set_xlabel("alpha: step along the direction, in units of each filter's norm")
            ax.set_ylabel(f"robust loss, PGD-{steps} (nats)" if robust_w.value
                          else "clean loss (nats)")
            ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
            fig.tight_layout()
            plt.show()
            plt.close(fig)

    button.on_click(update)
    box.update = update
    update()
    if display:
        from IPython.display import display as ipy_display
        ipy_display(box)
    return box
