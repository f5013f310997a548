"""Lee, Kim & Ro, ICCV 2023: Mitigating Adversarial Vulnerability through Causal Parameter
Estimation by Adversarial Double Machine Learning (ADML, arXiv 2307.07250).

ADML treats the adversarial perturbation ``t = x_adv - x`` as a treatment and estimates its
causal effect ``theta`` on the prediction, then fine-tunes an adversarially trained network to
shrink it.  As the official code computes it (``utils/utils.py::dml_loss``), every mini-batch
is attacked once (PGD), then split in two halves B1, B2:

* on B1 the ordinary defence loss: ``CE(f(x_adv_1), y_1)`` (ADML-ADV);
* on B2, for the *fooled* examples W = {i : argmax p(x_adv_i) != y_i}, a closed-form,
  per-example, detached ``theta_i = 1 / p(yhat_i | x_adv_i) - 1`` (the odds against the
  adversarial class, in [0, K-1]) weights two terms, plus a clean CE on all of B2::

      L_ADML(B2) = mean_W theta * -log(p(y | x_adv) + 1e-3)
                 + mean_W theta *  log(p(yhat | x_adv) + 1e-3)
                 + mean_B2 CE(f(x), y)

One optimiser step covers ``L = CE(B1) + L_ADML(B2)`` (ADML-ADV).  The official variants swap
the B1 loss: ADML-TRADES (TRADES on B1, beta = 2, adversarial examples from the same CE-PGD) and
ADML-MART (MART on B1, beta = 2); ``ADMLMethod(defence=...)`` runs them.  ADML-AWP (an AWP
weight perturbation on top of MART) is not implemented.

Learning rate: the official fine-tune steps ``torch.optim.lr_scheduler.CyclicLR`` after every
iteration (0 -> peak over the first fifth of the iterations, back to 0 over the rest, with its
default momentum cycle 0.9 -> 0.8 -> 0.9).  ``core.training.fit`` sets the learning rate once
per epoch, so ``CyclicSGD`` (a ``TrainingHook``) replays every update as SGD with that
per-iteration learning rate and momentum, from the gradients ``fit`` just computed.

Seeds: ``seed_claim`` turns per-seed measurements into a claim with a Student-t interval over
the seeds (``core.claims.seed_interval``) and names the seeds on which the claim fails alone.

Official code: ByungKwanLee/Double-Debiased-Adversary.  Deviations: (1) when no example of B2
is fooled the two theta terms are skipped and the batch is counted (the official ``mean`` of
an empty set is NaN, which fp32 on CPU would write into the weights); (2) the cyclic schedule
is replayed by a hook (exact for plain SGD with momentum and weight decay, checked against
torch's ``CyclicLR`` in the tests); the up phase is a fraction of the iterations (official:
round(epochs / 5) epochs, which is 0 for fewer than 3 epochs); (3) an odd batch gives B2 the
extra example (official: ``drop_last``); (4) fp32, no AMP/DDP/FFCV.

Shapes: images ``x`` [B, C, H, W] in [0, 1]; labels ``y`` int64 [B]; logits [B, K].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import attacks, evaluation, training
from ..core.claims import paired_bootstrap_interval, seed_interval, verdict

FLOOR = 1e-3   # the official code's floor inside the logs


# --------------------------------------------------------------------------- the method
def theta_hat(logits_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example causal parameter on adversarial logits [B, K] with labels [B].

    Returns ``(theta [B], fooled [B] bool)``: ``theta_i = 1 / p(yhat_i) - 1`` for fooled
    examples (yhat = argmax != y), 0 for the others; detached (no gradient), in [0, K-1]."""
    p = F.softmax(logits_adv.detach(), 1)
    p_hat, y_hat = p.max(1)
    fooled = y_hat != y
    theta = torch.where(fooled, 1.0 / p_hat - 1.0, torch.zeros_like(p_hat))
    return theta, fooled


