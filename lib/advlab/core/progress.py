"""Progress bars: widgets in JupyterLab, text under the pipeline.

``tqdm.auto`` picks the widget bar inside any IPython kernel, including the headless one
papermill drives, where nobody sees it.  The runner sets ``ADVLAB_PROGRESS=text``, so long work
shows a text bar (updated at most every few seconds) in the `dvc repro` log instead.
"""
from __future__ import annotations

import os


def progress(iterable=None, **kw):
    """``tqdm`` over ``iterable`` (same arguments), in the flavour that fits where we run."""
    if os.environ.get("ADVLAB_PROGRESS") == "text":
        from tqdm.std import tqdm

        kw.setdefault("mininterval", 5.0)
        return tqdm(iterable, **kw)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)
