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
