"""Robust anomaly detection with adversarial autoencoders (Beggel, Pfeiffer, Bischl, ECML-PKDD 2019).

There is no official code; this module is our implementation of the paper's description:

* ``Autoencoder``: MLP encoder f: x -> z and decoder g: z -> x (sigmoid output).  With
  ``adversarial=True`` it is an AAE (Makhzani et al. 2015): BatchNorm after the encoder's hidden
  layers and a discriminator D: z -> logit that tells prior samples z ~ N(0, I) from codes f(x).
* ``train_autoencoder``: per mini-batch, (1) reconstruction phase on sum_i w_i l(x_i),
  (2) discriminator phase, (3) generator (encoder) phase.  Per-sample weights w_i in {1, 0, <0}
  carry ITSR's dropped (0) and pushed-away (negative) samples; the batch loss is normalised by
  sum_i |w_i| and all-zero samples are removed from the batch.
* Detection: l(y) > T_rec (reconstruction), log p(f(y)) < T_prior (likelihood under the prior),
  or either (combined); thresholds are percentiles of the *training* scores.
* ``itsr``: Iterative Training Set Refinement -- pretrain; d rounds of (one-class SVM on the
  latent codes -> drop its outliers -> train); retrain with a negative weight on the most
  suspicious candidates.  It never sees the anomaly labels.
* Data: ``contaminate`` builds a training set of normals with a fraction alpha of anomalies.
* Metrics: TPR / TNR / balanced accuracy (anomaly = positive) and AUROC.

Images are float tensors in [0, 1] of shape [N, 1, 28, 28] (any [N, ...] works: they are
flattened); l(x) is the mean squared error over pixels, so it lies in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import progress as progress_bar
from ..core.training import load_checkpoint, save_checkpoint

RULES = ("rec", "lik", "combined")


# --------------------------------------------------------------------------- models
class Autoencoder(nn.Module):
    """MLP autoencoder; an AAE when ``adversarial`` (BN in the encoder + a discriminator).

    Encoder: in_dim -> hidden -> hidden -> latent (ReLU, optional BatchNorm before each ReLU);
    decoder: latent -> hidden -> hidden -> in_dim (ReLU, sigmoid output);
    discriminator: latent -> hidden -> hidden -> 1 logit (ReLU).  The paper uses hidden = 1000.
    """

    def __init__(self, in_dim: int = 784, hidden: int = 256, latent: int = 32,
                 adversarial: bool = False, batchnorm: bool | None = None):
        super().__init__()
        bn = adversarial if batchnorm is None else batchnorm
        self.latent, self.adversarial, self.in_dim = latent, adversarial, in_dim

        def block(cin):
            return [nn.Linear(cin, hidden), *([nn.BatchNorm1d(hidden)] if bn else []), nn.ReLU()]

        self.encoder = nn.Sequential(*block(in_dim), *block(hidden), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, in_dim), nn.Sigmoid())
        self.discriminator = (nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                            nn.Linear(hidden, hidden), nn.ReLU(),
                                            nn.Linear(hidden, 1))
                              if adversarial else None)

    def encode(self, x):
        """Codes [B, latent] of images [B, ...]."""
        return self.encoder(x.flatten(1))

    def forward(self, x):
        """Reconstruction of ``x``, same shape."""
        return self.decoder(self.encode(x)).view_as(x)


def per_sample_error(x_hat, x):
    """l(x) = mean over pixels of (x - x_hat)^2, shape [B]."""
    return (x_hat - x).pow(2).flatten(1).mean(1)


# --------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    """Optimisation settings shared by every phase: Adam (no weight decay, fixed LR) with one
    optimiser per phase (reconstruction: f and g; discriminator: D; generator: f).

    ``adv_clip`` bounds the generator loss of negatively weighted samples (a negative weight
    is gradient *ascent*; without a bound it would push their codes to infinity)."""

    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    adv_clip: float = 5.0


def _optimizers(model, lr):
    opts = [torch.optim.Adam([*model.encoder.parameters(), *model.decoder.parameters()], lr=lr)]
    if model.adversarial:
        opts += [torch.optim.Adam(model.discriminator.parameters(), lr=lr),
                 torch.optim.Adam(model.encoder.parameters(), lr=lr)]
    return opts


def weighted_mean(losses, w):
    """sum_i w_i loss_i / sum_i |w_i|: a negative w_i turns sample i's descent into ascent,
    and dropping samples (w_i = 0) does not change the effective learning rate."""
    return (w * losses).sum() / w.abs().sum()


def train_step(model, opts, xb, wb, gen: torch.Generator, adv_clip: float = 5.0) -> dict | None:
    """One mini-batch of the three AAE phases (only the first for a plain AE).

    ``wb`` [B] are per-sample weights; samples with w = 0 are removed from the batch, the
    losses are sum_i w_i loss_i / sum_i |w_i|.  Returns the losses, or None if fewer than two
    samples have a non-zero weight (BatchNorm needs two).
    """
    keep = wb != 0
    if int(keep.sum()) < 2:
        return None
    xb, wb = xb[keep], wb[keep]
    norm = wb.abs().sum()
    # 1. reconstruction phase: f, g on the weighted reconstruction error
    loss_rec = weighted_mean(per_sample_error(model(xb), xb), wb)
    opts[0].zero_grad(set_to_none=True)
    loss_rec.backward()
    opts[0].step()
    out = {"rec": loss_rec.item()}
    if not model.adversarial:
        return out
    disc = model.discriminator
    # 2. regularisation, discriminator: prior samples -> 1, codes -> 0 (codes weighted by |w|)
    with torch.no_grad():
        z_fake = model.encode(xb)
    z_real = torch.randn(len(xb), model.latent, generator=gen).to(xb.device)
    ones, zeros = torch.ones(len(xb), device=xb.device), torch.zeros(len(xb), device=xb.device)
    d_real = F.binary_cross_entropy_with_logits(disc(z_real).squeeze(1), ones)
    d_fake = (wb.abs() * F.binary_cross_entropy_with_logits(
        disc(z_fake).squeeze(1), zeros, reduction="none")).sum() / norm
    opts[1].zero_grad(set_to_none=True)
    (d_real + d_fake).backward()
    opts[1].step()
    # 3. regularisation, generator: f makes D(f(x)) -> 1, weighted by w (w < 0: away, bounded)
    g = F.binary_cross_entropy_with_logits(disc(model.encode(xb)).squeeze(1), ones,
                                           reduction="none")
    g = torch.where(wb < 0, g.clamp(max=adv_clip), g)
    loss_g = weighted_mean(g, wb)
    opts[2].zero_grad(set_to_none=True)
    loss_g.backward()
    opts[2].step()
    out.update(disc=(d_real + d_fake).item(), gen=loss_g.item())
    return out


def train_autoencoder(model, x, epochs: int, settings: TrainSettings, weights=None, *,
                      checkpoint: str | Path | None = None, epoch_callback: Callable | None = None,
                      save_every: int = 1, progress: bool = True, desc: str = "train") -> list:
    """Train ``model`` on images ``x`` [N, ...] with per-sample ``weights`` [N] (default 1).

    ``epoch_callback(model, epoch) -> dict | None`` runs after each epoch (the model is put
    back in train mode afterwards); its numbers go into that epoch's history row.  With
    ``checkpoint`` the state (weights, optimisers, RNG, history) is saved every ``save_every``
    epochs and at the end, and a matching checkpoint is resumed.  Returns the history rows;
    the model is left in eval mode.
    """
    dev = next(model.parameters()).device
    w = torch.ones(len(x)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    opts = _optimizers(model, settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    config = {**asdict(settings), "epochs": epochs, "n": len(x),
              "weights": _digest(w), "adversarial": model.adversarial}
    start, history = 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        blob = load_checkpoint(checkpoint, map_location=dev)
        if blob["meta"].get("config") == config:
            model.load_state_dict(blob["model"])
            for o, s in zip(opts, blob.get("optimizers", [])):
                o.load_state_dict(s)
            gen.set_state(blob["generator"])
            start, history = blob["meta"]["epoch"], list(blob["meta"]["history"])
    bar = progress_bar(range(start, epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=gen)
        sums, n = {}, 0
        for i in range(0, len(x), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            losses = train_step(model, opts, x[idx].to(dev), w[idx].to(dev), gen,
                                settings.adv_clip)
            for k, v in (losses or {}).items():
                sums[k] = sums.get(k, 0.0) + v
            n += losses is not None
        row = {"epoch": epoch + 1, **{f"{k}_loss": v / max(n, 1) for k, v in sums.items()}}
        if epoch_callback is not None:
            row.update(epoch_callback(model, epoch + 1) or {})
        history.append(row)
        bar.set_postfix(rec=f"{row.get('rec_loss', float('nan')):.4f}", refresh=False)
        done = epoch + 1 == epochs
        if checkpoint is not None and ((epoch + 1) % save_every == 0 or done):
            # a finished training needs no optimiser state to be "resumed": keep it small
            extra = {"generator": gen.get_state()}
            if not done:
                extra["optimizers"] = [o.state_dict() for o in opts]
            save_checkpoint(checkpoint, model, {"config": config, "epoch": epoch + 1,
                                                "history": history}, extra=extra)
    model.eval()
    return history


def _digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- scores
@torch.inference_mode()
def scores(model, x, batch_size: int = 2000) -> dict:
    """Eval-mode scores of images ``x``: ``rec`` [N] (reconstruction error), ``z`` [N, latent]
    and, for an AAE, ``loglik`` [N] = log N(f(x); 0, I)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    rec, zs = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        z = model.encode(xb)
        rec.append(per_sample_error(model.decoder(z).view_as(xb), xb).cpu())
        zs.append(z.cpu())
    model.train(was_training)
    z = torch.cat(zs)
    out = {"rec": torch.cat(rec), "z": z}
    if model.adversarial:
        out["loglik"] = prior_log_likelihood(z)
    return out


