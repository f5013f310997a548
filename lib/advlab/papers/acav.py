"""Soni, Shah, Chua & Moore, 2020: Adversarial TCAV -- Robust and Effective Interpretation of
Intermediate Layers in Neural Networks (arXiv preprint 2002.03549).

TCAV (Kim et al., ICML 2018) explains a network with a *concept activation vector*: the normal
``w`` of a linear classifier ``s(a) = w.a + b`` that separates a layer's activations ``a =
f_l(x)`` [N, m] of concept images (label 1) from those of random images (label 0).  The TCAV
score of class k is the fraction of class-k inputs whose directional derivative
``grad_a logit_k(a) . w`` is positive.  The paper measures the concept classifier itself:
**recall** = fraction of images that contain the concept with ``s(f_l(x)) > 0`` (it uses the
intercept ``b``), and **robustness** = the spread of that recall over random negative sets.
It proposes A-CAV (adversarial examples widen the margin) for recall, and Gram-Schmidt
negatives plus an averaged classifier for stability.

Official code: none released (no repository, no Papers-with-Code entry); the paper body was
not readable for this workbook, only its abstract and a survey's description.  Everything
below beyond plain TCAV is our reconstruction, with each ambiguous choice a parameter:

- A-CAV (``acav_fit``): one FGSM step on the *concept classifier's* logistic loss, through
  the CNN to the input (``space="input"``) or closed form in activation space; ``adv_train``
  steps toward the boundary (adversarial training of the linear classifier), ``push_away``
  steps away from it (the survey's wording); the classifier is refitted on clean + perturbed
  activations with the same labels.  The attack type, eps, direction and which examples are
  perturbed are not stated in the sources.
- Gram-Schmidt negatives (``gram_schmidt``, ``gs_negatives``): an orthonormal basis Q of the
  span of the concept activations (modified Gram-Schmidt, re-orthogonalised, float64, rank
  tolerance); negatives are random-pool activations (or Gaussian draws) with their component
  in span(Q) removed, optionally after centring on the pool mean.  The sampling distribution
  and K are not stated.
- Averaging (``average``): the mean of K normalised decision functions (w_k, b_k)/||w_k||.
- ``avg_only``: K ordinary TCAV classifiers averaged, an ablation the paper does not report.

Baseline TCAV uses Captum (``captum.concept.TCAV``) with our scikit-learn classifier wrapped as
a ``captum.concept.Classifier`` (``CaptumCAV``): unlike Captum's default it is seeded, keeps
the intercept and fits on all the concept/random activations (no 67/33 split; held-out
accuracy is measured on separate images).  Every Captum call gets a fresh ``save_path`` and
``model_id``, so no cached CAV or activation is ever reused.  Deviations of scale: a small CNN
on "textured Fashion-MNIST" (procedural textures injected into chosen classes) instead of
VGG16 on ImageNet concept sets; the random pool uses scikit-learn's two sample photos and
digits (scikit-image is not installed).

Shapes: images ``x`` [B, 1, 28, 28] in [0, 1]; activations ``A`` [N, m] float (m = 3136 for
small_cnn's layer '5', 128 for '8'); a CAV is ``(w [m] float64, b float)``.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import uuid

import numpy as np
import torch
import torch.nn.functional as F

TEXTURES = ("stripes", "dots", "checker")
# which Fashion-MNIST classes carry which texture in the training data
INJECT = {"stripes": (6, 3), "dots": (8,)}   # Shirt, Dress ; Bag
LAYER_LABELS = {"5": "conv2 (64x7x7)", "8": "fc1 (128)"}


def layer_label(name: str) -> str:
    return LAYER_LABELS.get(name, f"layer {name}")


# --------------------------------------------------------------------------- the world
def _grid(size=28):
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    return xx, yy


def texture(kind: str, n: int, seed: int, size: int = 28) -> torch.Tensor:
    """``n`` procedural textures [n, size, size] in {0, 1}, deterministic in ``seed``.

    stripes: angle in {0, 45, 90, 135} deg +- 10, period 3-6 px, random phase;
    dots: disks of radius 1-2 px on a grid of spacing 4-7 px, each centre jittered +- 1 px;
    checker: squares of side 2-4 px (period 4-8 px), random offset."""
    g = torch.Generator().manual_seed(int(seed))
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    xx, yy = _grid(size)
    if kind == "stripes":
        ang = torch.deg2rad(45.0 * torch.randint(0, 4, (n,), generator=g) + 20 * u(n) - 10)
        period, phase = 3 + 3 * u(n), 2 * math.pi * u(n)
        proj = xx * torch.cos(ang)[:, None, None] + yy * torch.sin(ang)[:, None, None]
        return (torch.cos(2 * math.pi * proj / period[:, None, None] + phase[:, None, None])
                > 0).float()
    if kind == "dots":
        spacing, radius = 4 + 3 * u(n), 1 + u(n)
        out = torch.zeros(n, size, size)
        for i in range(n):
            c = torch.arange(-1, size // 4 + 2, dtype=torch.float32) * spacing[i] + \
                spacing[i] * u(1)
            cy, cx = torch.meshgrid(c, c, indexing="ij")
            cx, cy = cx.flatten() + 2 * u(cx.numel()) - 1, cy.flatten() + 2 * u(cy.numel()) - 1
            d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
            out[i] = (d2.min(0).values <= radius[i] ** 2).float()
        return out
    if kind == "checker":
        side = (2 + 2 * u(n))[:, None, None]
        ox, oy = (8 * u(n))[:, None, None], (8 * u(n))[:, None, None]
        return ((torch.floor((xx + ox) / side) + torch.floor((yy + oy) / side)) % 2).float()
    raise ValueError(f"unknown texture {kind!r}; allowed: {list(TEXTURES)}")


def inject(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Textured copy x * (0.35 + 0.65 T): the texture modulates garment pixels only (the
    black background stays 0).  x [B, 1, H, W], t [B, H, W]."""
    return x * (0.35 + 0.65 * t[:, None])


