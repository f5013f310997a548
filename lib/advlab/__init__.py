"""advlab: the thin helper library of the Adversarial Robustness Workbook.

Three layers, one folder each (this map and the README's agree with the tree; a test checks)::

    core/      ML building blocks shared by two or more stages:
               data, models, attacks, training, evaluation, claims, plots, widgets,
               weights (weight-space helpers: AWP, flat minima, backdoors), pruning, progress,
               distributed (data-parallel training under torchrun)
    pipeline/  running notebooks, no training code at import time:
               params + schema + knobs/ (every knob declared once), run (the runner),
               notebook (the one setup call), stages (the registry; renders dvc.yaml),
               parallel (make repro: stale stages N at a time), seeds (seed sweeps
               through DVC's queue), train (one model, data-parallel), scaffold
    papers/    one module per paper, named like its stage's slug (05_mad -> papers/mad.py):
               regional, awp, flat_minima, weight_backdoor, mad, ib_features, adml, acav,
               aae_anomaly: the paper's own method, figures and widgets

Rules: papers never import papers; ``core`` never imports ``papers`` or ``pipeline``;
``pipeline`` imports ``core`` only inside functions.  A helper moves from a paper to ``core``
when a second paper needs it.  Editing a ``core`` module re-runs every stage that imports it
and invalidates the resumable training checkpoints keyed by its source (see the README's
contributor section).  Import submodules explicitly: ``from advlab.core import attacks``.

Command line: ``python -m advlab run STAGE | data fetch|verify|cache | new-paper NN_slug``.
"""
__version__ = "0.2.0"