def prior_log_likelihood(z):
    """log N(z; 0, I_d) = -||z||^2 / 2 - (d / 2) log(2 pi), shape [N]."""
    return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


@dataclass
class Thresholds:
    """T_rec (reconstruction error) and T_prior (log-likelihood; None for a plain AE)."""

    rec: float
    loglik: float | None = None
    loglik_max: float | None = None   # log-density at the prior's mode, (d/2) log(2 pi) below 0


def fit_thresholds(train_scores: dict, rec_pct: float = 90, lik_pct: float = 10,
                   mask=None) -> Thresholds:
    """T_rec = the ``rec_pct`` percentile of the training errors, T_prior = the ``lik_pct``
    percentile of the training log-likelihoods (only over ``mask`` if given)."""
    m = slice(None) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    t_rec = float(np.percentile(train_scores["rec"][m].numpy(), rec_pct))
    if "loglik" not in train_scores:
        return Thresholds(t_rec)
    d = train_scores["z"].shape[1]
    return Thresholds(t_rec, float(np.percentile(train_scores["loglik"][m].numpy(), lik_pct)),
                      -0.5 * d * math.log(2 * math.pi))


def decide(s: dict, th: Thresholds, rule: str = "combined") -> torch.Tensor:
    """Bool [N]: anomalous iff l > T_rec ('rec'), log p(f(y)) < T_prior ('lik'), or either."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; allowed: {list(RULES)}")
    rec = s["rec"] > th.rec
    if rule == "rec":
        return rec
    if th.loglik is None:
        raise ValueError("the likelihood rule needs an AAE (a model with a latent prior)")
    lik = s["loglik"] < th.loglik
    return lik if rule == "lik" else rec | lik


def anomaly_score(s: dict, th: Thresholds, rule: str = "combined") -> torch.Tensor:
    """A continuous score whose threshold at 1 is exactly ``decide``: l / T_rec for 'rec',
    (c - log p) / (c - T_prior) with c the log-density at the mode for 'lik', and the maximum
    of both for 'combined'.  Its AUROC sweeps the threshold percentiles jointly."""
    rec = s["rec"] / th.rec
    if rule == "rec":
        return rec
    lik = (th.loglik_max - s["loglik"]) / (th.loglik_max - th.loglik)
    return lik if rule == "lik" else torch.maximum(rec, lik)


# --------------------------------------------------------------------------- metrics
def detection_metrics(is_anomaly, predicted) -> dict:
    """TPR, TNR and balanced accuracy (TPR + TNR) / 2 with the anomaly as the positive class."""
    from sklearn.metrics import confusion_matrix

    tn, fp, fn, tp = confusion_matrix(np.asarray(is_anomaly, bool), np.asarray(predicted, bool),
                                      labels=[False, True]).ravel()
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    tnr = tn / (tn + fp) if tn + fp else float("nan")
    return {"tpr": float(tpr), "tnr": float(tnr), "bacc": float((tpr + tnr) / 2)}


def auroc(is_anomaly, score) -> float:
    """Area under the ROC curve of ``score`` (higher = more anomalous)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_anomaly, bool), np.asarray(score, float)))


