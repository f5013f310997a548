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
"""
from __future__ import annotations

import copy
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
                  gamma: float = 0.01, repeats: int = 10, lr: float = 0.01) -> dict:
    """Seconds per training step of plain ``method`` vs ``method`` + AWP on the batch (x, y).

    The two steps are timed alternately on a copy of ``model`` (the model is untouched), so a
    load that changes during the measurement affects both alike, and each is summarised by its
    fastest repeat (as ``timeit`` does: other jobs only ever add time).  Returns ``{"at_s",
    "awp_s", "overhead"}`` with ``overhead = awp_s / at_s - 1``.
    """
    import time

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
    at_s, awp_s = min(times[False]), min(times[True])
    return {"at_s": at_s, "awp_s": awp_s, "overhead": awp_s / at_s - 1}


# --------------------------------------------------------------------------- explorer
def landscape_explorer(models: dict, x, y, eps: float, colors: dict | None = None,
                       steps: int = 5, display: bool = True):
    """Sliders that redraw the 1-D weight-loss landscape of each model in ``models``
    ({name: model}) along a filter-normalised random direction (``direction_seed``), over
    alpha in [-alpha_max, alpha_max], on (x, y): the clean loss, or the robust loss with
    PGD-``steps`` re-crafted at every alpha when ``robust`` is ticked.

    Returns the ``ipywidgets.interactive`` object (``display=False`` only builds it)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    import numpy as np

    from ..core.weights import filter_normalized_direction, weight_loss_landscape

    def show(direction_seed=0, alpha_max=1.0, robust=False):
        alphas = np.linspace(-alpha_max, alpha_max, 9)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, model in models.items():
            d = filter_normalized_direction(
                model, generator=torch.Generator().manual_seed(direction_seed))
            c = weight_loss_landscape(model, x, y, d, alphas, eps if robust else 0.0, steps=steps)
            ax.plot(c["alpha"], c["loss"], marker="o", label=name,
                    color=(colors or {}).get(name))
        ax.set_xlabel("alpha (step along the direction, relative to each filter's norm)")
        ax.set_ylabel(f"robust loss (PGD-{steps})" if robust else "clean loss")
        ax.legend()
        plt.show()

    w = W.interactive(show, direction_seed=W.IntSlider(0, 0, 20),
                      alpha_max=W.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1),
                      robust=W.Checkbox(False))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w
