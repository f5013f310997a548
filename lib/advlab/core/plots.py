"""Figures the notebooks share.  Each function returns a matplotlib Figure and reads only
numbers the notebook has already computed (and saved), so a figure is traceable to data."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def image_grid(images, titles=None, ncols: int = 8, cmap="gray", scale: float = 1.4,
               suptitle: str | None = None, title_colors=None, row_labels=None):
    """Show [N, C, H, W] images in [0, 1] (or [N, H, W]) in a grid with optional titles.

    ``title_colors``: one matplotlib colour per image (e.g. green = right, red = wrong);
    ``row_labels``: one label per row, written left of the row.
    """
    images = torch.as_tensor(images).detach().cpu()
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.ndim == 3:
            img = img.permute(1, 2, 0)
            img = img.squeeze(-1) if img.shape[-1] == 1 else img
        ax.imshow(img.numpy(), cmap=cmap if img.ndim == 2 else None, vmin=0, vmax=1)
        if titles is not None:
            color = {} if title_colors is None else {"color": title_colors[i]}
            ax.set_title(titles[i], fontsize=8, **color)
    for r, label in enumerate(row_labels or []):
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(histories: dict, keys=("train_loss",), xlabel="epoch", marks=None,
                    titles=None, ylabels=None, marks_label=None):
    """One panel per key; one line per run in ``histories = {label: [row dicts]}``.

    ``marks``: epochs to mark with a vertical dotted line (e.g. LR decays), named
    ``marks_label`` in the legend;  ``titles`` / ``ylabels``: ``{key: text}`` for the panels
    (default: the key with spaces).  The legend sits right of the last panel.
    """
    titles, ylabels = titles or {}, ylabels or {}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, rows in histories.items():
            pts = [(r["epoch"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        for j, m in enumerate(marks or []):
            ax.axvline(m, color="gray", ls=":", lw=1,
                       label=marks_label if (marks_label and j == 0) else None)
        ax.set_xlabel(xlabel)
        ax.set_title(titles.get(key, key.replace("_", " ")))
        if key in ylabels:
            ax.set_ylabel(ylabels[key])
    axes.flat[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                         frameon=False)
    fig.tight_layout()
    return fig


def per_class_bars(values: dict, class_names, ylabel="accuracy", title: str | None = None):
    """Grouped bars: ``values = {label: [K numbers]}``, one group per class; the legend sits
    right of the bars, never over them."""
    k, labels = len(class_names), list(values)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * k), 3.2))
    for i, lab in enumerate(labels):
        ax.bar(np.arange(k) + i * width, values[lab], width, label=lab)
    ax.set_xticks(np.arange(k) + 0.4 - width / 2)
    ax.set_xticklabels(class_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def eps_curves(curves: dict, epsilons, xlabel="eps (Linf)", ylabel="robust accuracy",
               title: str | None = None, mark: float | None = None,
               mark_label: str = "training / evaluation eps"):
    """Robust accuracy vs eps, one line per model: ``curves = {label: [acc per eps]}``;
    ``mark``: an eps to mark with a dotted vertical line.  The legend sits right of the axes."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, accs in curves.items():
        ax.plot(epsilons, accs, marker="o", label=label)
    if mark is not None:
        ax.axvline(mark, color="gray", ls=":", lw=1, label=mark_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def claims_scorecard(records: list[dict]):
    """One horizontal stacked bar per stage: its claims by verdict (holds, does not hold,
    inconclusive, not run), headline claims in full colour and the others lighter."""
    colors = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:olive",
              "not run": "lightgray"}
    stages = [r["stage"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(stages), 2) + 1.2))
    left = np.zeros(len(stages))
    for verdict, color in colors.items():
        for headline in (True, False):
            n = np.array([sum(c.get("verdict") == verdict and
                              (c.get("kind", "headline") == "headline") == headline
                              for c in r["claims"]) for r in records], dtype=float)
            label = f"{verdict} ({'headline' if headline else 'mechanism / sanity'})"
            ax.barh(stages, n, left=left, color=color, alpha=1.0 if headline else 0.45,
                    label=label if n.sum() else None)
            left += n
    ax.set_xlabel("number of claims")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
