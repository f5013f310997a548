"""Stutz, Hein & Schiele, ICCV 2021: "Relating Adversarially Robust Generalization to Flat
Minima" (arXiv 2104.04448).

The paper measures how flat the *robust* loss ``RLoss(w) = mean_i max_{||x'-x_i||_inf <= eps}
CE(f_w(x'), y_i)`` is around a trained model's weights ``w``, with per-layer *relative* radii
(``||nu_l|| <= xi * ||w_l||`` for every non-normalisation tensor ``l``, biases included), so
that the measures are invariant to the rescalings a BatchNorm network does not see:

* average-case flatness ``E_nu[RLoss(w + nu)] - RLoss(w)``, ``nu_l`` uniform on the sphere of
  radius ``xi * ||w_l||``, the adversarial examples re-computed by PGD on each perturbed model;
* worst-case flatness ``max_{nu in B_xi(w)} RLoss(w + nu) - RLoss(w)``, ``(nu, x')`` found
  jointly: one weight perturbation shared by all examples, updated after every batch by a
  layer-wise normalised ascent step (``nu_l += lr * ||w_l|| * g_l / ||g_l||``, then projected on
  the ball), together with a signed-gradient step on the inputs; the best of ``restarts``.

Both subtract the reference ``RLoss(w)`` (PGD with restarts, at least as strong as the attack on
each perturbed model).  Everything runs in eval mode (BatchNorm statistics of the unperturbed
model, not re-estimated), through ``core.weights.functional_forward``: the model is never
modified.

Official code: davidstutz/robust-generalization-flatness (read at f88cdbfa; not vendored,
licence non-commercial).  Deviations: the reference keeps, per example, the restart with the
highest robust cross-entropy (official: the restart with the highest non-true-class
probability); the evaluation sets, restart counts, weight samples and joint iterations are
smaller (knobs); the models are small BatchNorm CNNs on Fashion-MNIST trained under the
recipe of the AWP notebook instead of ResNet-18 on CIFAR-10.

Shapes: images ``x`` [N, C, H, W] in [0, 1]; labels ``y`` int64 [N]; per-example losses [N].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from ..core import training, weights
from ..core.attacks import eval_mode
from ..core.progress import progress as progress_bar


# --------------------------------------------------------------------------- weights
def flat_layers(model) -> dict[str, torch.Tensor]:
    """The tensors the flatness measures perturb: every trainable tensor except normalisation
    layers' (conv and linear weights and biases), detached, by name."""
    return {k: p.detach() for k, p in weights.layer_tensors(model, "non_norm").items()}


def sphere_sample(base: dict, xi: float, generator: torch.Generator,
                  ref_norms: dict | None = None) -> dict[str, torch.Tensor]:
    """A random perturbation ``nu``, uniform on each layer's sphere of radius
    ``xi * ||w_l||`` (``ref_norms=None``: relative radii, the paper's) or ``xi * ref_norms[l]``
    (fixed, *absolute* radii that do not follow a rescaling of the weights)."""
    if ref_norms is None:
        return weights.relative_sphere_sample(base, xi, generator)
    out = {}
    for name, w in base.items():
        z = torch.randn(w.shape, generator=generator).to(w)
        out[name] = xi * ref_norms[name] * z / z.norm().clamp_min(1e-12)
    return out