def evaluate(s: dict, is_anomaly, th: Thresholds, rules=RULES) -> dict:
    """{rule: {tpr, tnr, bacc, auroc}} of the test scores ``s`` (only 'rec' for a plain AE)."""
    rules = [r for r in rules if r == "rec" or th.loglik is not None]
    return {r: {**detection_metrics(is_anomaly, decide(s, th, r)),
                "auroc": auroc(is_anomaly, anomaly_score(s, th, r))} for r in rules}


# --------------------------------------------------------------------------- data
@dataclass
class ContaminatedSet:
    """A training set: ``x`` [n_normal + k, ...] (normals first), ``is_anomaly`` [N] bool (for
    reporting only), ``index`` [N] positions in the source arrays."""

    x: torch.Tensor
    is_anomaly: torch.Tensor
    index: torch.Tensor


def n_contaminants(alpha: float, n_normal: int) -> int:
    """k such that k / (n_normal + k) ~ alpha: k = round(alpha n / (1 - alpha))."""
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return int(round(alpha * n_normal / (1 - alpha)))


def contaminate(x, y, normal: int, anomaly: int, alpha: float, n_normal: int | None,
                seed: int) -> ContaminatedSet:
    """``n_normal`` images of class ``normal`` plus k = round(alpha n / (1 - alpha)) images of
    class ``anomaly``, drawn with ``seed``.

    The normals depend only on (normal, n_normal, seed), and for a given seed the anomalies of a
    smaller alpha are a subset of those of a larger one, so settings are paired.
    """
    pool_n = torch.nonzero(y == normal).flatten()
    pool_a = torch.nonzero(y == anomaly).flatten()
    n_normal = len(pool_n) if n_normal is None else n_normal
    k = n_contaminants(alpha, n_normal)
    if n_normal > len(pool_n) or k > len(pool_a):
        raise ValueError(f"asked for {n_normal} normals and {k} anomalies; the source has "
                         f"{len(pool_n)} of class {normal} and {len(pool_a)} of class {anomaly}")
    g_n = torch.Generator().manual_seed(int(seed))
    g_a = torch.Generator().manual_seed(int(seed) * 1000 + int(anomaly) + 1)
    idx = torch.cat([pool_n[torch.randperm(len(pool_n), generator=g_n)[:n_normal]],
                     pool_a[torch.randperm(len(pool_a), generator=g_a)[:k]]])
    is_anom = torch.cat([torch.zeros(n_normal, dtype=torch.bool), torch.ones(k, dtype=torch.bool)])
    return ContaminatedSet(x[idx], is_anom, idx)


def test_split(y, normal: int, anomalies) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, is_anomaly) of the test images of class ``normal`` or of any of ``anomalies``."""
    anomalies = torch.as_tensor(list(anomalies))
    keep = (y == normal) | torch.isin(y, anomalies)
    idx = torch.nonzero(keep).flatten()
    return idx, y[idx] != normal


# --------------------------------------------------------------------------- ITSR
@dataclass
class ITSRConfig:
    """Iterative Training Set Refinement (paper: 500 pretrain epochs, 10 rounds x 100 epochs,
    500 (FMNIST) / 1000 (MNIST) retrain epochs, nu = 0.02, 80th percentile).

    ``cumulative``: flagged samples stay excluded in later rounds and the OC-SVM is fit on the
    still-included codes (else: refit on all codes, the flagged set is replaced each round).
    ``retrain_scope``: 'candidates' = T_retrain is the ``retrain_pct`` percentile of the
    candidates' errors; 'all' = of every training error."""

    pretrain_epochs: int = 20
    rounds: int = 3
    round_epochs: int = 5
    retrain_epochs: int = 20
    nu: float = 0.02
    gamma: str | float = "scale"
    cumulative: bool = True
    retrain_pct: float = 80
    retrain_scope: str = "candidates"
    w_anomaly: float = -0.1

    def __post_init__(self):
        if self.retrain_scope not in ("candidates", "all"):
            raise ValueError("retrain_scope must be 'candidates' or 'all'")
        if self.w_anomaly > 0:
            raise ValueError("w_anomaly must be <= 0 (it pushes suspected anomalies away)")


