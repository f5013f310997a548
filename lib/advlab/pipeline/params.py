"""Parameters: ``params.yaml`` (``common`` + one section per notebook) + a profile overlay.

``resolve("00_baselines", "smoke")`` returns the flat dict a notebook runs with::

    common  <-  params.yaml[stage]  <-  profiles/smoke.yaml[common]  <-  profiles/smoke.yaml[stage]

The ``default`` profile is params.yaml itself (no overlay).  Every value is validated: unknown
keys, unknown dataset / model names and out-of-range epsilons fail fast with a message naming
the key and the allowed values.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .data import DATASETS, repo_root

PROFILES = ("default", "smoke", "paper")


class ParamsError(ValueError):
    """A bad parameter: the message names the key and what is allowed."""


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
    return [k for k in load(root) if k != "common"]


def resolve(stage: str, profile: str | None = None, root=None) -> dict:
    """Merged, validated params of ``stage`` under ``profile`` (default: params' own)."""
    root = Path(root or repo_root())
    base = load(root)
    if "common" not in base:
        raise ParamsError("params.yaml has no 'common' section")
    if stage not in base:
        raise ParamsError(f"params.yaml has no section {stage!r}; sections: "
                          f"{sorted(k for k in base if k != 'common')}")
    merged = {**base["common"], **(base[stage] or {})}
    profile = profile or merged.get("profile", "default")
    if profile not in PROFILES:
        raise ParamsError(f"profile: unknown profile {profile!r}; allowed: {list(PROFILES)}")
    if profile != "default":
        overlay = _read_yaml(root / "profiles" / f"{profile}.yaml")
        for section in ("common", stage):
            for k, v in (overlay.get(section) or {}).items():
                if k not in merged:
                    raise ParamsError(f"profiles/{profile}.yaml: {section}.{k} is not a "
                                      f"parameter of {stage}; known: {sorted(merged)}")
                merged[k] = v
    merged["profile"] = profile
    validate(merged, stage)
    return merged


def _models():
    from .models import MODELS
    return MODELS


def validate(p: dict, stage: str = "") -> dict:
    """Check values by key name; raise ``ParamsError`` naming the key and the allowed values."""
    where = f"{stage}." if stage else ""
    for k, v in p.items():
        if k == "dataset" or k.endswith("_dataset"):
            if v not in DATASETS:
                raise ParamsError(f"{where}{k}: unknown dataset {v!r}; allowed: {sorted(DATASETS)}")
        elif k == "arch" or k.endswith("_arch"):
            archs = v if isinstance(v, list) else [v]
            optional = k != "arch"  # e.g. deep_arch: null skips that model
            bad = [a for a in archs if not (optional and a is None) and a not in _models()]
            if bad:
                raise ParamsError(f"{where}{k}: unknown model {bad}; allowed: {sorted(_models())}")
        elif k == "eps" or k.startswith("eps_") or k.endswith("_eps"):
            vals = v if isinstance(v, list) else [v]
            if not all(isinstance(e, (int, float)) and 0 <= e <= 1 for e in vals):
                raise ParamsError(f"{where}{k}: eps must be a number in [0, 1] "
                                  f"(pixels in [0, 1]); got {v!r}")
        elif k.endswith("sparsity") or k.endswith("sparsities"):
            vals = v if isinstance(v, list) else [v]
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e < 1
                       for e in vals):
                raise ParamsError(f"{where}{k}: a sparsity is the fraction of prunable weights "
                                  f"removed, a number in [0, 1); got {v!r}")
        elif k == "device":
            if v not in ("auto", "cpu", "cuda"):
                raise ParamsError(f"{where}{k}: {v!r}; allowed: ['auto', 'cpu', 'cuda']")
        elif k == "seed" or k.endswith("epochs") or k.endswith("steps") or \
                k.endswith("restarts") or k.endswith("batch_size") or k.startswith("n_"):
            vals = v if isinstance(v, list) else [v]
            if not all(e is None or (isinstance(e, int) and not isinstance(e, bool) and e >= 0)
                       for e in vals):
                raise ParamsError(f"{where}{k}: must be a non-negative integer; got {v!r}")
    return p


def notebook_keys(stage: str, root=None) -> list[str]:
    """The parameter names a notebook's ``parameters`` cell must define."""
    base = load(root)
    return sorted({*base["common"], *(base.get(stage) or {})})
