"""One training loop for standard, PGD-AT, TRADES and MART training, extended through hooks.

The loop, per mini-batch::

    x_adv = method.adversarial(model, x, y)          # attack (BN mode: ``attack_bn_mode``)
    for h in hooks: h.before_update(model, x, x_adv, y, method.loss)   # e.g. AWP perturbs W
    loss = method.loss(model, x, x_adv, y); loss.backward(); optimizer.step()
    for h in hooks: h.after_update(model)                              # e.g. AWP restores W

Checkpoints (``checkpoint.pt``) carry the metadata (arch, dataset, config, epoch, history) and
are saved after every epoch, so ``fit`` resumes an interrupted run where it stopped.  They load
with ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import attacks
from .data import batches
from .progress import progress as progress_bar


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; also pin torch to 2 threads on a 2-core CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))


# --------------------------------------------------------------------------- methods
@dataclass
class Method:
    """How a batch is attacked and which loss is minimised.

    ``name``: 'standard' | 'pgd_at' | 'trades' | 'mart';  ``eps``, ``alpha``, ``steps``: the
    training attack (Linf);  ``beta``: TRADES / MART regulariser weight;  ``attack_bn_mode``:
    'eval' (BatchNorm in inference mode while crafting, like torchattacks and the official
    repos) or 'train'.
    """

    name: str = "pgd_at"
    eps: float = 0.1
    alpha: float | None = None
    steps: int = 5
    beta: float = 6.0
    attack_bn_mode: str = "eval"

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown training method {self.name!r}; allowed: {sorted(METHODS)}")
        if self.attack_bn_mode not in ("eval", "train"):
            raise ValueError("attack_bn_mode must be 'eval' or 'train'")
        attacks._check_eps(self.eps, "linf")

    def _mode(self, model):
        return attacks.eval_mode(model) if self.attack_bn_mode == "eval" else contextlib.nullcontext()

    def adversarial(self, model, x, y):
        """The training-time adversarial batch (``x`` itself for standard training)."""
        if self.name == "standard":
            return x
        alpha = self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps
        with self._mode(model):
            if self.name == "trades":
                return _trades_attack(model, x, self.eps, alpha, self.steps)
            return attacks.pgd(model, x, y, self.eps, alpha, self.steps)

    def loss(self, model, x, x_adv, y):
        """Scalar training loss of ``model`` on the batch (uses the model's current mode)."""
        return METHODS[self.name](model, x, x_adv, y, self.beta)


def _trades_attack(model, x, eps, alpha, steps):
    """TRADES' inner maximisation: start at x + 0.001 N(0, 1), ascend KL(p(x) || p(x'))."""
    with torch.no_grad():
        p_nat = F.softmax(model(x), 1)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), p_nat, reduction="sum")
        (g,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def _standard_loss(model, x, x_adv, y, beta):
    return F.cross_entropy(model(x), y)


def _pgd_at_loss(model, x, x_adv, y, beta):
    return F.cross_entropy(model(x_adv), y)


def _trades_loss(model, x, x_adv, y, beta):
    logits_nat, logits_adv = model(x), model(x_adv)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_nat, 1), reduction="batchmean")
    return F.cross_entropy(logits_nat, y) + beta * kl


def _mart_loss(model, x, x_adv, y, beta):
    """MART (Wang et al. 2020): boosted CE on x_adv + beta * KL weighted by (1 - p_y(x))."""
    logits_adv, logits_nat = model(x_adv), model(x)
    p_adv, p_nat = F.softmax(logits_adv, 1), F.softmax(logits_nat, 1)
    top2 = torch.argsort(p_adv, 1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - p_adv + 1e-12), other)
    true_nat = p_nat.gather(1, y[:, None]).squeeze(1)
    kl = (F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(1)
          * (1.0000001 - true_nat)).mean()
    return bce + beta * kl


METHODS: dict[str, Callable] = {"standard": _standard_loss, "pgd_at": _pgd_at_loss,
                                "trades": _trades_loss, "mart": _mart_loss}


# --------------------------------------------------------------------------- hooks
class TrainingHook:
    """Extension points of the loop; all no-ops here.  Subclass and override what you need."""

    def before_update(self, model, x, x_adv, y, loss_fn) -> None:
        """After the adversarial batch is made, before the training loss is computed."""

    def after_update(self, model) -> None:
        """Right after ``optimizer.step()``."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Optimisation settings.  ``schedule``: 'piecewise' (x0.1 at each fraction in
    ``milestones`` of the epochs), 'cosine' or 'constant'.  ``warmup_epochs`` of FGSM-RS
    before PGD-AT (0 = none).  ``amp`` and ``channels_last`` act on CUDA only (ignored on
    CPU, where they do not help)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "piecewise"
    milestones: tuple = (0.5, 0.75)
    seed: int = 0
    warmup_epochs: int = 0
    amp: bool = False            # CUDA only: bfloat16 autocast for the attack and the loss
    channels_last: bool = False  # CUDA only: NHWC memory layout (faster convolutions)

    def lr_at(self, epoch: int) -> float:
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "piecewise":
            return self.lr * 0.1 ** sum(epoch >= m * self.epochs for m in self.milestones)
        raise ValueError(f"unknown schedule {self.schedule!r}; allowed: "
                         "['piecewise', 'cosine', 'constant']")


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0


def _rng_state():
    return {"torch": torch.get_rng_state(),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}


def save_checkpoint(path, model, meta: dict, optimizer=None, extra: dict | None = None) -> None:
    """Write model weights + metadata (+ optimizer/extra state) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": model.state_dict(), "meta": meta}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if extra:
        blob.update(extra)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model=None, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; fill ``model`` if given.  Returns the blob."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; run the stage that trains it "
                                "(`dvc repro 00_baselines` for the shared baselines)")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        model.load_state_dict(blob["model"])
    return blob


