"""What every notebook does first and last, in one call each::

    from advlab.pipeline import notebook
    run = notebook.setup("02_awp", globals(), threads=1)   # check knobs, seed, device, threads
    model = run.make_model(arch, seed, **model_kwargs)      # registry model on run.device
    ckpt = run.work_checkpoint("at-s0", config, code=[awp]) # resumable, keyed by config + code
    notebook.show_source(awp.awp_perturbation)              # the method where the lesson teaches it
    notebook.check_matches("one AWP step", ours, library)  # from-scratch == library, or fail
    notebook.say(f"The robust model keeps {acc:.0%} ...")   # a sentence computed from the run
    if run.live: display(awp.landscape_explorer(...))       # widgets only in a live kernel
    ...
    run.savefig(fig, "training_curves")
    run.save_claims(claims)                                 # results/<stage>/claims.json
    run.save_metrics(metrics)                               # headline + details (see save_metrics)

Under the pipeline (``tools/advlab run STAGE``) a run writes ``outputs/<stage>/`` and
``results/<stage>/``; a notebook opened by hand writes both into ``scratch/<stage>/``.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from ..paths import repo_root
from . import params as params_mod

# The shared building blocks every training depends on: a work checkpoint's key always hashes
# their source, plus the modules a notebook names in ``code=``.
CORE_CODE = ("data", "models", "attacks", "training")


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
    """One notebook run: its params, output folders and device."""

    stage: str
    params: dict
    root: Path
    out_dir: Path
    device: torch.device
    results_dir: Path | None = None
    started: float = field(default_factory=time.perf_counter)
    metrics: dict = field(default_factory=dict)
    claims: object = None
    live: bool = False  # a person is using a live kernel: build the widgets (see is_live)

    def __post_init__(self):
        self.results_dir = Path(self.results_dir or self.out_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.load_at_start = _load()

    @property
    def fig_dir(self) -> Path:
        d = self.out_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def info(self):
        """The dataset's ``DatasetInfo`` (class names, shape, default budgets)."""
        from ..core.data import dataset_info

        return dataset_info(self.params["dataset"])

    def stage_dir(self, stage: str) -> Path:
        """Output folder of another stage (e.g. the baselines' checkpoints)."""
        return self.root / "outputs" / stage

    def savefig(self, fig, name: str):
        """Save ``fig`` as figures/<name>.png (and keep showing it in the notebook)."""
        path = self.fig_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def make_model(self, arch: str, seed: int | None = None, **model_kwargs):
        """A fresh registry model for this run's dataset, initialised from ``seed`` (default:
        the run's seed), on the run's device.  An architecture that takes ``image_size``
        gets the dataset's."""
        from ..core.models import MODELS, create_model

        info = self.info
        if "image_size" in inspect.signature(MODELS[arch]).parameters:
            model_kwargs.setdefault("image_size", info.shape[1])
        torch.manual_seed(self.params["seed"] if seed is None else seed)
        return create_model(arch, info.num_classes, info.shape[0], **model_kwargs).to(self.device)

    def work_checkpoint(self, name: str, config: dict, code=()) -> Path:
        """Per-epoch checkpoint of an in-progress training, for resuming after interruption.

        It lives in ``.advlab_cache/<stage>/`` (DVC deletes a stage's outputs before re-running
        it) under a key made of ``config``, the seed, the dataset and the source of the code the
        training runs: the core modules (``CORE_CODE``) and the modules or functions in
        ``code`` (e.g. the paper's module).  An interrupted run resumes; a changed
        configuration or changed code starts afresh.
        """
        key = json.dumps({"config": config, "seed": self.params["seed"],
                          "dataset": self.params["dataset"]}, sort_keys=True, default=str)
        key += code_digest(code)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        path = self.root / ".advlab_cache" / self.stage / f"{name}-{digest}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_model(self, name: str, model, meta: dict) -> Path:
        """Save a final model to ``checkpoints/<name>.pt`` with its metadata (arch, dataset,
        params, epoch, metrics); load it with ``Run.load_model`` or
        ``core.training.load_checkpoint``."""
        from ..core.training import save_checkpoint

        path = self.out_dir / "checkpoints" / f"{name}.pt"
        save_checkpoint(path, model, {"stage": self.stage, "dataset": self.params["dataset"],
                                      **meta})
        return path

    def load_model(self, stage: str, name: str):
        """The model saved by ``save_model`` as ``outputs/<stage>/checkpoints/<name>.pt``,
        rebuilt from its metadata (arch, classes, channels, kwargs), on this run's device, in
        eval mode.  Returns (model, meta).  A missing checkpoint says which stage to run."""
        from ..core.models import create_model
        from ..core.training import load_checkpoint

        path = self.stage_dir(stage) / "checkpoints" / f"{name}.pt"
        if not path.exists():
            have = sorted(p.stem for p in path.parent.glob("*.pt"))
            raise FileNotFoundError(
                f"checkpoint {path} not found (available: {have or 'none'}); run that stage "
                f"first: `dvc repro {stage}` or `python -m advlab run {stage}`")
        blob = load_checkpoint(path)
        meta = blob["meta"]
        model = create_model(meta["arch"], meta.get("num_classes", 10),
                             meta.get("in_channels", 1), **meta.get("model_kwargs", {}))
        model.load_state_dict(blob["model"])
        return model.to(self.device).eval(), meta

    def save_claims(self, claims) -> Path:
        """Write the verdicts to ``results/<stage>/claims.json`` (git-tracked: diffable across
        commits); their measured numbers become the stage's headline metrics."""
        self.claims = claims
        return claims.save(self.results_dir)

    def save_metrics(self, metrics: dict | None = None, headline=()) -> None:
        """Merge ``metrics`` into the run's numbers and write them in two places.

        - ``outputs/<stage>/details.json``: every number (diagnostics included), and
          ``run.json``: params, library versions, device, elapsed time, machine load.
        - ``results/<stage>/metrics.json``: the few headline numbers ``dvc metrics show`` and
          ``dvc exp show`` compare: each claim's measured value (``claim.<id>``), how many
          claims hold, the keys named in ``headline``, the wall time and the load.
        """
        self.metrics.update(metrics or {})
        elapsed = round(time.perf_counter() - self.started, 1)
        load = {"load_1m_start": self.load_at_start, "load_1m_end": _load()}
        (self.out_dir / "details.json").write_text(json.dumps(
            {**self.metrics, "elapsed_seconds": elapsed}, indent=2, default=float))
        head = {k: self.metrics[k] for k in headline}
        if self.claims is not None:
            head.update({f"claim.{c.id}": c.measured for c in self.claims.items})
            summary = self.claims.summary
            head.update(claims_hold=summary["holds"], claims_total=summary["n"],
                        claims_inconclusive=summary["inconclusive"])
        path = self.results_dir / "metrics.json"
        path.write_text(json.dumps({**head, "elapsed_seconds": elapsed, **load}, indent=2,
                                   default=float))
        (self.out_dir / "run.json").write_text(json.dumps(
            {"stage": self.stage, "params": self.params, "environment": environment(),
             "device": str(self.device), "elapsed_seconds": elapsed, **load}, indent=2,
            default=str))