def adml_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor,
              theta_one: bool = False) -> tuple[torch.Tensor, int]:
    """``L_ADML`` on one half-batch: adversarial logits [B, K], clean logits [B, K], labels [B].

    ``theta_one=True`` replaces theta by 1 (the ablation).  Returns ``(loss, n_fooled)``; with
    no fooled example the loss is the clean CE alone (finite, never NaN)."""
    theta, fooled = theta_hat(logits_adv, y)
    loss = F.cross_entropy(logits_nat, y)
    n_fooled = int(fooled.sum())
    if n_fooled:
        p = F.softmax(logits_adv[fooled], 1)
        yw = y[fooled]
        y_hat = p.detach().argmax(1)
        w = torch.ones_like(theta[fooled]) if theta_one else theta[fooled]
        p_true = p.gather(1, yw[:, None]).squeeze(1)
        p_wrong = p.gather(1, y_hat[:, None]).squeeze(1)
        loss = loss + (w * -torch.log(p_true + FLOOR)).mean() \
            + (w * torch.log(p_wrong + FLOOR)).mean()
    return loss, n_fooled


@dataclass
class ADMLMethod(training.Method):
    """ADML-ADV (or its theta = 1 ablation) as a ``training.Method`` for the shared ``fit``
    loop: the PGD attack of ``pgd_at`` on the whole batch, then ``CE(B1) + L_ADML(B2)``.

    ``defence``: the loss on B1: 'ce' (ADML-ADV), 'trades' or 'mart' (ADML-TRADES / -MART,
    weight ``beta``; official 2), always on the CE-PGD examples, as the official code.
    ``stats`` counts steps, batches with no fooled example (skipped theta terms), fooled and
    seen examples of B2, and the sum of theta over them."""

    theta_one: bool = False
    defence: str = "ce"

    def __post_init__(self):
        self.name = "pgd_at"
        if self.defence not in ("ce", "trades", "mart"):
            raise ValueError(f"unknown ADML defence {self.defence!r}; allowed: ce, trades, mart")
        super().__post_init__()
        self.stats = {"steps": 0, "skipped": 0, "fooled": 0, "seen": 0, "theta_sum": 0.0}

    def loss(self, model, x, x_adv, y):
        h = len(y) // 2
        if not h:
            l1 = 0.0
        elif self.defence == "ce":
            l1 = F.cross_entropy(model(x_adv[:h]), y[:h])
        else:
            l1 = training.METHODS[self.defence](model, x[:h], x_adv[:h], y[:h], self.beta)
        logits_adv2 = model(x_adv[h:])
        l2, n_fooled = adml_loss(logits_adv2, model(x[h:]), y[h:], self.theta_one)
        s = self.stats
        s["steps"] += 1
        s["skipped"] += n_fooled == 0
        s["fooled"] += n_fooled
        s["seen"] += len(y) - h
        s["theta_sum"] += float(theta_hat(logits_adv2, y[h:])[0].sum())
        return l1 + l2


class StatsHook(training.TrainingHook):
    """Saves and restores an ``ADMLMethod``'s ``stats`` with ``fit``'s checkpoints, so a
    resumed fine-tune reports the counts of the whole run."""

    def __init__(self, method: ADMLMethod):
        self.method = method

    def state_dict(self) -> dict:
        return dict(self.method.stats)

    def load_state_dict(self, state: dict) -> None:
        self.method.stats.update(state)


def cyclic_lr(it: int, total: int, peak: float, up_frac: float = 0.2,
              momentum: tuple = (0.8, 0.9)) -> tuple[float, float]:
    """(lr, momentum) at iteration ``it`` (0-based) of ``total``, as torch's ``CyclicLR`` with
    ``base_lr=0, max_lr=peak``, ``step_size_up = max(1, round(up_frac * total))`` and the rest
    down, mode 'triangular', default momentum cycle (``momentum[1]`` at lr 0, ``momentum[0]``
    at the peak)."""
    up = max(1, round(up_frac * total))
    down = max(1, total - up)
    size = up + down
    x = 1.0 + it / size - math.floor(1 + it / size)
    scale = x / (up / size) if x <= up / size else (x - 1) / (up / size - 1)
    return peak * scale, momentum[1] - (momentum[1] - momentum[0]) * scale


