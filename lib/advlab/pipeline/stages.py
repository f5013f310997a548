"""The registry of pipeline stages, and ``dvc.yaml`` generated from it.

Every stage is one notebook ``notebooks/NN_slug.ipynb`` run by ``tools/advlab run NN_slug``.
``STAGES`` says what DVC cannot find out by itself: which datasets and which other stages'
outputs a stage reads, and which of its tables are plots.  Its library dependencies are
computed: the notebook's ``advlab`` imports, followed through the package (``module_closure``).
``dvc.yaml`` is rendered from here (``python tools/gen_dvc.py``) and a test keeps the committed
file equal to the rendering, so deps are never hand-kept (DVC cannot template per-stage deps
lists: treeverse/dvc#8171).

Nothing in the runner or the notebooks imports this module, so editing it re-runs no stage.

Where a stage writes:

- ``outputs/NN_slug/``: everything heavy (executed notebook and HTML, figures, checkpoints,
  tables, ``details.json`` with every diagnostic number, ``run.json``): DVC's cache.
- ``results/NN_slug/metrics.json`` (the few headline numbers ``dvc metrics`` / ``dvc exp show``
  compare) and ``results/NN_slug/claims.json`` (the verdicts): small, tracked by git, so
  ``dvc metrics diff HEAD~1`` compares commits.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import repo_root
from .params import section_of

PIPELINE = "lib/advlab/pipeline"
DATA_STAGE = "data"


# The datasets data.dvc holds (folders of data/, one checked stamp results/data/<name>.md5
# each).  A test keeps this equal to the registry's ``in_data_dvc`` entries.
DATA_DVC = ("fashion_mnist", "mnist5k")


@dataclass(frozen=True)
class Stage:
    """One notebook stage.  ``paper``: the paper's short citation (None for the baselines and
    the report); ``datasets``: the folders of ``data/`` it reads, i.e. the offline datasets it
    supports as its ``dataset`` knob (plus any it always reads): its DVC dependencies;
    ``external``: datasets outside ``data/`` it supports (cifar10 for the paper profile; no DVC
    dependency); ``notebook.setup`` rejects any other dataset before any work, quoting ``why``
    (required when an offline dataset is left out); ``reads``: paths under ``outputs/`` of
    earlier stages (e.g. ``00_baselines/checkpoints``); ``plots``: tables in its ``outputs/``
    folder for ``dvc plots`` ({file: {x:, y:}})."""

    name: str
    paper: str | None = None
    datasets: tuple = DATA_DVC
    external: tuple = ("cifar10",)
    why: str = ""
    reads: tuple = ()
    plots: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return section_of(self.name)

    @property
    def module(self) -> str | None:
        """The paper's own module, ``advlab.papers.<slug>`` (None for non-paper stages)."""
        return f"advlab.papers.{self.slug}" if self.paper else None

    @property
    def supported(self) -> tuple:
        """Every dataset its ``dataset`` knob may name (none for a stage that reads no data,
        the report)."""
        return self.datasets + self.external if self.datasets else ()

    def check_dataset(self, name: str) -> None:
        """Raise ``ParamsError`` if ``name`` is not a dataset this stage supports."""
        if name not in self.supported:
            from .schema import ParamsError

            raise ParamsError(
                f"dataset: {self.name} does not support {name!r} (supported: "
                f"{list(self.supported)}){': ' + self.why if self.why else ''}. Set "
                f"common.dataset (or the stage's own dataset knob) to a supported one.")