@dataclass
class ITSRResult:
    weights: torch.Tensor                                 # final w_i [N]
    candidates: list = field(default_factory=list)        # flagged indices after each round
    errors: dict = field(default_factory=dict)            # phase -> training l(x_i) [N]
    history: list = field(default_factory=list)


def ocsvm_outliers(z, nu: float = 0.02, gamma="scale") -> torch.Tensor:
    """Bool [N]: the codes ``z`` [N, d] a one-class SVM (RBF kernel) fitted on them rejects."""
    from sklearn.svm import OneClassSVM

    svm = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma, cache_size=500)
    return torch.from_numpy(svm.fit(z.numpy().astype(np.float64)).predict(z.numpy()) == -1)


def itsr(model, x, cfg: ITSRConfig, settings: TrainSettings, *,
         checkpoint: Callable[[str], Path] | None = None, progress: bool = True,
         desc: str = "ITSR") -> ITSRResult:
    """Train the AAE ``model`` on the unlabeled images ``x`` with ITSR.

    ``checkpoint(phase) -> path`` gives each phase its resumable checkpoint (phases are
    'pretrain', 'round1'..., 'retrain').  The returned weights mark the refined set
    (w > 0), the dropped candidates (0) and the pushed-away ones (``w_anomaly``).
    """
    if not model.adversarial:
        raise ValueError("ITSR needs an adversarial autoencoder (latent codes with a prior)")
    ck = checkpoint or (lambda phase: None)
    w = torch.ones(len(x))
    res = ITSRResult(w)

    def phase(name, epochs):
        h = train_autoencoder(model, x, epochs, settings, w, checkpoint=ck(name),
                              progress=progress, desc=f"{desc} {name}")
        res.history += [{**r, "phase": name} for r in h]

    phase("pretrain", cfg.pretrain_epochs)
    res.errors["pretrain"] = scores(model, x)["rec"]
    flagged = torch.zeros(len(x), dtype=torch.bool)
    for r in range(1, cfg.rounds + 1):
        z = scores(model, x)["z"]                     # eval-mode codes
        if cfg.cumulative:
            inc = ~flagged
            out = torch.zeros(len(x), dtype=torch.bool)
            out[inc] = ocsvm_outliers(z[inc], cfg.nu, cfg.gamma)
            flagged = flagged | out
        else:
            flagged = ocsvm_outliers(z, cfg.nu, cfg.gamma)
        w = torch.where(flagged, 0.0, 1.0)
        res.candidates.append(torch.nonzero(flagged).flatten())
        phase(f"round{r}", cfg.round_epochs)
    if cfg.retrain_epochs:
        err = scores(model, x)["rec"]
        res.errors["refined"] = err
        ref = err[flagged] if cfg.retrain_scope == "candidates" else err
        if flagged.any():
            t_re = float(np.percentile(ref.numpy(), cfg.retrain_pct))
            w = torch.where(flagged & (err > t_re), cfg.w_anomaly, w)
        phase("retrain", cfg.retrain_epochs)
    res.weights = w
    res.errors["final"] = scores(model, x)["rec"]
    return res


# --------------------------------------------------------------------------- experiments
@dataclass
class Experiment:
    """What one AE / AAE / ITSR comparison trains: widths, latent sizes, epochs, thresholds.

    ``thresholds_on``: 'included' = ITSR's T_rec / T_prior come from its refined set (w > 0),
    'all' = from every training sample (AE and AAE always use every sample)."""

    hidden: int = 256
    ae_latent: int = 32
    aae_latent: int = 2
    ae_epochs: int = 40
    aae_epochs: int = 40
    itsr: ITSRConfig = field(default_factory=ITSRConfig)
    settings: TrainSettings = field(default_factory=TrainSettings)
    rec_pct: float = 90
    lik_pct: float = 10
    thresholds_on: str = "included"


def fit_detectors(x_train, x_test, exp: Experiment, methods=("ae", "aae", "itsr"), *,
                  checkpoint: Callable[[str], Path] | None = None, device=None,
                  progress: bool = True, desc: str = "") -> dict:
    """Train each method on the unlabeled ``x_train`` and score ``x_test``.

    Returns {method: {"model", "th" (Thresholds), "train" (scores), "test" (scores)}} and, for
    ITSR, "itsr" (the ``ITSRResult``).  ``checkpoint(name) -> path`` makes training resumable.
    Models are initialised from ``exp.settings.seed`` and live on ``device`` (default CPU);
    images stay where they are and move to the device batch by batch.
    """
    ck = checkpoint or (lambda name: None)
    in_dim = x_train[0].numel()
    out = {}
    for m in methods:
        torch.manual_seed(exp.settings.seed)
        adversarial = m != "ae"
        model = Autoencoder(in_dim, exp.hidden, exp.aae_latent if adversarial else exp.ae_latent,
                            adversarial=adversarial).to(device or "cpu")
        mask, extra = None, {}
        if m == "itsr":
            res = itsr(model, x_train, exp.itsr, exp.settings, progress=progress,
                       checkpoint=lambda phase: ck(f"itsr-{phase}"), desc=f"{desc} ITSR")
            extra["itsr"] = res
            mask = res.weights > 0 if exp.thresholds_on == "included" else None
        else:
            train_autoencoder(model, x_train, exp.ae_epochs if m == "ae" else exp.aae_epochs,
                              exp.settings, checkpoint=ck(m), progress=progress,
                              desc=f"{desc} {m.upper()}")
        s_train = scores(model, x_train)
        out[m] = {"model": model, "train": s_train, "test": scores(model, x_test),
                  "th": fit_thresholds(s_train, exp.rec_pct, exp.lik_pct, mask), **extra}
    return out