class CyclicSGD(training.TrainingHook):
    """Replays each of ``fit``'s updates as SGD (momentum, weight decay, no dampening, no
    Nesterov) with the per-iteration ``cyclic_lr`` learning rate and momentum.

    ``before_update`` keeps the weights; ``after_update`` discards the step ``fit``'s own
    optimizer took and writes ``w - lr_t * buf`` with ``buf = m_t * buf + grad + wd * w``,
    from the gradients still on the parameters.  ``total``: number of updates of the run;
    ``weight_decay``: the ``TrainConfig``'s.  Its state (iteration, momentum buffers) goes into
    ``fit``'s checkpoints, so a resumed run continues the same schedule."""

    def __init__(self, total: int, peak: float, weight_decay: float, up_frac: float = 0.2):
        self.total, self.peak, self.wd, self.up_frac = total, peak, weight_decay, up_frac
        self.it, self.bufs, self._before, self.lrs = 0, None, None, []

    def before_update(self, model, x, x_adv, y, loss_fn) -> None:
        self._before = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def after_update(self, model) -> None:
        lr, mom = cyclic_lr(self.it, self.total, self.peak, self.up_frac)
        params = list(model.parameters())
        if self.bufs is None:
            self.bufs = [None] * len(params)
        for i, (p, w) in enumerate(zip(params, self._before)):
            if p.grad is None:
                p.copy_(w)
                continue
            d = p.grad + self.wd * w
            self.bufs[i] = d.clone() if self.bufs[i] is None else self.bufs[i].mul_(mom).add_(d)
            p.copy_(w - lr * self.bufs[i])
        self.lrs.append(lr)
        self.it += 1

    def state_dict(self) -> dict:
        return {"it": self.it, "lrs": list(self.lrs),
                "bufs": [b if b is not None else torch.zeros(0) for b in (self.bufs or [])]}

    def load_state_dict(self, state: dict) -> None:
        self.it, self.lrs = int(state["it"]), list(state["lrs"])
        self.bufs = [b if b.numel() else None for b in state["bufs"]] or None


class BatchRecorder(training.TrainingHook):
    """Records the labels of every batch ``fit`` trains on (to check that arms see the same
    batches)."""

    def __init__(self):
        self.labels = []

    def before_update(self, model, x, x_adv, y, loss_fn) -> None:
        self.labels.append(y.clone())


# --------------------------------------------------------------------------- arms and seeds
def arms(eps: float, steps: int, trades_beta: float, variants=(), variant_beta: float = 2.0):
    """The fine-tuning arms as {name: factory of a fresh ``training.Method``} (a method keeps
    per-run counters, so every run gets its own): AT continued (the control), ADML (ADML-ADV),
    ADML theta=1 (the ablation), TRADES continued (a reference), and ADML-TRADES / ADML-MART
    for each of ``variants`` ('trades', 'mart'; B1 loss with weight ``variant_beta``)."""
    out = {"AT continued": lambda: training.Method("pgd_at", eps=eps, steps=steps),
           "ADML": lambda: ADMLMethod(eps=eps, steps=steps),
           "ADML theta=1": lambda: ADMLMethod(eps=eps, steps=steps, theta_one=True),
           "TRADES continued": lambda: training.Method("trades", eps=eps, steps=steps,
                                                       beta=trades_beta)}
    for v in variants:
        out[f"ADML-{v.upper()}"] = (lambda v=v: ADMLMethod(eps=eps, steps=steps, defence=v,
                                                          beta=variant_beta))
    return out


def finetune_config(epochs: int, batch_size: int, lr: float, seed: int) -> training.TrainConfig:
    """The fine-tuning config of every arm: ``seed`` sets the batch order (``fit``'s shuffling
    generator).  The rate is constant at the cyclic peak; ``CyclicSGD`` sets it per update."""
    return training.TrainConfig(epochs, batch_size, lr, schedule="constant", seed=seed)


def n_updates(n_train: int, batch_size: int, epochs: int) -> int:
    """Updates ``fit`` makes: ceil(n_train / batch_size) per epoch."""
    return math.ceil(n_train / batch_size) * epochs