STAGES: tuple[Stage, ...] = (
    Stage("00_baselines", plots={"history_standard.csv": {"x": "epoch", "y": "val_pgd10_acc"},
                                 "history_pgd_at.csv": {"x": "epoch", "y": "val_pgd10_acc"}}),
    Stage("01_regional", paper="Ozbulak et al. 2020"),
    Stage("02_awp", paper="Wu, Xia & Wang, NeurIPS 2020",
          plots={"history_at.csv": {"x": "epoch", "y": "test_rob_acc"},
                 "history_at_awp.csv": {"x": "epoch", "y": "test_rob_acc"}}),
    Stage("03_flat_minima", paper="Stutz, Hein & Schiele, ICCV 2021",
          reads=("02_awp/checkpoints",)),
    Stage("04_weight_backdoor", paper="Garg, Kumar, Goel & Liang, CIKM 2020",
          reads=("00_baselines/checkpoints", "02_awp/checkpoints")),
    Stage("05_mad", paper="Lee, Kim & Ro, CVPR 2022", reads=("00_baselines/checkpoints",)),
    Stage("06_ib_features", paper="Kim, Lee & Ro, NeurIPS 2021",
          reads=("00_baselines/checkpoints",)),
    Stage("07_adml", paper="Lee, Kim & Ro, ICCV 2023", reads=("00_baselines/checkpoints",)),
    Stage("08_acav", paper="Soni, Shah, Chua & Moore, 2020", datasets=("fashion_mnist",), external=(),
          why="its concepts are textures injected into Fashion-MNIST classes (stripes in Shirt "
              "and Dress, dots in Bag), so the recall, specificity and TCAV sets are defined by "
              "those classes; the paper profile keeps Fashion-MNIST too"),
    Stage("09_aae_anomaly", paper="Beggel, Pfeiffer & Bischl, 2019",
          external=(),
          why="its own `dataset` knob (Fashion-MNIST, the paper's benchmark) overrides "
              "common.dataset and its MNIST illustration always reads mnist5k (`mnist_dataset`), "
              "so it reads both offline datasets whatever common.dataset says; CIFAR-10 is not "
              "one of the paper's benchmarks",
          plots={"memorisation.csv": {"x": "epoch", "y": "ratio"}}),
    Stage("99_report", datasets=()),
)
REPORT = "99_report"


def by_name() -> dict[str, Stage]:
    return {s.name: s for s in STAGES}


def papers() -> list[Stage]:
    """The paper stages (the contract tests run over these)."""
    return [s for s in STAGES if s.paper]


# --------------------------------------------------------------------------- import closure
def _module_file(root: Path, dotted: str) -> Path | None:
    base = root / "lib" / Path(*dotted.split("."))
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return None


def advlab_imports(source: str, module: str | None = None) -> set[str]:
    """Dotted ``advlab`` modules imported by ``source`` (anywhere, lazy imports included).
    ``module``: the importing module's dotted name, to resolve relative imports."""
    pkg = module.rsplit(".", 1)[0].split(".") if module else []
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "advlab")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                head = ".".join(base + ([node.module] if node.module else []))
            else:
                head = node.module or ""
            if head.split(".")[0] != "advlab":
                continue
            found.add(head)
            found.update(f"{head}.{a.name}" for a in node.names)
    return found


def module_closure(modules: set[str], root=None) -> set[Path]:
    """Files of every advlab module reachable from ``modules`` through imports, relative to
    the repository.  Package ``__init__.py`` files are left out: they hold only docstrings (a
    test checks), so editing the map in a docstring re-runs nothing."""
    root = Path(root or repo_root())
    todo, seen, files = list(modules), set(), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = _module_file(root, m)
        if f is None:
            continue
        if f.name != "__init__.py":
            files.add(f.relative_to(root))
        todo.extend(advlab_imports(f.read_text(), m if f.name != "__init__.py" else m + ".x"))
    return files


def notebook_source(path: Path) -> str:
    """The code cells of a notebook, magics blanked, as one Python source."""
    import json
    import re

    cells = json.loads(Path(path).read_text())["cells"]
    return "\n".join(re.sub(r"^[%!].*$", "", "".join(c["source"]), flags=re.M)
                     for c in cells if c["cell_type"] == "code")


def library_deps(stage: str, root=None) -> list[str]:
    """The library files a stage's run depends on: the runner's and the notebook's import
    closure, plus the stage's knob declarations."""
    root = Path(root or repo_root())
    mods = advlab_imports(notebook_source(root / "notebooks" / f"{stage}.ipynb"))
    files = module_closure(mods | {"advlab.pipeline.run", "advlab.__main__"}, root)
    for k in ("common", section_of(stage)):
        files.add(Path(PIPELINE) / "knobs" / f"{k}.py")
    return sorted(str(f) for f in files)


