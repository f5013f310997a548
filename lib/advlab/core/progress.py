"""Progress bars: widgets in JupyterLab, text under the pipeline; and the thread grant.

``tqdm.auto`` picks the widget bar inside any IPython kernel, including the headless one
papermill drives, where nobody sees it.  The runner sets ``ADVLAB_PROGRESS=text``, so long work
shows a text bar (updated at most every few seconds) in the `dvc repro` log instead.

Every bar also looks (at most every few seconds) at the file named by ``$ADVLAB_THREADS_FILE``:
the parallel runner (``python -m advlab repro``) writes there how many threads this stage may
use now, e.g. 2 instead of 1 once it is the only stage left running, so a core that would idle
through the end of the pipeline does this stage's work instead (``regrant``).
"""
from __future__ import annotations

import functools
import os
import time

GRANT_ENV = "ADVLAB_THREADS_FILE"
_seen = {"checked": float("-inf"), "stamp": None}


def regrant(min_interval: float = 5.0) -> int | None:
    """Apply the thread count the runner granted in ``$ADVLAB_THREADS_FILE`` (one positive
    integer), if it changed since the last look; looks at most every ``min_interval`` seconds.
    Returns the new torch thread count when it changed, else None.  Cheap: one ``stat``."""
    path = os.environ.get(GRANT_ENV)
    now = time.monotonic()
    if not path or now - _seen["checked"] < min_interval:
        return None
    _seen["checked"] = now
    try:
        stat = os.stat(path)
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # _grant replaces the file
        if stamp == _seen["stamp"]:
            return None
        _seen["stamp"] = stamp
        with open(path) as f:
            n = int(f.read().strip())
    except (OSError, ValueError):
        return None
    import torch

    if n < 1 or n == torch.get_num_threads():
        return None
    torch.set_num_threads(n)
    try:  # numpy's and scikit-learn's BLAS / OpenMP pools follow (see notebook.set_threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    return n


@functools.cache
def _granting(cls):
    """A subclass of the tqdm class ``cls`` that calls ``regrant`` as it advances."""

    class Bar(cls):
        def __iter__(self):
            for item in super().__iter__():
                regrant()
                yield item

        def update(self, n=1):
            regrant()
            return super().update(n)

    Bar.__name__ = cls.__name__
    return Bar


def progress(iterable=None, **kw):
    """``tqdm`` over ``iterable`` (same arguments), in the flavour that fits where we run."""
    if os.environ.get("ADVLAB_PROGRESS") == "text":
        from tqdm.std import tqdm

        kw.setdefault("mininterval", 5.0)
        return _granting(tqdm)(iterable, **kw)
    from tqdm.auto import tqdm

    return _granting(tqdm)(iterable, **kw)