def check_sizes(y_train_pool, y_test_pool, **sizes) -> None:
    """Raise ``ValueError`` naming the knob and the largest value that fits when a per-class
    size cannot be drawn from the dataset.  ``sizes``: ``n_train_per_class`` (checked against
    the training labels), ``n_eval_per_class`` and ``aa_n_per_class`` (test labels)."""
    for knob, n in sizes.items():
        pool = np.asarray(y_train_pool if knob.startswith("n_train") else y_test_pool)
        fits = int(np.bincount(pool).min())
        if knob == "aa_n_per_class":
            fits = min(fits, sizes.get("n_eval_per_class", fits))
        if n is not None and n > fits:
            raise ValueError(f"{knob} = {n} does not fit this dataset: at most {fits} per class")


def check_start(loaded: tuple, dataset: str) -> tuple:
    """``(model, meta)`` from ``Run.load_model``, unchanged, after checking that the checkpoint
    was trained on ``dataset`` (a model of another dataset would be fine-tuned silently)."""
    model, meta = loaded
    if meta.get("dataset") != dataset:
        raise ValueError(f"the starting checkpoint was trained on {meta.get('dataset')!r}, not "
                         f"{dataset!r}: run 00_baselines with dataset {dataset!r} first")
    return model, meta


def seed_values(per_seed: dict, fn) -> np.ndarray:
    """``fn(results_of_one_seed)`` for every seed of ``per_seed`` ({seed: {arm: results}}),
    in seed order, as an array [S]."""
    return np.array([fn(per_seed[s]) for s in per_seed], float)


def seed_claim(claims, id: str, statement: str, paper: str, values, op: str,
               threshold: float, seeds, seed_intervals=None, **kw):
    """A claim about the method, measured on several fine-tuning seeds.

    ``values`` [S]: the measurement on each seed; ``seed_intervals``: each seed's own interval
    over the evaluation images, or None.  The claim's number is the seed mean; its interval is
    the Student-t interval over the seeds (``seed_interval``), widened to the mean of the
    seeds' own intervals where those are wider (seeds that agree exactly do not make a
    measurement on a few hundred images exact).  With one seed: that seed's interval, said so.
    The note lists every seed's value and verdict and names the seeds on which the claim fails
    alone, so a claim that holds on the mean but fails on a seed says so."""
    values = np.asarray(values, float)
    ivs = list(seed_intervals) if seed_intervals is not None else [None] * len(values)
    per = [verdict(v, op, threshold, iv) for v, iv in zip(values, ivs)]
    mean = float(values.mean())
    iv = seed_interval(values)
    if iv is None:
        iv, kind = ivs[0], "one fine-tuning seed: 95% interval over images, no seed spread"
    else:
        kind = f"95% Student-t over {len(values)} fine-tuning seeds"
        if all(v is not None for v in ivs):
            img = (float(np.mean([v[0] for v in ivs])), float(np.mean([v[1] for v in ivs])))
            if img[0] < iv[0] or img[1] > iv[1]:
                kind += ", widened to the seeds' mean interval over images"
            iv = (min(iv[0], img[0]), max(iv[1], img[1]))
        iv = (min(iv[0], mean), max(iv[1], mean))
    bad = [str(s) for s, v in zip(seeds, per) if v == "does not hold"]
    note = "per seed: " + ", ".join(f"seed {s} {v:+.3f} ({vd})"
                                    for s, v, vd in zip(seeds, values, per))
    if bad:
        note += f"; fails on seed {', '.join(bad)} alone"
    return claims.check(id, statement, paper, mean, op, threshold, interval=iv,
                        interval_kind=kind, note=note, **kw)


def per_seed_pgd(per_seed: dict, stat, a: str, b: str, y) -> np.ndarray:
    """``stat(pgd_a, pgd_b, y)`` on every seed (per-image PGD correctness of arms a, b)."""
    return seed_values(per_seed, lambda r: stat(r[a]["pgd"], r[b]["pgd"], y))


def per_seed_bootstrap(per_seed: dict, stat, a: str, b: str, y, n_boot: int,
                       seed: int) -> list:
    """Each seed's ``stratified_bootstrap`` interval of ``stat(pgd_a, pgd_b, y)``."""
    return [stratified_bootstrap(stat, [r[a]["pgd"], r[b]["pgd"]], y, n_boot, seed)
            for r in per_seed.values()]