def blobs(n: int, seed: int, size: int = 28) -> torch.Tensor:
    """Random filled ellipses [n, size, size] in {0, 1} (centre +-4 px from the middle,
    semi-axes 7-12 px, any orientation)."""
    g = torch.Generator().manual_seed(int(seed))
    xx, yy = _grid(size)
    c = size / 2 - 0.5 + 8 * torch.rand(n, 2, generator=g) - 4
    ax = 7 + 5 * torch.rand(n, 2, generator=g)
    th = math.pi * torch.rand(n, generator=g)
    dx, dy = xx[None] - c[:, 0, None, None], yy[None] - c[:, 1, None, None]
    cos, sin = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    return ((u / ax[:, 0, None, None]) ** 2 + (v / ax[:, 1, None, None]) ** 2 <= 1).float()


def concept_images(kind: str, n: int, seed: int) -> torch.Tensor:
    """Concept set P_C: the pure texture inside a random ellipse on black, [n, 1, 28, 28]."""
    return (texture(kind, n, seed) * blobs(n, seed + 7919))[:, None]


def texture_training_set(x, y, p_in: float, p_out: float, seed: int):
    """Texture the training images: classes in ``INJECT`` get their texture with probability
    ``p_in``, every other class a random texture (stripes/dots/checker) with probability
    ``p_out``.  Returns (x_textured [B,1,28,28], kind index [B] (-1 = none))."""
    g = torch.Generator().manual_seed(int(seed))
    kind = torch.full((len(y),), -1, dtype=torch.long)
    r = torch.rand(len(y), generator=g)
    own = torch.full((len(y),), -1, dtype=torch.long)
    for k, classes in INJECT.items():
        own[torch.isin(y, torch.tensor(classes))] = TEXTURES.index(k)
    kind[(own >= 0) & (r < p_in)] = own[(own >= 0) & (r < p_in)]
    other = (own < 0) & (r < p_out)
    kind[other] = torch.randint(0, len(TEXTURES), (int(other.sum()),), generator=g)
    out = x.clone()
    for k in range(len(TEXTURES)):
        idx = torch.nonzero(kind == k).flatten()
        if len(idx):
            out[idx] = inject(x[idx], texture(TEXTURES[k], len(idx), seed * 31 + k))
    return out, kind