def _load() -> float | None:
    """The 1-minute load average (a timing is only worth quoting on an idle machine)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def code_digest(code=()) -> str:
    """sha1 of the source of the core modules (``CORE_CODE``) and of every module, class or
    function in ``code``: part of a work checkpoint's key."""
    import importlib

    objs = [importlib.import_module(f"advlab.core.{m}") for m in CORE_CODE] + list(code)
    h = hashlib.sha1()
    for o in objs:
        h.update(inspect.getsource(o).encode())
    return h.hexdigest()


PIPELINE_ENV = "ADVLAB_PIPELINE"


def is_live() -> bool:
    """True in a live Jupyter kernel a person is using; False under the pipeline (the runner
    sets ``$ADVLAB_PIPELINE``, which papermill's kernel inherits) and outside IPython.  Widgets
    are built only when this is True: they need a person to move them."""
    if os.environ.get(PIPELINE_ENV):
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    # a Jupyter kernel's shell (a terminal IPython or plain Python has no widgets to show)
    return type(shell).__name__ == "ZMQInteractiveShell"


def check_matches(what: str, ours, reference, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Check that a from-scratch computation in the lesson equals the library version that
    does the heavy runs (tensors, arrays or numbers of the same shape).  Prints the largest
    absolute difference; raises ``AssertionError`` naming ``what`` when they differ beyond
    ``atol + rtol * |reference|``.  Returns None (a cell ending with it echoes nothing)."""
    a = torch.as_tensor(ours).detach().double().cpu()
    b = torch.as_tensor(reference).detach().double().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"{what}: from-scratch shape {tuple(a.shape)} differs from the "
                             f"library's {tuple(b.shape)}")
    diff = (a - b).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    ok = bool(torch.all(diff <= atol + rtol * b.abs()))
    if not ok:
        raise AssertionError(f"{what}: the from-scratch version differs from the library's "
                             f"(max |diff| = {worst:.3g} > atol {atol:g} + rtol {rtol:g})")
    print(f"✓ {what}: the from-scratch version matches the library (max |diff| = {worst:.2g})")


def say(text: str) -> None:
    """Show ``text`` (Markdown, usually an f-string of the run's numbers) as prose in the
    notebook and its HTML.  Sentences that state a result are written this way, never typed
    into a markdown cell, so they cannot contradict the run.  Returns None, so a cell that
    ends with ``notebook.say(...)`` shows the sentence once (not again as a quoted string)."""
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:  # pragma: no cover - outside IPython
        print(text)


def show_source(*objs, title: str | None = None) -> None:
    """Display the source of library functions, classes or methods as highlighted code, so a
    notebook shows its method's real code where the lesson teaches it (and the code a student
    reads is the code that ran).  Returns None (a cell ending with it echoes nothing)."""
    text = "\n\n".join(inspect.getsource(o).rstrip() for o in objs)
    try:
        from IPython.display import Markdown, display

        head = f"**{title}**\n\n" if title else ""
        display(Markdown(f"{head}```python\n{text}\n```"))
    except ImportError:  # pragma: no cover - outside IPython
        print(text)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise params_mod.ParamsError("device: 'cuda' requested but no GPU is available; "
                                     "use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


THREADS_ENV = "ADVLAB_THREADS"


def set_threads(threads: int | None) -> int:
    """Pin the CPU threads of torch and of numpy's / scikit-learn's BLAS and OpenMP pools:
    ``$ADVLAB_THREADS`` if set (the parallel runner gives each of its concurrent stages one
    core), else ``threads`` if given, else at most the machine's cores.  Returns the number in
    force."""
    env = os.environ.get(THREADS_ENV)
    if env:
        if not env.isdigit() or int(env) < 1:
            raise params_mod.ParamsError(f"${THREADS_ENV} must be a positive integer; "
                                         f"got {env!r}")
        threads = int(env)
    n = threads or min(torch.get_num_threads(), os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(n)))
    try:  # numpy's and scikit-learn's BLAS / OpenMP pools too (they default to every core)
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, int(n)))
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    return torch.get_num_threads()


def registry_entry(stage: str):
    """The stage's entry in ``advlab.pipeline.stages`` (None for a stage not registered there,
    e.g. a test's throwaway notebook).  Imported by name on purpose: the registry is not a DVC
    dependency of the stages (editing one entry must not re-run all of them), and what this
    check reads from it, the datasets a stage supports, is already a per-stage dependency in
    dvc.yaml (the ``results/data/<dataset>.md5`` stamps)."""
    import importlib

    return importlib.import_module("advlab.pipeline.stages").by_name().get(stage)


def smallest_class(dataset: str, split: str, root=None) -> int:
    """Examples of the smallest class of ``dataset``'s ``split`` (read from the labels only)."""
    from ..core.data import class_counts

    return min(class_counts(dataset, split, root).values())


def preflight(stage: str, p: dict, data_root=None) -> dict:
    """Checks that need the dataset but no work, run by ``setup`` right after the knobs'
    types: the dataset is one the stage supports (its registry entry), and every size knob
    (``schema.Size``: examples per class drawn from a split, disjointly with or within other
    size knobs) fits the dataset's per-class counts.  Raises ``ParamsError`` naming the knob(s),
    the dataset and the largest value that fits.  A dataset whose labels cannot be read is left
    to the loading code (it says how to fetch the data).  Returns the largest value that fits
    for each size knob."""
    from ..core.data import DataError
    from .schema import check_sizes

    entry = registry_entry(stage)
    if entry is not None and entry.supported:  # (the report reads no dataset)
        for k, v in p.items():
            if k == "dataset" or k.endswith("_dataset"):
                entry.check_dataset(v)
    declared = params_mod.knobs(stage)
    if not declared:
        return {}
    try:
        return check_sizes(p, declared, lambda name, split: smallest_class(name, split, data_root))
    except DataError:
        return {}


def check_fits(source: str, sizes: dict) -> None:
    """Size knobs checked against a set only known once the notebook runs (e.g. another stage's
    subsets, read from its checkpoint): ``sizes`` maps a knob (or a sum of knobs) to
    ``(value, available per class)``.  Raises ``ParamsError`` naming the knob, ``source`` and
    the largest value that fits, before the work that would fail on it."""
    bad = [f"{k} ({v}): {source} hold {n} images per class; the largest value that fits is {n}"
           for k, (v, n) in sizes.items() if v is not None and n is not None and v > n]
    if bad:
        raise params_mod.ParamsError("sizes that do not fit: " + "; ".join(bad))


def setup(stage: str, namespace: dict, threads: int | None = None) -> Run:
    """Collect the parameters of ``stage`` from ``namespace`` (the notebook's globals), check
    them against the stage's knob declarations, seed everything, pick the device, pin the CPU
    threads and create the output folders.

    ``threads``: CPU threads for this notebook (None: all cores, at most 2 here); ignored on
    a GPU.  ``out_dir=None`` (a notebook opened by hand) writes to ``scratch/<stage>/`` so the
    pipeline's ``outputs/`` and ``results/`` stay untouched; the runner passes
    ``outputs/<stage>`` and ``$ADVLAB_RESULTS_DIR``.
    """
    root = repo_root()
    keys = params_mod.notebook_keys(stage, root)
    missing = [k for k in keys if k not in namespace]
    if missing:
        raise params_mod.ParamsError(f"the parameters cell of {stage} lacks {missing}")
    p = params_mod.validate({k: namespace[k] for k in keys}, stage)
    preflight(stage, p, root / "data")
    out = namespace.get("out_dir")
    out_dir = Path(out) if out else root / "scratch" / stage
    if not out_dir.is_absolute():
        out_dir = root / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    results = os.environ.get("ADVLAB_RESULTS_DIR") if out else None
    from ..core.training import seed_everything

    seed_everything(int(p["seed"]))
    device = pick_device(p["device"])
    if device.type == "cpu":
        set_threads(threads)
    try:
        import matplotlib.pyplot as plt
        import seaborn as sns

        sns.set_theme(style="whitegrid", context="notebook")
        plt.rcParams["figure.dpi"] = 90
    except ImportError:  # plotting is optional for library users
        pass
    run = Run(stage, p, root, out_dir, device, Path(results) if results else None)
    run.live = is_live()
    print(f"{stage}: profile={p['profile']}  device={device}  threads={torch.get_num_threads()}"
          f"  outputs -> {out_dir}")
    return run