def paired_intervals(per_seed: dict, a: str, b: str, key: str, seed: int = 0) -> list:
    """Each seed's paired interval of mean(a[key]) - mean(b[key]) over the same images."""
    return [paired_bootstrap_interval(r[a][key], r[b][key], seed=seed)
            for r in per_seed.values()]


def seed_table(per_seed: dict, arms, keys=("clean", "pgd", "aa")):
    """Rows = arms; for each key the seed mean and the seed standard deviation (ddof 1; NaN
    with one seed) of the arm's mean accuracy, over the seeds on which the arm ran (NaN for a
    key the arm was not evaluated on, e.g. no AA-lite)."""
    import pandas as pd

    rows = {}
    for arm in arms:
        row = {}
        for k in keys:
            v = np.array([r[arm][k].mean() for r in per_seed.values() if k in r.get(arm, {})])
            row[f"{k} mean"] = v.mean() if len(v) else np.nan
            row[f"{k} sd"] = v.std(ddof=1) if len(v) > 1 else np.nan
        row["seeds"] = sum(arm in r for r in per_seed.values())
        rows[arm] = row
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------- evaluation
def evaluate(model, x, y, aa_idx, eps: float, steps: int, restarts: int, aa_version: str,
             aa_iter: int, aa_targets: int, seed: int, do_aa: bool = True) -> dict:
    """Per-image results of one model on the evaluation set x [N, C, H, W], y [N].

    Returns numpy arrays: ``clean``, ``pgd`` (0/1 [N], PGD-``steps`` x ``restarts``),
    ``theta`` and ``fooled`` ([N], theta_hat at the PGD examples), and, when ``do_aa``,
    ``aa`` (0/1 on ``x[aa_idx]``: robust to both PGD and AA, the worst case per image).
    The PGD random starts are drawn after ``torch.manual_seed(seed)``: every model is attacked
    with the same stream."""
    torch.manual_seed(seed)
    x_adv = evaluation.adversarial_examples(model, x, y, "pgd", eps, steps=steps,
                                            restarts=restarts, progress=True)
    dev = next(model.parameters()).device
    with torch.no_grad(), attacks.eval_mode(model):
        logits = torch.cat([model(b.to(dev)).cpu() for b in x_adv.split(500)])
    theta, fooled = theta_hat(logits, y.cpu())
    out = {"clean": evaluation.correct(model, x, y).numpy(),
           "pgd": evaluation.correct(model, x_adv, y).numpy(),
           "theta": theta.numpy(), "fooled": fooled.float().numpy()}
    if do_aa:
        x_aa = evaluation.adversarial_examples(model, x[aa_idx], y[aa_idx], "autoattack", eps,
                                               version=aa_version, n_iter=aa_iter,
                                               n_target_classes=aa_targets, seed=seed)
        out["aa_only"] = evaluation.correct(model, x_aa, y[aa_idx]).numpy()
        out["aa"] = out["pgd"][aa_idx] * out["aa_only"]
    return out


def group_gain(a, b, y, classes) -> float:
    """Mean over ``classes`` of the per-class accuracy difference a - b (per-image 0/1
    arrays [N] of two arms on the same images, labels [N])."""
    y = np.asarray(y)
    k = int(np.max(y)) + 1
    d = per_class(a, y, k) - per_class(b, y, k)
    return float(np.mean(d[list(classes)]))


def weak_minus_rest(a, b, y, weak) -> float:
    """How much larger the a - b gain is on the ``weak`` classes than on the others."""
    y = np.asarray(y)
    k = int(np.max(y)) + 1
    rest = [c for c in range(k) if c not in set(weak)]
    return group_gain(a, b, y, weak) - group_gain(a, b, y, rest)


def spread_change(a, b, y) -> float:
    """spread(per-class accuracy of a) - spread(of b)."""
    y = np.asarray(y)
    k = int(np.max(y)) + 1
    return spread(per_class(a, y, k)) - spread(per_class(b, y, k))


