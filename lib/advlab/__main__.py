"""The workbook's command line::

    python -m advlab run STAGE [--profile smoke]    run one stage's notebook (what DVC calls)
    python -m advlab repro [--jobs 2] [STAGE...]     the stale stages, N at a time, recorded by
                                                     DVC as `dvc repro` would (make repro)
    python -m advlab seeds 1 2 [--stages S...]      seeds as queued DVC experiments, and
                                                     SEEDS.md: every claim over the seeds
    python -m advlab data fetch | verify | cache     build data/, check it against data.dvc,
                                                     store it in DVC's cache (for experiments)
    python -m advlab new-paper NN_slug "Title"       scaffold a new paper stage
    torchrun --nproc_per_node N -m advlab train ...  train one model data-parallel (GPU labs)

DVC's stages call it through ``tools/advlab``, which finds the project's interpreter even when
DVC was started as ``.venv/bin/dvc`` without an activated environment.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"run": "advlab.pipeline.run", "repro": "advlab.pipeline.parallel",
            "seeds": "advlab.pipeline.seeds", "train": "advlab.pipeline.train",
            "data": "advlab.core.data",
            "new-paper": "advlab.pipeline.scaffold"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