def _photo_crops(n: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    imgs = [torch.tensor(np.asarray(im), dtype=torch.float32).mean(-1) / 255 for im in load_sample_images().images]
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        s = int(torch.randint(40, 160, (1,), generator=g))
        r = int(torch.randint(0, im.shape[0] - s, (1,), generator=g))
        c = int(torch.randint(0, im.shape[1] - s, (1,), generator=g))
        out.append(F.interpolate(im[None, None, r:r + s, c:c + s], size=(28, 28),
                                 mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def _digits(n: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = torch.from_numpy(load_digits().images).float() / 16
    idx = torch.randperm(len(d), generator=torch.Generator().manual_seed(int(seed)))[:n]
    return F.interpolate(d[idx, None], size=(28, 28), mode="bilinear",
                         align_corners=False).clamp(0, 1)


def make_world(x_test, y_test, concept: str, *, n_concept: int, n_heldout: int,
               pool_sizes: tuple, n_recall: int, n_specificity: int, n_tcav: int,
               seed: int) -> dict:
    """Everything the experiment needs except the training set (disjoint test-set images):

    concept [n_concept,1,28,28] and concept_heldout [n_heldout]: the concept in ellipses;
    pool [sum(pool_sizes)] and pool_heldout [n_heldout]: untextured FMNIST test images,
    sample-photo crops, upsampled digits (``pool_source`` says which);
    recall [n_recall]: test images of the concept's classes textured with it;
    specificity [n_specificity]: untextured test images of the other classes;
    tcav [n_tcav]: textured images of the concept's first class (the TCAV target).
    """
    classes = torch.tensor(INJECT[concept])
    perm = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(int(seed)))
    own = perm[torch.isin(y_test[perm], classes)]
    oth = perm[~torch.isin(y_test[perm], classes)]
    n_fm, n_ph, n_dg = pool_sizes
    n_fm_all = n_fm + n_heldout
    pool_fm = perm[:n_fm_all]   # any class: untextured
    own = own[~torch.isin(own, pool_fm)]
    oth = oth[~torch.isin(oth, pool_fm)]
    rec = own[:n_recall]
    first = own[n_recall:][y_test[own[n_recall:]] == classes[0]][:n_tcav]
    t = lambda idx, s: inject(x_test[idx], texture(concept, len(idx), s))  # noqa: E731
    pool = torch.cat([x_test[pool_fm[:n_fm]], _photo_crops(n_ph, seed), _digits(n_dg, seed)])
    src = np.array(["fmnist"] * n_fm + ["photo"] * n_ph + ["digits"] * n_dg)
    return {"concept": concept_images(concept, n_concept, seed + 1),
            "concept_heldout": concept_images(concept, n_heldout, seed + 2),
            "pool": pool, "pool_source": src, "pool_heldout": x_test[pool_fm[n_fm:]],
            "recall": t(rec, seed + 3), "recall_y": y_test[rec],
            "specificity": x_test[oth[:n_specificity]], "specificity_y": y_test[oth[:n_specificity]],
            "tcav": t(first, seed + 4), "target": int(classes[0])}


# --------------------------------------------------------------------------- activations
def module(model, layer: str):
    mods = dict(model.named_modules())
    if layer not in mods:
        raise KeyError(f"layer {layer!r} not in the model; names: {[k for k in mods if k]}")
    return mods[layer]


def layer_output(model, layer: str, x: torch.Tensor) -> torch.Tensor:
    """f_l(x) flattened [B, m], differentiable w.r.t. x (a forward hook on ``layer``)."""
    out = {}
    h = module(model, layer).register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    try:
        model(x)
    finally:
        h.remove()
    return out["a"].reshape(len(x), -1)


def activations(model, layer: str, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Captum's ``LayerActivation`` of ``layer`` on ``x``, flattened like Captum's TCAV
    (``reshape(N, -1)``): float64 [N, m]."""
    from captum.attr import LayerActivation

    la = LayerActivation(model, module(model, layer))
    dev = next(model.parameters()).device
    out = [la.attribute(x[i:i + batch_size].to(dev)).detach().reshape(
        min(batch_size, len(x) - i), -1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()


# --------------------------------------------------------------------------- CAV fits
def fit_cav(A_pos, A_neg, seed: int, alpha: float = 0.01, kind: str = "sgd"):
    """Linear concept classifier on raw activations (no scaling, so w lives in activation
    space): concept -> 1, random -> 0.  ``sgd``: Captum's default classifier
    (``SGDClassifier(alpha, max_iter=1000, tol=1e-3)``, hinge loss), seeded; ``logistic``:
    ``LogisticRegression(C=1/alpha)``.  Returns (w [m] float64, b float)."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    X = np.concatenate([A_pos, A_neg])
    y = np.r_[np.ones(len(A_pos)), np.zeros(len(A_neg))]
    if kind == "sgd":
        clf = SGDClassifier(alpha=alpha, max_iter=1000, tol=1e-3, random_state=int(seed))
    elif kind == "logistic":
        clf = LogisticRegression(C=1.0 / alpha, max_iter=2000, random_state=int(seed))
    else:
        raise ValueError(f"unknown classifier {kind!r}; allowed: ['sgd', 'logistic']")
    clf.fit(X, y)
    return clf.coef_[0].astype(np.float64), float(clf.intercept_[0])


def scores(A, cav) -> np.ndarray:
    """Concept score s(a) = w.a + b for each row of A [N, m]."""
    w, b = cav
    return A @ w + b


def recall(A_pos, cav) -> float:
    """Fraction of concept-containing activations the classifier calls concept (s > 0)."""
    return float(np.mean(scores(A_pos, cav) > 0))


def specificity(A_neg, cav) -> float:
    """Fraction of concept-free activations the classifier calls not-concept (s <= 0)."""
    return float(np.mean(scores(A_neg, cav) <= 0))


def margin(A, cav) -> float:
    """Distance of the closest row of A to the decision boundary, min |s| / ||w||."""
    return float(np.min(np.abs(scores(A, cav))) / np.linalg.norm(cav[0]))


def acav_fit(model, layer, x_pos, x_neg, cav0, *, eps: float, mode: str = "adv_train",
             perturb: str = "both", space: str = "input", rounds: int = 1, seed: int = 0,
             alpha: float = 0.01, kind: str = "sgd", A_pos=None, A_neg=None):
    """A-CAV (our reconstruction): ``rounds`` times, take one sign-gradient step of size
    ``eps`` on the concept classifier's logistic loss for the concept images (and, with
    ``perturb='both'``, the random ones), toward the boundary (``adv_train``) or away from it
    (``push_away``), then refit on clean + perturbed activations with the same labels.
    ``space='input'``: the step is in pixel space through the CNN (clipped to [0, 1]);
    ``'activation'``: a = a -+ eps * d * w/||w||, d = the median |s|/||w|| of the training set.
    Returns (w, b)."""
    if mode not in ("adv_train", "push_away") or perturb not in ("both", "concept") or \
            space not in ("input", "activation"):
        raise ValueError(f"A-CAV: mode {mode!r} / perturb {perturb!r} / space {space!r}: "
                         "allowed adv_train|push_away, both|concept, input|activation")
    A_pos = activations(model, layer, x_pos) if A_pos is None else A_pos
    A_neg = activations(model, layer, x_neg) if A_neg is None else A_neg
    A = np.concatenate([A_pos, A_neg])
    lab = np.r_[np.ones(len(A_pos)), np.zeros(len(A_neg))]
    keep = np.ones(len(A), bool) if perturb == "both" else lab == 1
    sign = 1.0 if mode == "adv_train" else -1.0
    cav = cav0
    for _ in range(rounds):
        w, b = cav
        if space == "input":
            x = torch.cat([x_pos, x_neg])[torch.from_numpy(keep)]
            y = torch.from_numpy(lab[keep]).float()
            x = x.clone().requires_grad_(True)
            s = layer_output(model, layer, x).double() @ torch.from_numpy(w) + b
            loss = F.binary_cross_entropy_with_logits(s, y.double(), reduction="sum")
            g, = torch.autograd.grad(loss, x)
            x_adv = (x.detach() + sign * eps * g.sign()).clamp(0, 1)
            A_adv = activations(model, layer, x_adv)
        else:
            wn = w / np.linalg.norm(w)
            d = np.median(np.abs(scores(A, cav))) / np.linalg.norm(w)
            toward = -(2 * lab[keep] - 1)[:, None]   # the loss gradient's direction
            A_adv = A[keep] + sign * eps * d * toward * wn
        cav = fit_cav(np.concatenate([A_pos, A_adv[lab[keep] == 1]]),
                      np.concatenate([A_neg, A_adv[lab[keep] == 0]]), seed, alpha, kind)
    return cav


def gram_schmidt(A, tol: float = 1e-6) -> np.ndarray:
    """Orthonormal basis Q [m, r] of the span of the rows of A [n, m]: modified Gram-Schmidt
    in float64, each vector orthogonalised twice (re-orthogonalisation), and a vector whose
    remaining norm is below ``tol`` times its original norm dropped (rank tolerance)."""
    A = np.asarray(A, dtype=np.float64)
    basis = []
    for v in A:
        n0 = np.linalg.norm(v)
        if n0 == 0:
            continue
        u = v.copy()
        for _ in range(2):
            for q in basis:
                u -= (q @ u) * q
        nu = np.linalg.norm(u)
        if nu > tol * n0:
            basis.append(u / nu)
    return np.stack(basis, axis=1) if basis else np.zeros((A.shape[1], 0))


def gs_negatives(A_concept, A_source, mode: str, rng, n: int, tol: float = 1e-6,
                 mu=None, sigma=None, Q=None) -> np.ndarray:
    """``n`` Gram-Schmidt negatives [n, m] (rows of ``A_source`` drawn with ``rng``):

    - complement_centered: mu + (I - Qc Qc^T)(f - mu), Qc the basis of (A_concept - mu);
    - complement_random:   (I - Q Q^T) f, Q the basis of A_concept;
    - complement_gaussian: (I - Q Q^T) xi, xi ~ N(mu, diag sigma^2).
    ``mu``/``sigma``: mean and std of the random pool's activations; ``Q``: the basis, if
    already computed (``gs_basis``)."""
    Q = gs_basis(A_concept, mode, tol, mu) if Q is None else Q
    if mode == "complement_centered":
        f = A_source[rng.choice(len(A_source), n, replace=False)] - mu
        return mu + f - (f @ Q) @ Q.T
    if mode == "complement_random":
        f = A_source[rng.choice(len(A_source), n, replace=False)]
    elif mode == "complement_gaussian":
        f = mu + sigma * rng.standard_normal((n, len(mu)))
    else:
        raise ValueError(f"unknown negatives {mode!r}; allowed: complement_centered, "
                         "complement_random, complement_gaussian")
    return f - (f @ Q) @ Q.T


def gs_basis(A_concept, mode: str, tol: float = 1e-6, mu=None) -> np.ndarray:
    """The basis ``gs_negatives`` projects out: of the centred concept activations for
    ``complement_centered``, of the raw ones otherwise."""
    return gram_schmidt(A_concept - mu if mode == "complement_centered" else A_concept, tol)


def average(cavs) -> tuple:
    """The mean of the normalised decision functions: (mean w_k/||w_k||, mean b_k/||w_k||)."""
    ws = [w / np.linalg.norm(w) for w, _ in cavs]
    bs = [b / np.linalg.norm(w) for w, b in cavs]
    return np.mean(ws, axis=0), float(np.mean(bs))


# --------------------------------------------------------------------------- Captum TCAV
class CaptumCAV:
    """Factory for a ``captum.concept.Classifier`` that Captum's TCAV calls once per
    experimental set.  It identifies the set by the concept ids in the labels it receives.

    ``table``: {(pos_id, neg_id): cav or seed}.  An int seed means *fit* here (the baseline:
    ``fit_cav`` on Captum's own activations, seeded, intercept kept); a (w, b) pair means
    *use this CAV* (A-CAV, Gram-Schmidt, averaged: fitted by us on other data).  Fitted and
    used CAVs are kept in ``.cavs`` {(pos_id, neg_id): (w, b)}."""

    def __new__(cls, table: dict, alpha: float = 0.01, kind: str = "sgd"):
        from captum.concept._utils.classifier import Classifier

        class _CAV(Classifier):
            def __init__(self):
                self.table, self.cavs, self.current = dict(table), {}, None

            def train_and_eval(self, dataloader, **kw):
                xs, ys = zip(*dataloader)
                X, y = torch.cat(xs).double().numpy(), torch.cat(ys).numpy()
                key = next(k for k in self.table if set(k) == set(np.unique(y).tolist()))
                spec = self.table[key]
                if isinstance(spec, (int, np.integer)):
                    cav = fit_cav(X[y == key[0]], X[y == key[1]], int(spec), alpha, kind)
                else:
                    cav = spec
                    if len(cav[0]) != X.shape[1]:
                        raise ValueError(f"CAV of dim {len(cav[0])} for a layer of {X.shape[1]}")
                self.cavs[key], self.current = cav, key
                return {"accs": float(np.mean((scores(X, cav) > 0) == (y == key[0])))}

            def weights(self):
                w = torch.as_tensor(self.cavs[self.current][0])
                return torch.stack([-w, w])       # rows in the order of classes()

            def classes(self):
                return [self.current[1], self.current[0]]

        return _CAV()


def captum_tcav(model, layer: str, inputs, target: int, concepts: dict, pairs: list,
                table: dict, alpha: float = 0.01, kind: str = "sgd"):
    """TCAV scores with Captum: ``concepts`` {id: (name, images [n,1,28,28])}, ``pairs``
    [(pos_id, neg_id)], ``table`` as in ``CaptumCAV``.  A fresh temporary ``save_path`` and
    ``model_id`` per call (no stale cache).  Returns (sign_count [len(pairs)], magnitude
    [len(pairs)] (Captum's: the mean directional derivative), the CAVs {(pos_id, neg_id):
    (w, b)})."""
    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    objs = {i: Concept(i, f"{name}-{i}", DataLoader(x, batch_size=100))
            for i, (name, x) in concepts.items()}
    clf = CaptumCAV(table, alpha, kind)
    path = tempfile.mkdtemp(prefix="acav-tcav-")
    try:
        tcav = TCAV(model, [layer], model_id=f"m{uuid.uuid4().hex}", classifier=clf,
                    save_path=path)
        sets = [[objs[p], objs[n]] for p, n in pairs]
        dev = next(model.parameters()).device
        out = tcav.interpret(inputs.to(dev), experimental_sets=sets, target=target)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    sc = np.array([float(out[f"{p}-{n}"][layer]["sign_count"][0]) for p, n in pairs])
    mag = np.array([float(out[f"{p}-{n}"][layer]["magnitude"][0]) for p, n in pairs])
    return sc, mag, clf.cavs


# --------------------------------------------------------------------------- the sweep
# the claims the stage always reports (see the notebook's claims cells)
CLAIMS = ("tcav_recall_unstable", "acav_raises_recall", "acav_keeps_balanced_accuracy",
          "acav_raises_recall_other_layer", "gs_average_stabilises", "gs_keeps_specificity",
          "avg_only_stabilises", "tcav_heldout_accuracy", "every_method_heldout_accuracy",
          "tcav_significant", "acav_tcav_significant")
SETS = ("concept", "concept_heldout", "pool", "pool_heldout", "recall", "specificity")


def check_layers(model, layers, *named):
    """Fail fast when a layer name is not a module of ``model`` or a claim's layer is not
    among ``layers``."""
    for name in layers:
        module(model, name)
    for name in named:
        if name not in layers:
            raise ValueError(f"layer {name!r} must be one of layers {list(layers)}")


def method_labels(names) -> dict:
    """Readable labels of ``method_names``."""
    out = {}
    for m in names:
        if m == "tcav":
            out[m] = "TCAV (Captum)"
        elif m.startswith("acav_"):
            mode, eps = m[5:].rsplit("_", 1)
            out[m] = f"A-CAV {mode.replace('_', '-')} {eps}/255"
        elif m.startswith("gs_"):
            out[m] = f"GS {m[3:]} + avg"
        else:
            out[m] = "averaging only"
    return out


def method_names(acav_modes, acav_eps, gs_modes) -> list[str]:
    """The methods of a sweep, baseline first."""
    return (["tcav"] + [f"acav_{m}_{e * 255:.0f}" for m in acav_modes for e in acav_eps]
            + [f"gs_{g.replace('complement_', '')}" for g in gs_modes] + ["avg_only"])


def _blas_threads():
    """numpy's BLAS limited to torch's thread count (the notebook pins 1 thread)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(torch.get_num_threads())


def sweep(model, layer: str, world: dict, acts: dict, *, n_seeds: int, n_random: int,
          K: int, acav_modes, acav_eps, acav_perturb="both", acav_space="input",
          acav_rounds=1, gs_modes=("complement_centered",), tol=1e-6, alpha=0.01,
          kind="sgd", bar=None) -> dict:
    """Fit every method's CAV for ``n_seeds`` seeds at ``layer``.  ``acts``: activations at
    this layer of the world's sets (``activations``).  Returns {method: [(w, b)] * n_seeds},
    plus the key 'random_sets' (index arrays into the pool, one per seed).  The baseline is
    fitted inside Captum by ``captum_tcav`` later; here ``fit_cav`` gives the identical CAV
    (same activations, same seed: checked by a test)."""
    with _blas_threads():
        return _sweep(model, layer, world, acts, n_seeds=n_seeds, n_random=n_random, K=K,
                      acav_modes=acav_modes, acav_eps=acav_eps, acav_perturb=acav_perturb,
                      acav_space=acav_space, acav_rounds=acav_rounds, gs_modes=gs_modes,
                      tol=tol, alpha=alpha, kind=kind, bar=bar)


def _sweep(model, layer, world, acts, *, n_seeds, n_random, K, acav_modes, acav_eps,
           acav_perturb, acav_space, acav_rounds, gs_modes, tol, alpha, kind, bar):
    A_c, A_pool = acts["concept"], acts["pool"]
    mu, sigma = A_pool.mean(0), A_pool.std(0)
    out = {m: [] for m in method_names(acav_modes, acav_eps, gs_modes)}
    out["random_sets"] = []
    bases = {g: gs_basis(A_c, g, tol, mu) for g in gs_modes}
    for s in range(n_seeds):
        rs = np.random.default_rng([s, 0]).choice(len(A_pool), n_random, replace=False)
        out["random_sets"].append(rs)
        base = fit_cav(A_c, A_pool[rs], s, alpha, kind)
        out["tcav"].append(base)
        for m in acav_modes:
            for e in acav_eps:
                out[f"acav_{m}_{e * 255:.0f}"].append(acav_fit(
                    model, layer, world["concept"], world["pool"][torch.from_numpy(rs)], base,
                    eps=e, mode=m, perturb=acav_perturb, space=acav_space, rounds=acav_rounds,
                    seed=s, alpha=alpha, kind=kind, A_pos=A_c, A_neg=A_pool[rs]))
        for g in gs_modes:
            fits = [fit_cav(A_c, gs_negatives(A_c, A_pool, g, np.random.default_rng([s, k, 1]),
                                              n_random, tol, mu, sigma, bases[g]),
                            s * 1000 + k, alpha, kind) for k in range(K)]
            out[f"gs_{g.replace('complement_', '')}"].append(average(fits))
        avg = [fit_cav(A_c, A_pool[np.random.default_rng([s, k, 2]).choice(
            len(A_pool), n_random, replace=False)], s * 1000 + k, alpha, kind) for k in range(K)]
        out["avg_only"].append(average(avg))
        if bar is not None:
            bar.update(1)
    return out


def evaluate(cavs: dict, acts: dict) -> list[dict]:
    """One row per (method, seed): recall on the textured concept classes, specificity on
    concept-free images, held-out concept accuracy (held-out concept vs held-out random
    images), balanced accuracy, and the training-set margin."""
    rows = []
    for m, lst in cavs.items():
        if m == "random_sets":
            continue
        for s, cav in enumerate(lst):
            rec, spec = recall(acts["recall"], cav), specificity(acts["specificity"], cav)
            held = 0.5 * (recall(acts["concept_heldout"], cav) +
                          specificity(acts["pool_heldout"], cav))
            rows.append({"method": m, "seed": s, "recall": rec, "specificity": spec,
                         "bacc": 0.5 * (rec + spec), "heldout_acc": held,
                         "margin": margin(np.concatenate([acts["concept"], acts["pool"]]), cav)})
    return rows


def tcav_all(model, layer: str, world: dict, cavs: dict, *, n_rand_pairs: int, n_random: int,
             alpha=0.01, kind="sgd") -> dict:
    """Captum TCAV scores (sign_count) of the world's target class for the concept, per
    method and seed, and for random-vs-random CAVs (the null for the significance test).
    The baseline's CAVs are *fitted inside Captum*; the others are given to it.  Returns
    {method: scores [n_seeds]} with 'random' [n_rand_pairs] and 'tcav_cavs' (Captum's
    baseline fits, for checking)."""
    pool, n_seeds = world["pool"], len(cavs["tcav"])
    concepts = {0: ("concept", world["concept"])}
    for s, rs in enumerate(cavs["random_sets"]):
        concepts[1 + s] = (f"random{s}", pool[torch.from_numpy(rs)])
    for j in range(2 * n_rand_pairs):
        idx = np.random.default_rng([j, 9]).choice(len(pool), n_random, replace=False)
        concepts[1000 + j] = (f"null{j}", pool[torch.from_numpy(idx)])
    pairs = [(0, 1 + s) for s in range(n_seeds)]
    rnd = [(1000 + 2 * j, 1001 + 2 * j) for j in range(n_rand_pairs)]
    x, t = world["tcav"], world["target"]
    out = {}
    base_sc, _, fitted = captum_tcav(model, layer, x, t, concepts, pairs + rnd,
                                  {**{p: s for s, p in enumerate(pairs)},
                                   **{p: 5000 + j for j, p in enumerate(rnd)}}, alpha, kind)
    out["tcav"], out["random"] = base_sc[:n_seeds], base_sc[n_seeds:]
    out["tcav_cavs"] = [fitted[p] for p in pairs]
    for m, lst in cavs.items():
        if m in ("random_sets", "tcav"):
            continue
        sc, _, _ = captum_tcav(model, layer, x, t, {k: concepts[k] for k in range(n_seeds + 1)},
                            pairs, dict(zip(pairs, lst)), alpha, kind)
        out[m] = sc
    return out


def significance(concept_scores, random_scores) -> float:
    """Two-sided Welch t-test p-value of concept-vs-random TCAV scores against
    random-vs-random ones; 1.0 when the concept's mean is not above the null's (the test
    asks whether the concept is *more* relevant than chance).  NaN when both are constant
    and equal."""
    from scipy import stats

    a, b = np.asarray(concept_scores, float), np.asarray(random_scores, float)
    if a.mean() <= b.mean():
        return 1.0
    if a.std() == 0 and b.std() == 0:
        return 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# --------------------------------------------------------------------------- plain torch
def tcav_score_from_scratch(head, acts: torch.Tensor, target: int, w) -> float:
    """The TCAV score in plain torch: ``head`` maps layer activations [N, ...] to logits;
    S(x) = grad_a logit_target . w, TCAV = fraction with S > 0."""
    a = acts.clone().requires_grad_(True)
    grad, = torch.autograd.grad(head(a)[:, target].sum(), a)
    S = grad.reshape(len(a), -1).double() @ torch.as_tensor(w, dtype=torch.float64)
    return float((S > 0).double().mean())


# --------------------------------------------------------------------------- summaries
def summarise(df):
    """Mean, std (ddof=1), min and max over seeds of recall/specificity/held-out accuracy,
    per layer and method (percent points for readability)."""
    g = df.groupby(["layer", "method"], sort=False)
    out = g[["recall", "specificity", "heldout_acc", "bacc"]].mean().mul(100)
    out["recall_std"] = g["recall"].std().mul(100)
    out["recall_min"] = g["recall"].min().mul(100)
    out["recall_max"] = g["recall"].max().mul(100)
    return out.round(1)[["recall", "recall_std", "recall_min", "recall_max", "specificity",
                         "bacc", "heldout_acc"]]


def std_ratio_interval(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Ratio std(a)/std(b) of two per-seed arrays (same seeds) with a percentile bootstrap
    interval over seeds (seeds resampled jointly).  Returns (ratio, (lo, hi))."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    sa, sb = a[idx].std(1, ddof=1), b[idx].std(1, ddof=1)
    boots = np.where(sb > 0, sa / np.where(sb > 0, sb, 1), np.nan)
    point = a.std(ddof=1) / b.std(ddof=1) if b.std() > 0 else float("nan")
    q = (1 - level) / 2
    lo, hi = np.nanquantile(boots, [q, 1 - q]) if np.isfinite(boots).any() else (np.nan, np.nan)
    return float(point), (float(min(lo, point)), float(max(hi, point)))


# --------------------------------------------------------------------------- figures
def show_world(world: dict, x_train, kinds, y_train, class_names):
    """Concept images of each texture, textured training garments, random-pool examples."""
    import matplotlib.pyplot as plt

    rows = [("concept sets", [concept_images(k, 1, 3 + i)[0] for i, k in enumerate(TEXTURES)]
             + [world["concept"][i] for i in range(3)], [*TEXTURES, "P_C", "P_C", "P_C"])]
    tex = [int(i) for i in torch.nonzero(kinds >= 0).flatten()[:6]]
    rows.append(("textured training images", [x_train[i] for i in tex],
                 [f"{class_names[int(y_train[i])]}\n+{TEXTURES[int(kinds[i])]}" for i in tex]))
    pick = [0, 1, len(world["pool"]) // 2, len(world["pool"]) // 2 + 1, -2, -1]
    rows.append(("random pool", [world["pool"][i] for i in pick],
                 [world["pool_source"][i] for i in pick]))
    fig, axes = plt.subplots(3, 6, figsize=(9, 5.2))
    for r, (title, ims, labels) in enumerate(rows):
        for c in range(6):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(ims):
                ax.imshow(ims[c].squeeze(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(labels[c], fontsize=8)
        axes[r, 0].text(-0.15, 0.5, title, transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=9)
    fig.tight_layout()
    return fig


def recall_strip(df, methods, labels):
    """Recall of each seed's classifier per method (dots) and mean (bar), one panel per
    layer."""
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(df["layer"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(5.2 * len(layers), 4), sharey=True)
    axes = np.atleast_1d(axes)
    rng = np.random.default_rng(0)
    for ax, layer in zip(axes, layers):
        for i, m in enumerate(methods):
            v = df[(df.layer == layer) & (df.method == m)]["recall"].to_numpy() * 100
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=12, alpha=0.7)
            ax.hlines(v.mean(), i - 0.3, i + 0.3, color="k", lw=2)
        ax.set_xticks(range(len(methods)), [labels[m] for m in methods], rotation=60,
                      ha="right", fontsize=8)
        ax.set_title(layer_label(layer))
        ax.set_ylim(-3, 103)
    axes[0].set_ylabel("recall on textured images (%)\n(one dot per seed, bar = mean)")
    fig.tight_layout()
    return fig


def recall_vs_specificity(df, methods, labels):
    """Mean recall against mean specificity per method (error bars: std over seeds)."""
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(df["layer"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, layer in zip(axes, layers):
        for m in methods:
            d = df[(df.layer == layer) & (df.method == m)]
            ax.errorbar(d.specificity.mean() * 100, d.recall.mean() * 100,
                        xerr=d.specificity.std() * 100, yerr=d.recall.std() * 100,
                        fmt="o", capsize=3, label=labels[m])
        ax.set_xlabel("specificity on concept-free images (%)")
        ax.set_title(layer_label(layer))
        ax.set_xlim(-3, 103)
        ax.set_ylim(-3, 103)
    axes[0].set_ylabel("recall on textured images (%)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig


def tcav_plot(tc: dict, methods, labels, pvals: dict):
    """TCAV scores (Captum sign_count) per method against the random-vs-random null, one
    panel per layer; the p-value of the t-test under each box."""
    import matplotlib.pyplot as plt

    layers = list(tc)
    fig, axes = plt.subplots(1, len(layers), figsize=(5.2 * len(layers), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, layer in zip(axes, layers):
        data = [tc[layer]["random"]] + [tc[layer][m] for m in methods]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(data) + 1),
                      ["random vs\nrandom"] + [f"{labels[m]}\np={pvals[layer][m]:.2g}"
                                               for m in methods], rotation=60, ha="right",
                      fontsize=7)
        ax.set_title(layer_label(layer))
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("TCAV score of the target class\n(fraction with positive derivative)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- widget
def score_explorer(cavs_by_layer: dict, acts_by_layer: dict, labels: dict):
    """ipywidgets view: method, layer and seed -> histogram of concept scores s = w.a + b
    (divided by ||w||: a distance to the boundary) of textured images (concept present) and
    concept-free images, with the decision threshold at 0 and the recall/specificity."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    layers = list(cavs_by_layer)
    methods = [m for m in cavs_by_layer[layers[0]] if m != "random_sets"]
    n = len(cavs_by_layer[layers[0]]["tcav"])
    m_w = W.Dropdown(options=[(labels.get(m, m), m) for m in methods], description="method")
    l_w = W.Dropdown(options=[(layer_label(x), x) for x in layers], description="layer")
    s_w = W.IntSlider(0, 0, n - 1, description="seed", continuous_update=False)
    out = W.Output()

    def update(*_):
        cav = cavs_by_layer[l_w.value][m_w.value][s_w.value]
        A = acts_by_layer[l_w.value]
        nw = np.linalg.norm(cav[0])
        pos, neg = scores(A["recall"], cav) / nw, scores(A["specificity"], cav) / nw
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(7, 3.2))
            bins = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()), 40)
            ax.hist(neg, bins, alpha=0.6, label=f"concept-free (specificity {np.mean(neg <= 0):.0%})")
            ax.hist(pos, bins, alpha=0.6, label=f"textured (recall {np.mean(pos > 0):.0%})")
            ax.axvline(0, color="k", ls="--", label="decision threshold")
            ax.set_xlabel("signed distance to the concept boundary, s / ||w||")
            ax.set_ylabel("images")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
            plt.show()
        box.last = (m_w.value, l_w.value, s_w.value, float(np.mean(pos > 0)))

    for w in (m_w, l_w, s_w):
        w.observe(update, names="value")
    box = W.VBox([W.HBox([m_w, l_w, s_w]), out])
    update()
    return box