def arms_table(results: dict, y, aa_idx, seconds: dict, stats: dict, num_classes: int):
    """One row per arm: clean, PGD, AA-lite (worst case with PGD), worst-class and spread of
    per-class PGD accuracy, std across classes, expected theta, skipped theta terms, time."""
    import pandas as pd

    rows = {}
    for arm, r in results.items():
        pc = per_class(r["pgd"], y, num_classes)
        rows[arm] = {"clean": r["clean"].mean(), "PGD": r["pgd"].mean(),
                     "AA-lite": r["aa"].mean() if "aa" in r else np.nan,
                     "worst class PGD": np.nanmin(pc), "spread PGD": spread(pc),
                     "class std PGD": np.nanstd(pc), "E[theta]": r["theta"].mean(),
                     "skipped batches": stats.get(arm, {}).get("skipped", np.nan),
                     "fine-tune s": seconds.get(arm, np.nan)}
    return pd.DataFrame(rows).T


def per_class(values, y, num_classes: int) -> np.ndarray:
    """Class means [K] of per-image ``values`` [N] (0/1 correctness gives per-class accuracy;
    NaN for a class absent from ``y``)."""
    v, y = np.asarray(values, float), np.asarray(y)
    return np.array([v[y == c].mean() if (y == c).any() else np.nan for c in range(num_classes)])


def class_theta(theta, fooled, y, num_classes: int) -> dict:
    """Per class [K]: the fooled fraction, the mean theta over the fooled examples (NaN if
    none) and the expected theta (mean over all examples, theta = 0 when not fooled)."""
    theta, fooled, y = np.asarray(theta, float), np.asarray(fooled, float), np.asarray(y)
    mean_fooled = np.array([theta[(y == c) & (fooled > 0)].mean()
                            if ((y == c) & (fooled > 0)).any() else np.nan
                            for c in range(num_classes)])
    return {"fooled": per_class(fooled, y, num_classes), "theta_fooled": mean_fooled,
            "theta_expected": per_class(theta, y, num_classes)}


def theta_vulnerability_rho(theta, fooled, correct, y, num_classes: int) -> float:
    """Spearman correlation, over the classes with at least one fooled image, between the
    mean theta of the fooled images and the class's error rate 1 - mean(correct)."""
    t = class_theta(theta, fooled, y, num_classes)["theta_fooled"]
    err = 1 - per_class(correct, y, num_classes)
    ok = ~np.isnan(t) & ~np.isnan(err)
    return spearman(t[ok], err[ok]) if ok.sum() >= 3 else float("nan")


def spread(acc) -> float:
    """max - min of per-class accuracies [K]."""
    return float(np.nanmax(acc) - np.nanmin(acc))