def evaluate_detectors(detectors: dict, y_test, normal: int, test_sets: dict) -> list[dict]:
    """Rows {test, method, rule, tpr, tnr, bacc, auroc} for every fitted detector (the output of
    ``fit_detectors``) on every test set ``{name: anomaly classes}`` (plus the normal class)."""
    rows = []
    for test, classes in test_sets.items():
        idx, is_anom = test_split(y_test, normal, classes)
        for method, d in detectors.items():
            sub = {k: v[idx] for k, v in d["test"].items()}
            for rule, r in evaluate(sub, is_anom, d["th"]).items():
                rows.append({"test": test, "method": method, "rule": rule, **r})
    return rows


def itsr_diagnostics(res: ITSRResult, is_anomaly) -> dict:
    """How well ITSR's refinement found the contaminants (uses the labels, for reporting only):
    precision / recall of the final candidate set, precision of the negatively weighted set, and
    the mean training error of normals and anomalies after pretraining and at the end."""
    is_anomaly = torch.as_tensor(is_anomaly, dtype=torch.bool)
    cand, neg = res.weights <= 0, res.weights < 0
    k = int(is_anomaly.sum())

    def prec(mask):
        return float(is_anomaly[mask].float().mean()) if mask.any() else float("nan")

    out = {"n_candidates": int(cand.sum()), "n_negative": int(neg.sum()),
           "precision": prec(cand), "recall": float(is_anomaly[cand].sum() / k) if k else
           float("nan"), "negative_precision": prec(neg), "base_rate": k / len(is_anomaly)}
    for phase in ("pretrain", "final"):
        e = res.errors[phase]
        out[f"err_normal_{phase}"] = float(e[~is_anomaly].mean())
        out[f"err_anomaly_{phase}"] = float(e[is_anomaly].mean()) if k else float("nan")
    return out


def error_ratio(errors, is_anomaly) -> float:
    """mean l(anomalies) / mean l(normals) over a training set (labels for reporting only)."""
    return float(errors[is_anomaly].mean() / errors[~is_anomaly].mean())


def memorisation_curve(model, train: ContaminatedSet, epochs: int, log_epochs, settings,
                       test=None, rec_pct: float = 90, **train_kw) -> list[dict]:
    """Train a plain AE on a contaminated set for ``epochs`` epochs at a fixed learning rate and
    log, at ``log_epochs``, the training error ratio r = mean l(anomalies) / mean l(normals)
    and (if ``test = (x, is_anomaly)``) the test BAcc / AUROC of the reconstruction rule."""
    log_epochs = set(log_epochs) | {epochs}

    def log(m, epoch):
        if epoch not in log_epochs:
            return None
        s = scores(m, train.x)
        row = {"ratio": error_ratio(s["rec"], train.is_anomaly),
               "err_normal": float(s["rec"][~train.is_anomaly].mean()),
               "err_anomaly": float(s["rec"][train.is_anomaly].mean())}
        if test is not None:
            th = fit_thresholds(s, rec_pct)
            r = evaluate(scores(m, test[0]), test[1], th, ("rec",))["rec"]
            row.update(test_bacc=r["bacc"], test_auroc=r["auroc"])
        return row

    hist = train_autoencoder(model, train.x, epochs, settings, epoch_callback=log, **train_kw)
    return [r for r in hist if "ratio" in r]


# --------------------------------------------------------------------------- figures
def latent_panel(ax, z, groups: dict, th: Thresholds | None = None, lim: float | None = None,
                 title: str = ""):
    """2-D codes on the prior's density contours, with the likelihood threshold's circle.

    ``groups = {label: (mask, scatter kwargs)}`` are drawn in order; ``lim`` (default: enough
    for 99.5% of the codes, at least 3.5) is the half-width of the square view.
    """
    from matplotlib.patches import Circle

    if lim is None:
        lim = max(3.5, float(np.percentile(z.abs().numpy(), 99.5)) * 1.05)
    g = np.linspace(-lim, lim, 200)
    gx, gy = np.meshgrid(g, g)
    dens = np.exp(-(gx ** 2 + gy ** 2) / 2) / (2 * np.pi)
    ax.contourf(gx, gy, dens, levels=8, cmap="Greys", alpha=0.35)
    for label, (mask, kw) in groups.items():
        zz = z[torch.as_tensor(mask, dtype=torch.bool)]
        ax.scatter(zz[:, 0], zz[:, 1], label=f"{label} ({len(zz)})", **{"s": 6, **kw})
    if th is not None and th.loglik is not None:
        radius = math.sqrt(2 * (th.loglik_max - th.loglik))
        ax.add_patch(Circle(
            (0, 0), radius, fill=False, ls="--", color="k", lw=1, label="T_prior"))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right", markerscale=2)
    return ax


