"""Interactive views.  They compute through the library and only *display*; the notebooks
show static figures first and build a widget only in a live kernel (``if run.live:``), so
the pipeline never builds one.  Each view updates when a slider is released
(``continuous_update=False``), never on every tick, and its callback returns a small summary
of what it drew (``widget.result``), which is what the unit tests check."""
from __future__ import annotations

import torch

from . import attacks


def epsilon_explorer(models, x, y, class_names, eps_max: float = 0.3, steps: int = 10,
                     display: bool = True):
    """Sliders over eps and an image index, and a model menu: shows the clean image, its PGD
    example against the chosen model, the perturbation (scaled to [0, 1]) and the model's
    prediction, marked right (green) or wrong (red).

    Args:
        models: one model, or ``{label: model}`` to compare (e.g. standard vs PGD-AT).
        x: images [N, C, H, W] in [0, 1];  y: labels [N];  class_names: K names.
        eps_max: the eps slider's upper end (Linf, pixel units);  steps: PGD steps.
        display: False only builds the widget (tests).
    Returns the ``ipywidgets.interactive`` object; after each update its ``result`` is
    ``{"model", "index", "eps", "pred", "prob", "correct"}``.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    models = models if isinstance(models, dict) else {"model": models}

    def show(model="", index=0, eps=0.1):
        net = models[model]
        xi, yi = x[index:index + 1], y[index:index + 1]
        with attacks.eval_mode(net):
            xa = attacks.pgd(net, xi, yi, eps, steps=steps) if eps > 0 else xi
            with torch.no_grad():
                p = torch.softmax(net(xa), 1)[0]
        k = int(p.argmax())
        ok = k == int(yi)
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
        for ax, img, t in zip(axes, (xi[0], xa[0], (xa - xi)[0] / max(eps, 1e-8) / 2 + 0.5),
                              ("clean", f"PGD, eps = {eps:.2f}", "perturbation (scaled)")):
            ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(t, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{model}: true {class_names[int(yi)]} -> predicted {class_names[k]} "
                     f"({p[k]:.0%}, {'right' if ok else 'wrong'})",
                     color="tab:green" if ok else "tab:red", fontsize=10)
        plt.show()
        plt.close(fig)
        return {"model": model, "index": index, "eps": eps, "pred": k, "prob": float(p[k]),
                "correct": ok}

    w = W.interactive(
        show, model=W.Dropdown(options=list(models), description="model"),
        index=W.IntSlider(0, 0, len(x) - 1, description="image", continuous_update=False),
        eps=W.FloatSlider(value=min(0.1, eps_max), min=0.0, max=eps_max, step=0.01,
                          description="eps", continuous_update=False))
    if display:
        from IPython.display import display as ipy_display
        ipy_display(w)
    return w