def fit(model, train: tuple, method: Method, config: TrainConfig, *,
        hooks: list[TrainingHook] = (), epoch_callback: Callable | None = None,
        checkpoint: str | os.PathLike | None = None, meta: dict | None = None,
        progress: bool = True, desc: str = "train") -> TrainResult:
    """Train ``model`` on ``train = (x, y)`` (in-memory tensors) and return a ``TrainResult``.

    ``epoch_callback(model, epoch) -> dict`` runs after each epoch (in whatever mode it sets)
    and its numbers go into the history row.  If ``checkpoint`` exists and its config matches,
    training resumes after the last completed epoch (weights, optimizer, hooks, RNG, history).
    """
    from . import distributed

    x, y = train
    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    layout = torch.channels_last if (config.channels_last and cuda) else torch.contiguous_format
    if layout is torch.channels_last:
        model.to(memory_format=layout)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (config.amp and cuda) \
        else contextlib.nullcontext
    ddp = distributed.active()
    net = distributed.wrap(model) if ddp else model   # the loss goes through DDP
    lead = distributed.rank() == 0                    # progress and checkpoints: rank 0 only
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    cfg_meta = {"method": asdict(method), "train": asdict(config)}
    meta = {**(meta or {}), **cfg_meta}
    start, history = 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        blob = load_checkpoint(checkpoint, map_location=dev)
        if _same_config(blob["meta"], cfg_meta):
            model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optimizer"])
            for h, s in zip(hooks, blob.get("hooks", [])):
                h.load_state_dict(s)
            start, history = blob["meta"]["epoch"], list(blob["meta"]["history"])
            torch.set_rng_state(blob["rng"]["torch"])
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(start):  # keep the shuffling stream identical to an uninterrupted run
        torch.randperm(len(x), generator=gen)
    t_total = time.perf_counter()
    for epoch in range(start, config.epochs):
        lr = config.lr_at(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        ep_method = method
        if method.name == "pgd_at" and epoch < config.warmup_epochs:
            ep_method = Method("pgd_at", method.eps, 1.25 * method.eps, 1, method.beta,
                               method.attack_bn_mode)
        model.train()
        t0 = time.perf_counter()
        tot_loss, n = 0.0, 0
        nb = math.ceil(len(x) / config.batch_size)
        bar = progress_bar(batches(x, y, config.batch_size, shuffle=True, generator=gen),
                           total=nb, desc=f"{desc} {epoch + 1}/{config.epochs}",
                           disable=not (progress and lead), leave=False)
        for xb, yb in bar:
            n_global = len(yb)
            if ddp:
                xb, yb = distributed.shard(xb, yb)
            xb = xb.to(dev).contiguous(memory_format=layout)
            yb = yb.to(dev)
            with amp():
                x_adv = ep_method.adversarial(model, xb, yb)  # plain model: no gradient sync
            for h in hooks:
                h.before_update(model, xb, x_adv, yb, ep_method.loss)
            with amp():
                loss = ep_method.loss(net, xb, x_adv, yb)
            # DDP averages gradients over processes: weight each share by its size so the
            # update is the global batch's mean-loss gradient, as in one process
            scale = len(yb) * distributed.world_size() / n_global if ddp else 1.0
            opt.zero_grad(set_to_none=True)
            (loss * scale).backward()
            opt.step()
            for h in hooks:
                h.after_update(model)
            tot_loss += loss.item() * len(yb)
            n += len(yb)
        tot_loss, n = distributed.all_sum(tot_loss), distributed.all_sum(n)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": tot_loss / n,
               "epoch_seconds": time.perf_counter() - t0}
        if epoch_callback is not None:
            row.update(epoch_callback(model, epoch + 1) or {})
        history.append(row)
        if checkpoint is not None and lead:
            save_checkpoint(checkpoint, model, {**meta, "epoch": epoch + 1, "history": history},
                            opt, {"hooks": [h.state_dict() for h in hooks], "rng": _rng_state()})
    model.eval()
    return TrainResult(model, history, start, time.perf_counter() - t_total)


def _same_config(saved: dict, current: dict) -> bool:
    """Resume only into an identical method + optimisation config (tuples vs lists aside)."""
    import json

    def norm(d):
        return json.loads(json.dumps(d))

    return all(norm(saved.get(k)) == norm(v) for k, v in current.items())