def latent_explorer(detectors: dict, y_test, normal: int, class_names, display: bool = True):
    """Widget: pick a trained setting, a method and the threshold percentiles; see the test
    codes, the decision boundary (the T_prior circle) and the observed-anomaly BAcc.  It only
    re-thresholds stored scores (cheap) and updates when a slider is released.

    ``detectors = {setting label: (fit_detectors output, anomaly class)}``.  Returns the
    widget; after each update its ``result`` is ``{"setting", "method", "rec_pct",
    "lik_pct", "n_flagged", "tpr", "tnr", "bacc", "auroc"}``.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    def show(setting, method="itsr", rec_pct=90.0, lik_pct=10.0):
        det, anomaly = detectors[setting]
        d = det[method]
        th = fit_thresholds(d["train"], rec_pct, lik_pct,
                            d["itsr"].weights > 0 if method == "itsr" else None)
        idx, is_anom = test_split(y_test, normal, [anomaly])
        s = {k: v[idx] for k, v in d["test"].items()}
        r = evaluate(s, is_anom, th)["combined"]
        flagged = decide(s, th, "combined")
        fig, ax = plt.subplots(figsize=(5, 5))
        latent_panel(ax, s["z"], {
            f"normal ({class_names[normal]})": (~is_anom, {"c": "tab:blue", "alpha": 0.4}),
            f"anomaly ({class_names[anomaly]})": (is_anom, {"c": "tab:red", "alpha": 0.4}),
            "flagged": (flagged, {"facecolors": "none", "edgecolors": "k", "s": 14,
                                  "lw": 0.4})}, th,
            title=f"{setting}, {method}: BAcc {r['bacc']:.3f} (TPR {r['tpr']:.2f}, "
                  f"TNR {r['tnr']:.2f})")
        plt.show()
        plt.close(fig)
        return {"setting": setting, "method": method, "rec_pct": rec_pct, "lik_pct": lik_pct,
                "n_flagged": int(flagged.sum()), **r}

    w = W.interactive(show, setting=list(detectors), method=["aae", "itsr"],
                      rec_pct=W.FloatSlider(value=90, min=50, max=99.5, step=0.5,
                                            continuous_update=False),
                      lik_pct=W.FloatSlider(value=10, min=0.5, max=50, step=0.5,
                                            continuous_update=False))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w



# --------------------------------------------------------------------------- the notebook's experiment
DETECTOR_NAMES = {("ae", "rec"): "AE", ("aae", "rec"): "AAE-rec", ("aae", "lik"): "AAE-lik",
                  ("aae", "combined"): "AAE", ("itsr", "rec"): "ITSR-rec",
                  ("itsr", "lik"): "ITSR-lik", ("itsr", "combined"): "ITSR"}
SUMMARY_KEYS = ["data", "anomaly", "test", "alpha", "detector"]


def run_grid(name: str, train, test, class_names, normal: int, contaminants, alphas, n_normal,
             seeds, experiment: Callable, checkpoints: Callable, device=None, data_tag=None):
    """Train AE / AAE / ITSR for every seed x alpha x contaminating class (clean data once per
    seed, tested against every contaminating class) and evaluate them on the observed
    (normal + that class) and unobserved (normal + every other class) test sets.

    ``train`` / ``test``: (x, y) tensors;  ``experiment(seed) -> Experiment``;
    ``checkpoints(tag, config) -> (phase -> path)`` makes training resumable.  Returns
    ``(rows, diagnostics, fitted)``: a DataFrame of per-seed results [data, seed, alpha,
    contaminant, anomaly, test, method, rule, tpr, tnr, bacc, auroc, detector], a DataFrame
    of ``itsr_diagnostics`` per run, and ``fitted[(seed, alpha, class or None)] =
    (ContaminatedSet, fit_detectors output)``.
    """
    import pandas as pd

    from ..core.progress import progress as bar

    (x_tr, y_tr), (x_te, y_te) = train, test
    rows, diags, fitted = [], [], {}
    jobs = [(s, a, c) for s in seeds for a in alphas for c in (contaminants if a > 0 else [None])]
    for s, a, c in bar(jobs, desc=f"{name} grid"):
        cs = contaminate(x_tr, y_tr, normal, contaminants[0] if c is None else c, a, n_normal, s)
        exp = experiment(s)
        tag = f"{name}-{'clean' if c is None else c}-a{a}-s{s}"
        det = fit_detectors(cs.x, x_te, exp, device=device, progress=False,
                            checkpoint=checkpoints(tag, {"data": data_tag or name,
                                                         "normal": normal, "n": n_normal,
                                                         "exp": asdict(exp)}))
        fitted[(s, a, c)] = (cs, det)
        label = "none" if c is None else class_names[c]
        for tc in (contaminants if c is None else [c]):
            others = [k for k in range(len(class_names)) if k not in (normal, tc)]
            for r in evaluate_detectors(det, y_te, normal, {"observed": [tc], "unobserved": others}):
                rows.append({"data": name, "seed": s, "alpha": a, "contaminant": label,
                             "anomaly": class_names[tc], **r})
        diags.append({"data": name, "seed": s, "alpha": a, "contaminant": label,
                      "n_train": len(cs.x), "n_anomalies": int(cs.is_anomaly.sum()),
                      **itsr_diagnostics(det["itsr"]["itsr"], cs.is_anomaly)})
    df = pd.DataFrame(rows)
    df["detector"] = [DETECTOR_NAMES[(m, r)] for m, r in zip(df["method"], df["rule"])]
    return df, pd.DataFrame(diags), fitted


def summarise(df):
    """Seed means and standard deviations of bacc / tpr / tnr / auroc per
    (data, anomaly, test, alpha, detector), with the number of seeds."""
    g = df.groupby(SUMMARY_KEYS)[["bacc", "tpr", "tnr", "auroc"]]
    return g.mean().join(g.std().add_suffix("_std")).join(g.size().rename("n_seeds")).reset_index()


def paper_table(summary, paper: dict, detectors=("AE", "AAE", "ITSR")):
    """Our seed-mean BAcc (± std) next to the paper's, ``paper = {(data, anomaly, test,
    alpha): {detector: BAcc}}`` (NaN where the paper gives no number), with TPR, TNR, AUROC."""
    t = summary[summary["detector"].isin(detectors)].copy()
    t["paper BAcc"] = [paper.get((d, a, te, al), {}).get(m, np.nan) for d, a, te, al, m in
                       zip(t["data"], t["anomaly"], t["test"], t["alpha"], t["detector"])]
    t["BAcc (ours)"] = [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}"
                        for m, s in zip(t["bacc"], t["bacc_std"])]
    t["alpha"] = [f"{a:.1%}" for a in t["alpha"]]
    t = t.rename(columns={"tpr": "TPR", "tnr": "TNR", "auroc": "AUROC"})
    order = {d: i for i, d in enumerate(detectors)}
    t = t.sort_values(["anomaly", "test", "alpha", "detector"],
                      key=lambda c: c.map(order) if c.name == "detector" else c)
    return t.set_index(["anomaly", "test", "alpha", "detector"])[
        ["BAcc (ours)", "paper BAcc", "TPR", "TNR", "AUROC", "n_seeds"]].round(3)


def summary_value(summary, det, anomaly, alpha, col="auroc", test="observed") -> float:
    """One number of ``summarise``'s table (NaN if that setting was not run)."""
    r = summary[(summary["detector"] == det) & (summary["anomaly"] == anomaly)
                & (summary["alpha"] == alpha) & (summary["test"] == test)]
    return float(r[col].iloc[0]) if len(r) else float("nan")