# --------------------------------------------------------------------------- dvc.yaml
HEADER = """\
# GENERATED by `python tools/gen_dvc.py` from advlab/pipeline/stages.py: do not edit by hand
# (tests/test_hygiene.py checks that this file equals the rendering).
#
# The pipeline: data (checks data/ against data.dvc) -> 00_baselines -> one stage per paper ->
# 99_report.  Each stage runs one notebook through `tools/advlab run NAME` (the project's
# interpreter, however dvc was started).  Its deps are the notebook, the library modules it
# imports (computed), its knob declarations, the data it reads (through the checked hashes in
# results/data/) and the outputs of earlier stages it reads; its params are `common` and its own
# section, in params.yaml and in both profile overlays.
"""


def render(root=None) -> dict:
    """dvc.yaml as a dict (see ``render_text``)."""
    root = Path(root or repo_root())
    datasets = sorted({d for s in STAGES for d in s.datasets})
    out = {"stages": {DATA_STAGE: {
        "desc": "Check data/ against data.dvc before any stage runs (fails naming the file)",
        "cmd": "bash tools/advlab data verify --stamps results/data",
        "always_changed": True,
        "outs": [{f"results/data/{d}.md5": {"cache": False}} for d in datasets],
    }}}
    plots = []
    for s in STAGES:
        sec = s.slug
        deps = [f"notebooks/{s.name}.ipynb", "tools/advlab", *library_deps(s.name, root)]
        deps += [f"results/data/{d}.md5" for d in s.datasets]
        deps += [f"outputs/{r}" for r in s.reads]
        if s.name == REPORT:
            deps += [f"results/{o.name}/{f}" for o in STAGES if o.name != REPORT
                     for f in ("claims.json", "metrics.json")]
        outs = [f"outputs/{s.name}"]
        if s.name != REPORT:
            outs.append({f"results/{s.name}/claims.json": {"cache": False}})
        else:
            outs.append({"RESULTS.md": {"cache": False}})
        out["stages"][s.name] = {
            "cmd": f"bash tools/advlab run {s.name}",
            "deps": deps,
            "params": ["common", sec,
                       {"profiles/smoke.yaml": ["common", sec]},
                       {"profiles/paper.yaml": ["common", sec]}],
            "outs": outs,
            "metrics": [{f"results/{s.name}/metrics.json": {"cache": False}}],
        }
        plots += [{f"outputs/{s.name}/{f}": spec} for f, spec in s.plots.items()]
    out["plots"] = plots
    return out


def render_text(root=None) -> str:
    import yaml

    return HEADER + yaml.safe_dump(render(root), sort_keys=False, width=100)


# --------------------------------------------------------------------------- blast radius
README_BEGIN = "<!-- BEGIN generated: what editing a library module re-runs -->"
README_END = "<!-- END generated -->"


