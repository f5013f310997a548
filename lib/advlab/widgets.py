"""Interactive views.  They compute through the library and only *display*; the notebooks
show static figures first, so under papermill (headless) a widget is an optional extra view
and building it is harmless."""
from __future__ import annotations

import torch

from . import attacks


def epsilon_explorer(model, x, y, class_names, eps_max: float = 0.3, steps: int = 10,
                     display: bool = True):
    """A slider over eps and an image index: shows the PGD example and the model's prediction.

    Returns the ``ipywidgets.interactive`` object (``display=False`` only builds it).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    def show(index=0, eps=0.1):
        xi, yi = x[index:index + 1], y[index:index + 1]
        with attacks.eval_mode(model):
            xa = attacks.pgd(model, xi, yi, eps, steps=steps) if eps > 0 else xi
            with torch.no_grad():
                p = torch.softmax(model(xa), 1)[0]
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
        for ax, img, t in zip(axes, (xi[0], xa[0], (xa - xi)[0] / max(eps, 1e-8) / 2 + 0.5),
                              ("clean", f"PGD eps={eps:.2f}", "perturbation (scaled)")):
            ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(t, fontsize=9)
            ax.axis("off")
        k = int(p.argmax())
        fig.suptitle(f"true: {class_names[int(yi)]}  ->  predicted: {class_names[k]} "
                     f"({p[k]:.0%})", fontsize=10)
        plt.show()

    w = W.interactive(show, index=W.IntSlider(0, 0, len(x) - 1),
                      eps=W.FloatSlider(value=0.1, min=0.0, max=eps_max, step=0.01))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w


def sparsity_explorer(model, scores: dict, x, y, eps: float, per_row=(), steps: int = 10,
                      bn_data=None, display: bool = True):
    """A sparsity slider and a criterion picker: prunes a copy of ``model`` with that
    criterion's ``scores`` ({method: {layer: scores}}) and shows its clean and PGD accuracy on
    (x, y) next to the kept fraction of every prunable layer.  ``bn_data``: images on which to
    re-estimate BatchNorm statistics after pruning (``pruning.recalibrate_batchnorm``).

    Returns the ``ipywidgets.interactive`` object (``display=False`` only builds it)."""
    import copy

    import ipywidgets as W
    import matplotlib.pyplot as plt

    from . import evaluation, pruning

    def show(method, sparsity=0.9):
        masks = pruning.masks_from_scores(scores[method], sparsity, per_row)
        pruned = pruning.apply_masks(copy.deepcopy(model), masks)
        if bn_data is not None:
            pruning.recalibrate_batchnorm(pruned, bn_data)
        clean = evaluation.accuracy(pruned, x, y)
        rob = evaluation.robust_accuracy(pruned, x, y, "pgd", eps, steps=steps, early_stop=True)
        kept = pruning.kept_per_layer(masks)
        fig, ax = plt.subplots(figsize=(7, 2.8))
        ax.bar(range(len(kept)), list(kept.values()), color="tab:blue")
        ax.set_xticks(range(len(kept)), list(kept), rotation=30, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept fraction")
        ax.set_title(f"{method} at {sparsity:.0%} sparsity: clean {clean:.1%}, "
                     f"PGD-{steps} {rob:.1%} ({len(x)} images)", fontsize=10)
        plt.show()

    w = W.interactive(show, method=W.Dropdown(options=list(scores)),
                      sparsity=W.FloatSlider(value=0.9, min=0.0, max=0.995, step=0.005,
                                             readout_format=".3f"))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w