def per_seed_difference(df, anomalies, test, alphas, det_a, det_b):
    """Per-seed BAcc(det_a) - BAcc(det_b), averaged over the given alphas and anomaly classes:
    a Series indexed by seed."""
    sub = df[df["anomaly"].isin(anomalies) & (df["test"] == test) & df["alpha"].isin(alphas)]
    p = sub.pivot_table(index=["seed", "anomaly", "alpha"], columns="detector", values="bacc")
    return (p[det_a] - p[det_b]).groupby("seed").mean()


def seed_stat(values) -> str:
    """'mean ± std over n seeds' (or 'mean (1 seed)') of per-seed values."""
    v = np.asarray(values, dtype=float)
    return (f"{v.mean():+.3f} ± {v.std(ddof=1):.3f} over {len(v)} seeds" if len(v) > 1
            else f"{v.mean():+.3f} (1 seed)")


def memorisation_figure(memo, class_names, anomaly_class: int, n_normal: int, alpha: float,
                        normal: int = 0):
    """Three panels against the epoch (log scale): the error ratio r (per seed and mean ± std),
    the normals' and contaminants' training errors, and the test BAcc of the reconstruction
    rule.  ``memo``: rows [seed, epoch, ratio, err_normal, err_anomaly, test_bacc]."""
    import matplotlib.pyplot as plt

    mean = memo.groupby("epoch")[["ratio", "err_normal", "err_anomaly", "test_bacc"]].agg(
        ["mean", "std"])
    ep = mean.index
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for _, g in memo.groupby("seed"):
        axes[0].plot(g["epoch"], g["ratio"], color="gray", lw=0.8, alpha=0.6)
        axes[2].plot(g["epoch"], g["test_bacc"], color="gray", lw=0.8, alpha=0.6)
    axes[0].errorbar(ep, mean[("ratio", "mean")], mean[("ratio", "std")].fillna(0),
                     marker="o", color="tab:red", label="mean over seeds (grey: each seed)")
    axes[0].axhline(1, color="k", ls=":", lw=1, label="r = 1: learned as well as normals")
    axes[0].set_ylabel("ratio r (contaminants / normals)")
    for col, c, lab in (("err_normal", "tab:blue", f"normals ({class_names[normal]})"),
                        ("err_anomaly", "tab:red", f"contaminants ({class_names[anomaly_class]})")):
        axes[1].errorbar(ep, mean[(col, "mean")], mean[(col, "std")].fillna(0), marker="o",
                         color=c, label=lab)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("mean training reconstruction error")
    axes[2].errorbar(ep, mean[("test_bacc", "mean")], mean[("test_bacc", "std")].fillna(0),
                     marker="o", color="tab:purple")
    axes[2].set_ylabel("test BAcc (reconstruction rule)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("epoch (log scale)")
    for ax in axes[:2]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    fig.suptitle(f"Plain AE on {n_normal} normals + {alpha:.0%} "
                 f"{class_names[anomaly_class]}s, fixed learning rate")
    fig.tight_layout()
    return fig


def bacc_vs_alpha(summary, title: str, normal_name: str):
    """One panel per (observed anomaly class, test set): seed-mean BAcc ± std against the
    contamination rate, for AE, the AAE's two signals (dotted) and their combination, and
    ITSR; the legend sits right of the panels."""
    import matplotlib.pyplot as plt

    panels = summary[["anomaly", "test"]].drop_duplicates().sort_values(["anomaly", "test"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.2, 3.3),
                             squeeze=False, sharey=True)
    style = {"AE": ("tab:gray", "-"), "AAE-rec": ("tab:blue", ":"),
             "AAE-lik": ("tab:cyan", ":"), "AAE": ("tab:blue", "-"), "ITSR": ("tab:red", "-")}
    for ax, (_, (anom, test)) in zip(axes.flat, panels.iterrows()):
        sub = summary[(summary["anomaly"] == anom) & (summary["test"] == test)]
        al = sorted(sub["alpha"].unique())
        for det, (c, ls) in style.items():
            d = sub[sub["detector"] == det].set_index("alpha").reindex(al)
            ax.errorbar(range(len(al)), d["bacc"], d["bacc_std"].fillna(0), color=c, ls=ls,
                        marker="o", ms=4, capsize=2, label=det)
        ax.set_xticks(range(len(al)), [f"{a:.1%}" for a in al])
        ax.set_xlabel("contamination rate alpha")
        ax.set_title(f"{normal_name} vs {anom}: {test}", fontsize=9)
        ax.axhline(0.5, color="k", lw=0.6, ls=":", label="chance")
    axes.flat[0].set_ylabel("balanced accuracy")
    axes.flat[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def latent_figure(det: dict, cs: ContaminatedSet, y_test, normal: int, anomaly: int,
                  class_names, alpha: float):
    """2 x 2 panels: AAE and ITSR (columns), training codes and observed test codes (rows), on
    the prior's density with the T_prior circle; ITSR's rejected (w = 0) and pushed-away
    (w < 0) training samples are marked."""
    import matplotlib.pyplot as plt

    te_idx, te_is_anom = test_split(y_test, normal, [anomaly])
    w_final = det["itsr"]["itsr"].weights
    fig, axes = plt.subplots(2, 2, figsize=(10, 10))
    for col, m in enumerate(("aae", "itsr")):
        d = det[m]
        groups = {f"normal ({class_names[normal]})": (~cs.is_anomaly, {"c": "tab:blue", "alpha": 0.35}),
                  f"contaminant ({class_names[anomaly]})": (cs.is_anomaly, {"c": "tab:red"})}
        if m == "itsr":
            groups["rejected by ITSR (w=0)"] = (w_final == 0, {"facecolors": "none",
                                                               "edgecolors": "k", "s": 20,
                                                               "lw": 0.6})
            groups["pushed away (w<0)"] = (w_final < 0, {"c": "k", "marker": "x", "s": 20})
        latent_panel(axes[0, col], d["train"]["z"], groups, d["th"],
                     title=f"{m.upper()}: training codes (alpha = {alpha:.0%})")
        latent_panel(axes[1, col], d["test"]["z"][te_idx], {
            f"test {class_names[normal]}": (~te_is_anom, {"c": "tab:blue", "alpha": 0.3}),
            f"test {class_names[anomaly]}": (te_is_anom, {"c": "tab:red", "alpha": 0.3})},
            d["th"], title=f"{m.upper()}: observed test set")
    for ax in axes.flat:
        ax.set(xlabel="latent z1", ylabel="latent z2")
    fig.tight_layout()
    return fig


def error_histograms(res: ITSRResult, is_anomaly, t_rec: float, anomaly_name: str):
    """ITSR's training reconstruction errors at the end of pretraining and at the end, for the
    normals and the contaminants (density histograms), with T_rec on the second panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3), sharey=True)
    all_err = torch.cat([res.errors["pretrain"], res.errors["final"]])
    bins = np.linspace(0, float(np.percentile(all_err.numpy(), 99.5)), 40)
    for ax, phase, title in ((axes[0], "pretrain", "before refinement (end of pretraining)"),
                             (axes[1], "final", "after ITSR")):
        e = res.errors[phase]
        ax.hist(e[~is_anomaly].numpy(), bins, density=True, alpha=0.6, color="tab:blue",
                label=f"normals: mean {e[~is_anomaly].mean():.4f}")
        if is_anomaly.any():
            ax.hist(e[is_anomaly].numpy(), bins, density=True, alpha=0.6, color="tab:red",
                    label=f"{anomaly_name}s: mean {e[is_anomaly].mean():.4f}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training reconstruction error (mean squared, pixels in [0, 1])")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    axes[1].axvline(t_rec, color="k", ls="--", lw=1)
    axes[1].text(t_rec, axes[1].get_ylim()[1] * 0.9, " T_rec", fontsize=8)
    fig.tight_layout()
    return fig


def reading(summary, diag, anomalies, alphas, pull: str, nu: float, a2_holds: bool) -> str:
    """Markdown lines reading the run (seed means): the AAE's likelihood vs reconstruction
    AUROC per setting, why the combined rule fails on clean data when it does, and, per
    contaminated setting, what ITSR's refinement found and did to the errors."""
    val = summary_value
    lines = ["**Reading of this run** (seed means):", ""]
    for anom in anomalies:
        lines.append(f"* T-shirt vs {anom}, AAE AUROC likelihood / reconstruction: " + "; ".join(
            f"{val(summary, 'AAE-lik', anom, a):.2f} / {val(summary, 'AAE-rec', anom, a):.2f} "
            f"at alpha {a:.0%}" for a in alphas) + ".")
    clean_lik = [val(summary, "AAE-lik", a, 0.0) for a in anomalies if 0.0 in alphas]
    if clean_lik and max(clean_lik) < 0.6:
        lines.append("  On clean data the likelihood signal is no better than chance (AUROC "
                     f"{', '.join(f'{v:.2f}' for v in clean_lik)}): anomalies the encoder never "
                     "saw are mapped *into* the bulk of the normal codes, not into the prior's "
                     "tails, so the combined rule only adds false alarms (TNR "
                     f"{val(summary, 'AAE', pull, 0.0, 'tnr'):.2f} vs "
                     f"{val(summary, 'AAE-rec', pull, 0.0, 'tnr'):.2f} for reconstruction alone)"
                     + ("; this is why the combined rule does not beat the single signals here."
                        if not a2_holds else "."))
    dg = diag[diag["alpha"] > 0]
    for (c, a), g in dg.groupby(["contaminant", "alpha"]):
        lines.append(f"* ITSR, {c} at {a:.0%}: {g['n_candidates'].mean():.0f} of "
                     f"{g['n_train'].mean():.0f} training images rejected, of which "
                     f"{g['precision'].mean():.0%} are contaminants (base rate "
                     f"{g['base_rate'].mean():.0%}); {g['recall'].mean():.0%} of the "
                     f"{g['n_anomalies'].mean():.0f} contaminants were found; "
                     f"{g['negative_precision'].mean():.0%} of the {g['n_negative'].mean():.0f} "
                     "negatively weighted images are contaminants; contaminants' training error "
                     f"{(g['err_anomaly_final'] / g['err_anomaly_pretrain'] - 1).mean():+.0%}, "
                     f"normals' {(g['err_normal_final'] / g['err_normal_pretrain'] - 1).mean():+.0%}"
                     " from the end of pretraining to the end.")
    if len(dg) and dg["recall"].mean() < 0.5:
        lines.append(f"  The OC-SVM (nu = {nu}, a bound on the fraction it rejects per round) "
                     f"found {dg['recall'].mean():.0%} of the contaminants on average: a compact "
                     "cluster of contaminants is not an *outlier* of the code distribution"
                     + (", so the rejected images are mostly normals at its rim"
                        if dg["precision"].mean() < 0.5 else "")
                     + ", and the contaminants left in the training set keep being learned.")
    return "\n".join(lines)
