"""Where the workbook lives on disk (used by every layer; imports nothing of advlab)."""
from __future__ import annotations

import os
from pathlib import Path


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The workbook's root: the nearest ancestor holding ``params.yaml`` and ``lib/advlab``.

    ``$ADVLAB_ROOT`` wins when set, so a notebook opened from ``notebooks/`` finds ``data/``.
    """
    if os.environ.get("ADVLAB_ROOT"):
        return Path(os.environ["ADVLAB_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").exists() and (p / "lib" / "advlab").is_dir():
            return p
    raise FileNotFoundError(
        f"cannot find the workbook root (a folder with params.yaml and lib/advlab) above {here}; "
        "run from inside the repository or set ADVLAB_ROOT")