# --------------------------------------------------------------------------- robust loss
def _uniform_norm_init(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """The official random start: a Gaussian direction rescaled to Linf norm ``u * eps``,
    ``u ~ U(0, 1)`` per example, clipped to the image box.  [N, C, H, W]."""
    d = torch.randn(x.shape, generator=generator).to(x)
    d = d / d.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    u = torch.rand(len(x), generator=generator).to(x).view(-1, 1, 1, 1)
    return (x + u * eps * d).clamp(0, 1) - x


def pgd_losses(f, x, y, eps: float, alpha: float, steps: int, restarts: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example robust cross-entropy and robust error of the callable ``f`` (logits).

    PGD-``steps`` (Linf, signed gradient, uniform-norm random start), the best iterate of each
    example kept (its highest cross-entropy) and the best of ``restarts``.  Returns
    ``(loss [N], wrong [N] bool)``; ``wrong``: some iterate of some restart is misclassified.
    """
    best = torch.full((len(x),), -math.inf, device=x.device)
    wrong = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = _uniform_norm_init(x, eps, generator)
        for t in range(steps + 1):
            delta.requires_grad_(t < steps)
            with torch.set_grad_enabled(t < steps):
                logits = f(x + delta)
                ce = F.cross_entropy(logits, y, reduction="none")
            best = torch.maximum(best, ce.detach())
            wrong |= logits.detach().argmax(1) != y
            if t == steps:
                break
            (g,) = torch.autograd.grad(ce.sum(), delta)
            with torch.no_grad():
                delta = (delta + alpha * g.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
    return best, wrong


def robust_losses(model, x, y, eps: float, params: dict | None = None, steps: int = 20,
                  restarts: int = 1, alpha: float | None = None, seed: int = 0,
                  batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``pgd_losses`` of ``model`` at the weights ``params`` (None: its own), in eval mode,
    batch by batch, with the random starts drawn from ``seed`` (common random numbers: the
    same seed gives every model the same starts).  Returns (loss [N], wrong [N]) on the CPU."""
    alpha = eps / 4 if alpha is None else alpha
    dev = next(model.parameters()).device
    f = weights.PerturbedModel(model, params or {})
    gen = torch.Generator().manual_seed(seed)
    losses, wrong = [], []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            lo, wr = pgd_losses(f, xb, yb, eps, alpha, steps, restarts, gen)
            losses.append(lo.cpu())
            wrong.append(wr.cpu())
    return torch.cat(losses), torch.cat(wrong)


# --------------------------------------------------------------------------- flatness
def average_case(model, x, y, eps: float, xi: float, n_samples: int, steps: int = 20,
                 alpha: float | None = None, seed: int = 0, ref_norms: dict | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Robust losses at ``n_samples`` random weight perturbations on the (relative) sphere of
    radius ``xi``: [S, N] per-example robust cross-entropies, PGD re-run on every perturbed
    model (1 restart, as the official code).  Average-case flatness is
    ``out.mean() - reference.mean()``.  Sample ``s`` draws its direction and its PGD starts
    from ``seed + s``, so two models (and a from-scratch version) see the same numbers.
    ``ref_norms``: absolute radii instead (see ``sphere_sample``)."""
    base = flat_layers(model)
    out = []
    for s in progress_bar(range(n_samples), desc=f"avg xi={xi:g}", disable=not progress,
                          leave=False):
        nu = sphere_sample(base, xi, torch.Generator().manual_seed(seed + s), ref_norms)
        params = weights.add_perturbation(base, nu)
        out.append(robust_losses(model, x, y, eps, params, steps, 1, alpha, seed + s)[0])
    return torch.stack(out)


def joint_attack(model, x, y, eps: float, xi: float, iters: int = 10, restarts: int = 1,
                 lr: float = 0.01, alpha: float | None = None, batch_size: int = 128,
                 seed: int = 0, progress: bool = False) -> dict:
    """Worst-case robust loss: weights and inputs attacked jointly (official
    ``joint_weight_input ... lwrl2normalized``).

    Per restart: ``nu_l`` starts at a random direction of norm ``U(0,1) * xi * ||w_l||``, each
    example's ``delta`` at a uniform-norm random start; ``iters`` passes over the examples in
    batches of ``batch_size``; after every batch ``nu_l += lr * ||w_l|| * g_l / ||g_l||`` and a
    projection on ``||nu_l|| <= xi ||w_l||``, ``delta += alpha * sign(grad)`` projected on the
    eps-ball and the image box.  The restart with the highest mean loss at its final
    ``(nu, delta)`` is kept.  Returns ``{"losses": [N], "nu": {name: tensor},
    "restart_losses": [R]}``.
    """
    alpha = eps / 4 if alpha is None else alpha
    dev = next(model.parameters()).device
    base = flat_layers(model)
    wn = {k: w.norm() for k, w in base.items()}
    gen = torch.Generator().manual_seed(seed)
    best = None
    restart_means = []
    with eval_mode(model):
        for _ in progress_bar(range(restarts), desc=f"worst xi={xi:g}", disable=not progress,
                              leave=False):
            nu = weights.relative_sphere_sample(base, xi, gen)
            nu = {k: v * torch.rand((), generator=gen).to(v) for k, v in nu.items()}
            delta = torch.cat([_uniform_norm_init(x[i:i + batch_size].to(dev), eps, gen)
                               for i in range(0, len(x), batch_size)])
            for _ in range(iters):
                for i in range(0, len(x), batch_size):
                    xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
                    nu = {k: v.detach().requires_grad_(True) for k, v in nu.items()}
                    db = delta[i:i + batch_size].clone().requires_grad_(True)
                    logits = weights.functional_forward(
                        model, {k: base[k] + nu[k] for k in base}, xb + db)
                    grads = torch.autograd.grad(F.cross_entropy(logits, yb),
                                                [*nu.values(), db])
                    with torch.no_grad():
                        step = {k: nu[k] + lr * wn[k] * g / g.norm().clamp_min(1e-12)
                                for k, g in zip(nu, grads[:-1])}
                        nu = weights.relative_ball_project(step, base, xi)
                        d = (db + alpha * grads[-1].sign()).clamp(-eps, eps)
                        delta[i:i + batch_size] = (xb + d).clamp(0, 1) - xb
            params = {k: base[k] + nu[k].detach() for k in base}
            with torch.no_grad():
                losses = torch.cat([F.cross_entropy(weights.functional_forward(
                    model, params, x[i:i + batch_size].to(dev) + delta[i:i + batch_size]),
                    y[i:i + batch_size].to(dev), reduction="none").cpu()
                    for i in range(0, len(x), batch_size)])
            restart_means.append(losses.mean().item())
            if best is None or restart_means[-1] > best[0].mean().item():
                best = (losses, {k: v.detach() for k, v in nu.items()})
    return {"losses": best[0], "nu": best[1], "restart_losses": restart_means}


# --------------------------------------------------------------------------- training
@dataclass
class LabelNoiseAT(training.Method):
    """PGD-AT with *dynamic* label noise (official ``noisy_classification_loss``): in every
    batch each training label is replaced, with probability ``tau``, by a uniformly random
    class (which may equal the true one).  The attack uses the true labels."""

    tau: float = 0.3
    num_classes: int = 10

    def loss(self, model, x, x_adv, y):
        flip = torch.rand(len(y)) < self.tau
        noisy = torch.where(flip, torch.randint(0, self.num_classes, y.shape), y.cpu())
        return super().loss(model, x, x_adv, noisy.to(y.device))


class Snapshots:
    """``fit``'s epoch callback that writes the model's weights every ``every`` epochs to
    ``<stem>-e<epoch>.pt`` next to the work checkpoint (so an interrupted run keeps them)."""

    def __init__(self, ckpt, every: int):
        self.ckpt, self.every = ckpt, every

    def path(self, epoch: int):
        return self.ckpt.with_name(f"{self.ckpt.stem}-e{epoch}.pt")

    def __call__(self, model, epoch):
        if self.every and epoch % self.every == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                       self.path(epoch))
        return {}

    def load(self, epochs: int) -> dict[int, dict]:
        """``{epoch: state_dict}`` of every snapshot written."""
        return {e: torch.load(self.path(e), weights_only=True) for e in range(1, epochs + 1)
                if self.every and e % self.every == 0 and self.path(e).exists()}


# --------------------------------------------------------------------------- statistics
def spearman(a, b) -> float:
    """Spearman rank correlation of two sequences (NaN if either is constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b)[0])


def rank_correlation_uncertainty(a, b, n_boot: int = 2000, n_perm: int = 5000,
                                 seed: int = 0) -> dict:
    """Spearman rho of (a, b) over models, a 95% percentile bootstrap interval (models
    resampled with replacement; resamples with a constant column are dropped) and a one-sided
    permutation p-value (how often shuffled pairings give a rho at least as large)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rho = spearman(a, b)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        r = spearman(a[i], b[i])
        if not math.isnan(r):
            boots.append(r)
    perm = [spearman(a, rng.permutation(b)) for _ in range(n_perm)]
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"),) * 2
    return {"rho": rho, "interval": (min(float(lo), rho), max(float(hi), rho)),
            "p_perm": float(np.mean([p >= rho - 1e-12 for p in perm])), "n": len(a)}


def paired_difference_interval(a, b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of ``mean(a) - mean(b)`` for per-example values of two
    quantities on the same examples (the examples resampled jointly)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    d = a[idx].mean(1) - b[idx].mean(1)
    m = a.mean() - b.mean()
    lo, hi = np.percentile(d, [2.5, 97.5])
    return min(float(lo), m), max(float(hi), m)


def flatness_interval(perturbed, reference, other=None, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """95% two-way bootstrap interval of average-case flatness ``perturbed.mean() -
    reference.mean()`` (``perturbed`` [S, N], ``reference`` [N]), resampling the examples and
    the weight samples.  With ``other = (perturbed_b, reference_b)`` of a second model on the
    same examples and weight-sample seeds, the interval of the difference (this minus other),
    both resampled jointly (paired)."""
    p, r = np.asarray(perturbed, float), np.asarray(reference, float)
    S, N = p.shape
    if other is not None:
        p2, r2 = np.asarray(other[0], float), np.asarray(other[1], float)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        s, i = rng.integers(0, S, S), rng.integers(0, N, N)
        v = p[np.ix_(s, i)].mean() - r[i].mean()
        if other is not None:
            v -= p2[np.ix_(s, i)].mean() - r2[i].mean()
        vals.append(v)
    m = p.mean() - r.mean() - (0.0 if other is None else p2.mean() - r2.mean())
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return min(float(lo), m), max(float(hi), m)


# --------------------------------------------------------------------------- the family
def recipe_of(meta: dict) -> dict:
    """02_awp's training recipe, read from the metadata of one of its checkpoints: the data
    split, the architecture and every optimisation and attack setting, so a model trained here
    is comparable with the ones loaded from there."""
    p = meta["params"]
    return {"arch": meta["arch"], "model_kwargs": meta["model_kwargs"], "seed": p["seed"],
            "dataset": p["dataset"], "n_train_per_class": p["n_train_per_class"],
            "n_val_per_class": p["n_val_per_class"], "n_eval_per_class": p["n_eval_per_class"],
            "eps": p["eps"], "alpha": p["alpha_ratio"] * p["eps"], "steps": p["train_steps"],
            "attack_bn_mode": p["attack_bn_mode"], "epochs": p["epochs"],
            "batch_size": p["batch_size"], "lr": p["lr"], "momentum": p["momentum"],
            "weight_decay": p["weight_decay"], "milestones": tuple(p["milestones"])}


def subset_sizes(recipe: dict, dataset: str, n_test_per_class: int,
                 n_train_per_class: int) -> dict:
    """The fixed subsets' sizes against 02_awp's subsets they are drawn from, as
    ``{knob: (value, available per class)}`` (for ``notebook.check_fits``).  Raises
    ``ValueError`` when 02_awp's checkpoints were trained on another dataset."""
    if recipe["dataset"] != dataset:
        raise ValueError(f"dataset: 02_awp's checkpoints were trained on {recipe['dataset']!r}, "
                         f"not {dataset!r}; run 02_awp with the same dataset first")
    return {"n_test_per_class": (n_test_per_class, recipe["n_eval_per_class"]),
            "n_train_per_class": (n_train_per_class, recipe["n_train_per_class"])}


def make_method(recipe: dict, kind: str, beta: float = 6.0, tau: float = 0.3):
    """The training method of a family member: ``at`` (PGD-AT), ``trades`` (beta) or
    ``label_noise`` (AT with dynamic label noise tau), all with the recipe's attack."""
    args = (recipe["eps"], recipe["alpha"], recipe["steps"])
    if kind == "trades":
        return training.Method("trades", *args, beta, recipe["attack_bn_mode"])
    if kind == "label_noise":
        return LabelNoiseAT("pgd_at", *args, attack_bn_mode=recipe["attack_bn_mode"], tau=tau)
    return training.Method("pgd_at", *args, attack_bn_mode=recipe["attack_bn_mode"])


def train_member(run, name: str, recipe: dict, train: tuple, method, epochs: int,
                 weight_decay: float, snapshot_every: int = 0, code=()):
    """Train one model with the recipe (its seed, schedule and batch size; ``epochs`` and
    ``weight_decay`` as given), resumable.  Returns (model in eval mode, {epoch: state_dict}
    of the snapshots, seconds)."""
    cfg = training.TrainConfig(epochs, recipe["batch_size"], recipe["lr"], recipe["momentum"],
                               weight_decay, "piecewise", recipe["milestones"],
                               seed=recipe["seed"])
    model = run.make_model(recipe["arch"], recipe["seed"], **recipe["model_kwargs"])
    ckpt = run.work_checkpoint(name, {"recipe": recipe, "method": repr(method),
                                      "cfg": vars(cfg), "snapshots": snapshot_every}, code)
    snaps = Snapshots(ckpt, snapshot_every)
    res = training.fit(model, train, method, cfg, epoch_callback=snaps, checkpoint=ckpt,
                       meta={"arch": recipe["arch"]}, desc=name)
    return res.model.eval(), snaps.load(epochs), res.seconds


def measure(model, test: tuple, train: tuple, eps: float, k: dict, seed: int = 0,
            avg_samples: int | None = None, worst: bool = True) -> dict:
    """Every per-example number of one model, with common random numbers (the same ``seed``
    for every model): reference robust loss / error on the test and train subsets (PGD-
    ``ref_steps`` x ``ref_restarts``), average-case robust losses [S, N] at ``avg_xi`` and,
    if ``worst``, the joint attack's per-example losses at ``worst_xi``.  ``k``: the knobs."""
    out = {}
    for part, (x, y) in (("test", test), ("train", train)):
        out[f"{part}_loss"], out[f"{part}_wrong"] = robust_losses(
            model, x, y, eps, None, k["ref_steps"], k["ref_restarts"], seed=seed)
    out["avg"] = average_case(model, *test, eps, k["avg_xi"], avg_samples or k["avg_samples"],
                              k["flat_steps"], seed=seed + 1000)
    if worst:
        out["worst"] = joint_attack(model, *test, eps, k["worst_xi"], k["worst_iters"],
                                    k["worst_restarts"], k["worst_lr"], seed=seed + 2000)["losses"]
    return out


def summarise(m: dict) -> dict:
    """The table's numbers of one model from ``measure``'s per-example values."""
    row = {"test_rloss": m["test_loss"].mean().item(), "train_rloss": m["train_loss"].mean().item(),
           "test_rerr": m["test_wrong"].float().mean().item(),
           "train_rerr": m["train_wrong"].float().mean().item()}
    row["gap"] = row["test_rloss"] - row["train_rloss"]
    row["avg_flatness"] = m["avg"].mean().item() - row["test_rloss"]
    if "worst" in m:
        row["worst_flatness"] = m["worst"].mean().item() - row["test_rloss"]
    return row


# --------------------------------------------------------------------------- figures
FAMILY_COLORS = {"AT": "tab:red", "AT-AWP": "tab:blue", "TRADES": "tab:green",
                 "label noise": "tab:purple", "weight decay": "tab:orange"}


def scatter_panel(ax, table, x: str, y: str, xlabel: str, ylabel: str, rho: dict | None = None):
    """One point per model (``table``: DataFrame indexed by model with a ``family`` column),
    coloured by family, with the least-squares line over all models."""
    for name, r in table.iterrows():
        ax.scatter(r[x], r[y], color=FAMILY_COLORS.get(r["family"], "gray"), s=45,
                   label=r["family"], zorder=3)
        ax.annotate(name, (r[x], r[y]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if len(table) >= 2 and np.ptp(table[x]) > 0:
        fit = stats.linregress(table[x], table[y])
        xs = np.linspace(table[x].min(), table[x].max(), 10)
        ax.plot(xs, fit.intercept + fit.slope * xs, color="gray", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if rho is not None:
        lo, hi = rho["interval"]
        ax.set_title(f"Spearman rho = {rho['rho']:.2f} [{lo:.2f}, {hi:.2f}], n = {rho['n']}",
                     fontsize=9)


def family_legend(fig, axes):
    """One legend per family, outside the data (below the panels)."""
    handles = {}
    for ax in np.atleast_1d(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               fontsize=8, bbox_to_anchor=(0.5, -0.06))


# --------------------------------------------------------------------------- landscapes
def landscape(model, x, y, eps: float, direction: dict, alphas, steps: int,
              seed: int = 0) -> list[float]:
    """Robust loss at ``w + alpha * direction`` for each alpha (PGD re-run at every point, the
    same starts at every point), on the flatness tensors.  [len(alphas)] floats."""
    base = flat_layers(model)
    return [robust_losses(model, x, y, eps, weights.add_perturbation(base, direction, float(a)),
                          steps, 1, seed=seed)[0].mean().item() for a in alphas]


def landscape_explorer(models: dict, x, y, eps: float, steps: int = 5, seed: int = 0):
    """An ipywidgets view: pick a model and a relative radius xi, press the button, and see
    the robust loss along one random direction of that radius (PGD re-run at every point)
    and its mean rise at the ends.  ``models``: {name: model}; (x, y): a small test subset.
    Returns the widget (``.children``: controls, button, text line, plot output)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    pick = W.Dropdown(options=list(models), description="model")
    xi = W.FloatSlider(value=0.5, min=0.1, max=1.5, step=0.1, description="xi",
                       continuous_update=False)
    go = W.Button(description="measure")
    info = W.HTML("press <i>measure</i>")
    out = W.Output()
    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]

    def update(_=None):
        model = models[pick.value]
        direction = weights.relative_sphere_sample(
            flat_layers(model), xi.value, torch.Generator().manual_seed(seed))
        curve = landscape(model, x, y, eps, direction, alphas, steps, seed)
        rise = 0.5 * (curve[0] + curve[-1]) - curve[2]
        info.value = (f"{pick.value}, xi = {xi.value:g}: robust loss {curve[2]:.3f} at w, "
                      f"mean rise {rise:.3f} at |alpha| = 1")
        out.clear_output(wait=True)
        with out:
            fig, ax = plt.subplots(figsize=(4.5, 3))
            ax.plot(alphas, curve, marker="o", color="tab:red")
            ax.set_xlabel(f"alpha (weights w + alpha * nu, ||nu_l|| = {xi.value:g} ||w_l||)")
            ax.set_ylabel("robust loss (PGD cross-entropy)")
            plt.show()
            plt.close(fig)
        return curve

    go.on_click(update)
    xi.observe(update, names="value")
    box = W.VBox([W.HBox([pick, xi]), go, info, out])
    display(box)
    return box


def xi_sweep(model, x, y, eps: float, xis, steps: int, seed: int = 0) -> list[dict]:
    """For each relative radius: the robust loss and error of one random perturbation (PGD
    re-run) and its clean error, to choose a radius that raises the robust loss clearly while
    the perturbed model stays far better than chance."""
    base = flat_layers(model)
    rows = []
    for xi in xis:
        nu = sphere_sample(base, xi, torch.Generator().manual_seed(seed))
        params = weights.add_perturbation(base, nu)
        loss, wrong = robust_losses(model, x, y, eps, params, steps, 1, seed=seed)
        with torch.no_grad(), eval_mode(model):
            clean = weights.functional_forward(model, params, x).argmax(1) != y
        rows.append({"xi": xi, "rloss": loss.mean().item(), "rerr": wrong.float().mean().item(),
                     "clean_err": clean.float().mean().item()})
    return rows


def rescaled_copy(model, conv: str, bn: str, c: float):
    """A copy of ``model`` computing the same function in eval mode with the kernel of the
    conv layer ``conv`` (which feeds the BatchNorm ``bn``) multiplied by ``c``: BN's running
    mean scales by ``c``, its running variance and its epsilon by ``c**2``, so
    ``(c z - c m) / sqrt(c^2 v + c^2 eps)`` is the original normalised value."""
    import copy

    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    with torch.no_grad():
        mods[conv].weight.mul_(c)
        if mods[conv].bias is not None:
            mods[conv].bias.mul_(c)
        mods[bn].running_mean.mul_(c)
        mods[bn].running_var.mul_(c * c)
    mods[bn].eps *= c * c
    return out