def spearman(a, b) -> float:
    """Spearman rank correlation of two vectors (ties get average ranks)."""
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def stratified_bootstrap(stat, arrays, y, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(*arrays, y)`` resampling images *within each class*
    (the per-class counts stay fixed), with the same indices for every array in ``arrays``
    (paired: arms measured on the same images).  The interval always contains the point."""
    y = np.asarray(y)
    arrays = [np.asarray(a, float) for a in arrays]
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(y == c) for c in np.unique(y)]
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(p, len(p)) for p in pools])
        boots.append(stat(*[a[idx] for a in arrays], y[idx]))
    point = stat(*arrays, y)
    lo, hi = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(min(lo, point)), float(max(hi, point))


# --------------------------------------------------------------------------- figures
def plot_phenomenon(accs: dict, class_names, ylabel: str):
    """Per-class robust accuracy of several AT models ({label: [K]}), classes sorted by the
    first model's accuracy, one line per model."""
    import matplotlib.pyplot as plt

    first = np.asarray(next(iter(accs.values())))
    order = np.argsort(first)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for label, acc in accs.items():
        ax.plot(range(len(order)), np.asarray(acc)[order], marker="o", label=label)
    ax.set_xticks(range(len(order)), [class_names[i] for i in order], rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_per_class_arms(accs: dict, n_per_class: int, class_names, ylabel: str):
    """Grouped bars of per-class accuracy for each arm ({arm: [K]}), with 95% Wilson
    intervals from ``n_per_class`` images per class."""
    import matplotlib.pyplot as plt

    from ..core.claims import wilson_interval

    k, m = len(class_names), len(accs)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / m
    for j, (arm, acc) in enumerate(accs.items()):
        acc = np.asarray(acc)
        iv = np.array([wilson_interval(int(round(a * n_per_class)), n_per_class) for a in acc])
        err = np.stack([acc - iv[:, 0], iv[:, 1] - acc])
        ax.bar(np.arange(k) + (j - (m - 1) / 2) * width, acc, width, yerr=err, capsize=2,
               label=arm)
    ax.set_xticks(range(k), class_names, rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_per_class_seeds(accs: dict, class_names, ylabel: str, order=None):
    """Per-class accuracy of several arms over seeds: ``accs`` {arm: [S, K]}.  One line per arm
    at the seed mean, a band from the lowest to the highest seed and the seeds as dots;
    classes sorted by ``order`` (default: the first arm's mean)."""
    import matplotlib.pyplot as plt

    first = np.asarray(next(iter(accs.values())), float)
    order = np.argsort(first.mean(0)) if order is None else np.asarray(order)
    xs = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for arm, a in accs.items():
        a = np.asarray(a, float)[:, order]
        line, = ax.plot(xs, a.mean(0), marker="o", label=f"{arm} (mean of {len(a)} seeds)")
        ax.fill_between(xs, a.min(0), a.max(0), color=line.get_color(), alpha=0.2)
        for row in a:
            ax.plot(xs, row, ".", color=line.get_color(), alpha=0.5)
    ax.set_xticks(xs, [class_names[i] for i in order], rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
              title="band: lowest to highest seed")
    fig.tight_layout()
    return fig


def plot_theta(thetas: dict, class_names, ylabel: str):
    """Grouped bars of a per-class theta statistic ({model: [K]})."""
    import matplotlib.pyplot as plt

    k, m = len(class_names), len(thetas)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / m
    for j, (name, th) in enumerate(thetas.items()):
        ax.bar(np.arange(k) + (j - (m - 1) / 2) * width, np.nan_to_num(th), width, label=name)
    ax.set_xticks(range(k), class_names, rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- widget
def class_explorer(results: dict, y, class_names, aa_idx=None, display: bool = True):
    """A class picker: for the chosen class, each arm's clean, PGD and AA-lite accuracy and
    its mean theta over fooled images, as bars and a one-line text.

    ``results``: {arm: output of ``evaluate``}; ``y`` [N] the evaluation labels; ``aa_idx``
    the AA subset's indices.  Returns the widget box (``display=False`` only builds it)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    y = np.asarray(y)
    pick = W.Dropdown(options=[(n, i) for i, n in enumerate(class_names)], value=0,
                      description="class")
    text, out = W.HTML(), W.Output()

    def update(_=None):
        c = pick.value
        rows = {}
        for arm, r in results.items():
            m = y == c
            row = {"clean": r["clean"][m].mean(), "PGD": r["pgd"][m].mean()}
            if "aa" in r and aa_idx is not None:
                row["AA-lite"] = r["aa"][y[aa_idx] == c].mean()
            fooled = m & (r["fooled"] > 0)
            row["theta"] = r["theta"][fooled].mean() if fooled.any() else float("nan")
            rows[arm] = row
        text.value = f"<b>{class_names[c]}</b>: " + "; ".join(
            f"{a} PGD {v['PGD']:.0%}, mean theta {v['theta']:.2f}" for a, v in rows.items())
        out.clear_output(wait=True)
        with out:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
            keys = [k for k in ("clean", "PGD", "AA-lite") if k in next(iter(rows.values()))]
            for j, (arm, v) in enumerate(rows.items()):
                a1.bar(np.arange(len(keys)) + j * 0.8 / len(rows), [v[k] for k in keys],
                       0.8 / len(rows), label=arm)
                a2.bar(j, v["theta"])
            a1.set_xticks(np.arange(len(keys)) + 0.4 - 0.4 / len(rows), keys)
            a1.set_ylabel("accuracy on this class")
            a1.set_ylim(0, 1)
            a2.set_xticks(range(len(rows)), list(rows), rotation=30, ha="right")
            a2.set_ylabel("mean theta (fooled images)")
            a1.legend(fontsize=7)
            fig.tight_layout()
            plt.show()

    pick.observe(update, names="value")
    update()
    box = W.VBox([pick, text, out])
    if display:
        from IPython.display import display as ipy_display
        ipy_display(box)
    return box