def blast_radius(root=None) -> str:
    """A markdown table: for every library module, the stages whose DVC deps include it (so
    editing it re-runs them) and whether it keys the resumable training checkpoints."""
    root = Path(root or repo_root())
    deps = {s.name: set(library_deps(s.name, root)) for s in STAGES}
    rows = ["| module | editing it re-runs | drops resumable checkpoints |", "|---|---|---|"]
    lib = root / "lib" / "advlab"
    for f in sorted(lib.rglob("*.py")):
        rel = str(f.relative_to(root))
        if f.name == "__init__.py":
            continue
        users = [n for n, d in deps.items() if rel in d]
        who = "every stage" if len(users) == len(STAGES) else \
            (", ".join(f"`{u}`" for u in users) or "nothing (not imported by a stage)")
        keyed = "every stage's" if f.parent.name == "core" and f.stem in (
            "data", "models", "attacks", "training") else ""
        rows.append(f"| `{f.relative_to(lib.parent)}` | {who} | {keyed} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- stage times
TIMES_BEGIN = "<!-- BEGIN generated: stage times of the last run -->"
PIPELINE_RUN = "results/pipeline_run.json"


def timing_table(root=None) -> str:
    """A markdown table of each stage's wall time in the committed run (``results/<stage>/
    metrics.json``, measured by the stage itself) and the whole ``make repro`` (written by the
    parallel runner to ``results/pipeline_run.json``), with the machine's load."""
    import json

    root = Path(root or repo_root())
    rows = ["| stage | minutes | load at start / end |", "|---|---|---|"]
    total = 0.0
    for s in STAGES:
        f = root / "results" / s.name / "metrics.json"
        if not f.exists():
            rows.append(f"| `{s.name}` | not run yet | |")
            continue
        m = json.loads(f.read_text())
        total += m.get("elapsed_seconds", 0.0)
        rows.append(f"| `{s.name}` | {m.get('elapsed_seconds', 0) / 60:.1f} | "
                    f"{m.get('load_1m_start')} / {m.get('load_1m_end')} |")
    rows.append(f"| all stages, one after another | {total / 60:.1f} | |")
    run = root / PIPELINE_RUN
    if run.exists():
        r = json.loads(run.read_text())
        rows.append(f"| `make repro` ({r['jobs']} at a time, {r.get('threads') or 'default'} "
                    f"thread(s) each), {r['date']} | {r['wall_seconds'] / 60:.1f} | "
                    f"{r.get('load_start')} / {r.get('load_end')} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- instructors
LESSONS_BEGIN = "<!-- BEGIN generated: the lessons, from the notebooks -->"


def lesson_outline(stage: str, root=None) -> dict:
    """A notebook's title, learning goals and exercises (level and first sentence), read from
    its lesson frame (see tests/test_lessons.py)."""
    import json
    import re

    root = Path(root or repo_root())
    cells = json.loads((root / "notebooks" / f"{stage}.ipynb").read_text())["cells"]
    md = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    first = md[0] if md else ""
    title = first.splitlines()[0].lstrip("# ").split(" · ", 1)[-1] if first else stage
    goals = first.split("**What you will learn.**", 1)[-1].split("**Time.**")[0] \
        if "**What you will learn.**" in first else ""
    goals = [" ".join(g.split()) for g in re.split(r"^\s*- ", goals.strip(), flags=re.M)
             if g.strip()]
    ex_text = next((m for m in md if m.startswith("## Exercises")), "")
    exercises = []
    for item in re.split(r"^\d+\.\s", ex_text, flags=re.M)[1:]:
        level = re.match(r"\((★+)\)", item.strip())
        body = re.sub(r"^\(★+\)\s*", "", item.strip())
        exercises.append({"level": len(level.group(1)) if level else 0,
                          "task": " ".join(re.split(r"(?<=[.?!])\s", body, maxsplit=1)[0]
                                           .split())})
    return {"title": title, "goals": goals, "exercises": exercises}


def lessons_table(root=None) -> str:
    """Markdown: per notebook, its time in the committed run, what it teaches and its
    exercises (★ easy, ★★ medium, ★★★ hard)."""
    import json

    root = Path(root or repo_root())
    rows = ["| notebook | minutes | what you will learn | exercises |", "|---|---|---|---|"]
    for st in STAGES:
        if st.name == REPORT:
            continue
        o = lesson_outline(st.name, root)
        f = root / "results" / st.name / "metrics.json"
        mins = f"{json.loads(f.read_text())['elapsed_seconds'] / 60:.0f}" if f.exists() else "?"
        goals = "; ".join(o["goals"]) or "(lesson frame pending)"
        ex = "<br>".join(f"{'★' * e['level']} {e['task']}" for e in o["exercises"]) or "—"
        rows.append(f"| `{st.name}` {o['title']} | {mins} | {goals} | {ex} |")
    return "\n".join(rows)


def _replace_block(text: str, begin: str, body: str) -> str:
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(README_END)
    if not (sep and sep2):
        raise ValueError(f"README lacks the markers {begin!r} ... {README_END!r}")
    return f"{head}{begin}\n{body}\n{README_END}{tail}"


def readme_with_blast_radius(text: str, root=None) -> str:
    """``text`` (the README) with its generated blocks replaced: ``blast_radius()`` and, where
    the README has its markers, ``timing_table()``."""
    text = _replace_block(text, README_BEGIN, blast_radius(root))
    if TIMES_BEGIN in text:
        text = _replace_block(text, TIMES_BEGIN, timing_table(root))
    if LESSONS_BEGIN in text:
        text = _replace_block(text, LESSONS_BEGIN, lessons_table(root))
    return text
