"""Parameters: ``params.yaml`` (``common`` + one section per stage) + a profile overlay.

A stage is named ``NN_slug`` (the number orders the pipeline); its section in ``params.yaml``
and in the profiles is the slug alone (``00_baselines`` -> ``baselines``), so every knob can be
set the DVC way: ``dvc exp run -S baselines.eps=0.2`` (DVC parses ``-S`` with Hydra's grammar,
which rejects keys starting with a digit).

``resolve("00_baselines", "smoke")`` returns the flat dict a notebook runs with::

    common  <-  params.yaml[slug]  <-  profiles/smoke.yaml[common]  <-  profiles/smoke.yaml[slug]

The ``default`` profile is params.yaml itself (no overlay).  Every value is checked against
the knob declarations in ``advlab/pipeline/knobs/<slug>.py`` (type, range or choices) before any
work: unknown keys, wrong types and out-of-range values fail with a message naming the key and
what is allowed.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from ..paths import repo_root
from .schema import ParamsError, check

PROFILES = ("default", "smoke", "paper")
STAGE_RE = re.compile(r"^(\d\d)_([a-z][a-z0-9_]*)$")

__all__ = ["PROFILES", "ParamsError", "section_of", "load", "stages", "knobs", "resolve",
           "validate", "notebook_keys", "repo_root"]


def section_of(stage: str) -> str:
    """The params section of a stage: ``"00_baselines"`` -> ``"baselines"``.  A name without
    the ``NN_`` prefix is its own section (used by tests' throwaway stages)."""
    m = STAGE_RE.match(stage)
    return m.group(2) if m else stage


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ParamsError(f"{path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return data


def load(root=None) -> dict:
    """The raw params.yaml."""
    return _read_yaml(Path(root or repo_root()) / "params.yaml")


def stages(root=None) -> list[str]:
    """Every stage, in pipeline order: the notebooks ``notebooks/NN_slug.ipynb``."""
    root = Path(root or repo_root())
    return sorted(p.stem for p in (root / "notebooks").glob("*.ipynb") if STAGE_RE.match(p.stem))


def knobs(stage: str) -> dict:
    """The knob declarations of ``stage``: ``common``'s, updated with its section's.  A stage
    without a declaration module (a test's throwaway notebook) gets ``None``: unchecked."""
    common = importlib.import_module(".knobs.common", __package__).KNOBS
    try:
        own = importlib.import_module(f".knobs.{section_of(stage)}", __package__).KNOBS
    except ModuleNotFoundError:
        return None
    return {**common, **own}


def resolve(stage: str, profile: str | None = None, root=None) -> dict:
    """Merged, checked params of ``stage`` under ``profile`` (default: params.yaml's own)."""
    root = Path(root or repo_root())
    base = load(root)
    section = section_of(stage)
    if "common" not in base:
        raise ParamsError("params.yaml has no 'common' section")
    if section not in base:
        raise ParamsError(f"params.yaml has no section {section!r} (for stage {stage}); "
                          f"sections: {sorted(k for k in base if k != 'common')}")
    merged = {**base["common"], **(base[section] or {})}
    profile = profile or merged.get("profile", "default")
    if profile not in PROFILES:
        raise ParamsError(f"profile: unknown profile {profile!r}; allowed: {list(PROFILES)}")
    if profile != "default":
        overlay = _read_yaml(root / "profiles" / f"{profile}.yaml")
        for sec in ("common", section):
            for k, v in (overlay.get(sec) or {}).items():
                if k not in merged:
                    raise ParamsError(f"profiles/{profile}.yaml: {sec}.{k} is not a "
                                      f"parameter of {stage}; known: {sorted(merged)}")
                merged[k] = v
    merged["profile"] = profile
    return validate(merged, stage)


def validate(p: dict, stage: str) -> dict:
    """Check ``p`` against the stage's knob declarations (see ``advlab.pipeline.schema``)."""
    declared = knobs(stage)
    if declared is None:
        return p
    return check(p, declared, where=f"{section_of(stage)}.")


def notebook_keys(stage: str, root=None) -> list[str]:
    """The parameter names a notebook's ``parameters`` cell must define."""
    base = load(root)
    return sorted({*base["common"], *(base.get(section_of(stage)) or {})})
