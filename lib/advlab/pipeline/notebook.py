"""What every notebook does first and last: collect its parameters, seed, pick the device,
make its output folder, save metrics and figures, and record the environment.

    run = advlab.notebook.setup("00_baselines", globals())
    ...
    run.savefig(fig, "training_curves")
    run.save_metrics({"clean_acc": 0.91})
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from . import params as params_mod
from .data import repo_root
from .training import seed_everything


def environment() -> dict:
    """Library versions and the device, recorded in every metrics.json."""
    def ver(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": ver("torchvision"), "torchattacks": ver("torchattacks"),
            "pyautoattack": ver("pyautoattack"), "numpy": ver("numpy"),
            "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@dataclass
class Run:
    """One notebook run: its params, output folder and device."""

    stage: str
    params: dict
    root: Path
    out_dir: Path
    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    metrics: dict = field(default_factory=dict)

    @property
    def fig_dir(self) -> Path:
        d = self.out_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def stage_dir(self, stage: str) -> Path:
        """Output folder of another stage (e.g. the baselines' checkpoints)."""
        return self.root / "outputs" / stage

    def savefig(self, fig, name: str):
        """Save ``fig`` as figures/<name>.png (and keep showing it in the notebook)."""
        path = self.fig_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def work_checkpoint(self, name: str, config: dict) -> Path:
        """Per-epoch checkpoint of an in-progress training, for resuming after interruption.

        It lives in ``.advlab_cache/<stage>/`` (DVC deletes a stage's outputs before re-running
        it) under a key made of ``config``, the seed and the library's source, so an
        interrupted run resumes and a changed one starts afresh.
        """
        src = "".join((Path(__file__).parent / f).read_text()
                      for f in ("data.py", "models.py", "attacks.py", "training.py"))
        key = json.dumps({"config": config, "seed": self.params["seed"],
                          "dataset": self.params["dataset"]}, sort_keys=True, default=str) + src
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        path = self.root / ".advlab_cache" / self.stage / f"{name}-{digest}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_model(self, name: str, model, meta: dict) -> Path:
        """Save a final model to ``checkpoints/<name>.pt`` with its metadata (arch, dataset,
        params, epoch, metrics); load it with ``training.load_checkpoint``."""
        from .training import save_checkpoint

        path = self.out_dir / "checkpoints" / f"{name}.pt"
        save_checkpoint(path, model, {"stage": self.stage, "dataset": self.params["dataset"],
                                      **meta})
        return path

    def load_model(self, stage: str, name: str):
        """The model saved by ``save_model`` as ``outputs/<stage>/checkpoints/<name>.pt``,
        rebuilt from its metadata (arch, classes, channels, kwargs), on this run's device, in
        eval mode.  Returns (model, meta).  A missing checkpoint says which stage to run."""
        from .models import create_model
        from .training import load_checkpoint

        path = self.stage_dir(stage) / "checkpoints" / f"{name}.pt"
        if not path.exists():
            have = sorted(p.stem for p in path.parent.glob("*.pt"))
            raise FileNotFoundError(
                f"checkpoint {path} not found (available: {have or 'none'}); run that stage "
                f"first: `dvc repro {stage}` or `python -m advlab.run {stage}`")
        blob = load_checkpoint(path)
        meta = blob["meta"]
        model = create_model(meta["arch"], meta.get("num_classes", 10),
                             meta.get("in_channels", 1), **meta.get("model_kwargs", {}))
        model.load_state_dict(blob["model"])
        return model.to(self.device).eval(), meta

    def save_metrics(self, metrics: dict | None = None) -> Path:
        """Merge ``metrics`` into metrics.json (numbers only, for ``dvc metrics``) and write
        run.json beside it with the params, library versions, device and elapsed time."""
        self.metrics.update(metrics or {})
        elapsed = round(time.perf_counter() - self.started, 1)
        path = self.out_dir / "metrics.json"
        path.write_text(json.dumps({**self.metrics, "elapsed_seconds": elapsed}, indent=2,
                                   default=float))
        (self.out_dir / "run.json").write_text(json.dumps(
            {"stage": self.stage, "params": self.params, "environment": environment(),
             "device": str(self.device), "elapsed_seconds": elapsed}, indent=2, default=str))
        return path


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise params_mod.ParamsError("device: 'cuda' requested but no GPU is available; "
                                     "use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(stage: str, namespace: dict) -> Run:
    """Collect the parameters of ``stage`` from ``namespace`` (the notebook's globals), validate
    them, seed everything and create the output folder.

    ``out_dir=None`` (a notebook opened by hand) writes to ``scratch/<stage>/`` so the
    pipeline's ``outputs/`` stay untouched; the runner passes ``outputs/<stage>``.
    """
    root = repo_root()
    keys = params_mod.notebook_keys(stage, root)
    missing = [k for k in keys if k not in namespace]
    if missing:
        raise params_mod.ParamsError(f"the parameters cell of {stage} lacks {missing}")
    p = params_mod.validate({k: namespace[k] for k in keys}, stage)
    out = namespace.get("out_dir")
    out_dir = Path(out) if out else root / "scratch" / stage
    if not out_dir.is_absolute():
        out_dir = root / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(int(p["seed"]))
    try:
        import matplotlib.pyplot as plt
        import seaborn as sns

        sns.set_theme(style="whitegrid", context="notebook")
        plt.rcParams["figure.dpi"] = 90
    except ImportError:  # plotting is optional for library users
        pass
    return Run(stage, p, root, out_dir, pick_device(p["device"]))
