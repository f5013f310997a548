"""Scaffold a new paper stage: ``python -m advlab new-paper NN_slug "Authors, Venue Year"``.

Creates, consistently named after the stage (and refuses to overwrite anything):

- ``notebooks/NN_slug.ipynb``: the lesson frame every paper notebook follows (question and
  learning goals, the method and the method from scratch checked against the library,
  parameters, the experiment, what the run shows, the verdict, explore it yourself, summary,
  graded exercises, reproduction notes, saving), running end to end; ``tests/test_lessons.py``
  checks the frame;
- ``lib/advlab/papers/slug.py``: the paper's module, with the docstring template (paper,
  official code, deviations, shapes) and a placeholder method;
- ``lib/advlab/pipeline/knobs/slug.py``: its knob declarations;
- the ``slug`` section of ``params.yaml``, ``profiles/smoke.yaml`` and ``profiles/paper.yaml``;
- its entry in the stage registry (``pipeline/stages.py``) and the regenerated ``dvc.yaml``;
- ``tests/papers/test_slug.py``: a first unit test of the placeholder.

Then replace the placeholders (the method, the knobs, the claims) and run ``make test``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..paths import repo_root
from .params import STAGE_RE, section_of

KNOBS = {"n_train_per_class": (100, "Int(1)", 10), "epochs": (2, "Int(1)", 1),
         "batch_size": (64, "Int(1)", None), "lr": (0.05, "Float(0, 10)", None),
         "eps": (0.1, "Float(0, 1)", None), "n_eval_per_class": (50, "Int(1)", 5)}


def _module(slug, paper):
    return f'''"""{paper}: <the paper's title> (venue, arXiv id).

<One paragraph: what the method computes, as the official code computes it, with its equation
in plain text and the shapes of its inputs and outputs.>

Official code: <owner/repository, or "none released">.  Deviations: <every choice that differs
from the paper or the official code, and why>.

Shapes: images ``x`` [B, C, H, W] in [0, 1]; labels ``y`` int64 [B].
"""
from __future__ import annotations

import torch


def placeholder_score(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin of the true class over the best other class, per example: [B] from logits
    [B, K] and labels [B].  Replace with the paper's own method."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other
'''


def _knobs(slug, paper):
    body = "\n".join(f'    "{k}": {decl},' for k, (_, decl, _s) in KNOBS.items())
    return f'''"""Knobs of the {slug} stage ({paper})."""
from ..schema import Float, Int

KNOBS = {{
{body}
}}
'''


def _test(slug):
    return f'''"""Unit tests of advlab.papers.{slug}."""
import torch

from advlab.papers import {slug}


def test_placeholder_score_is_the_true_class_margin():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose({slug}.placeholder_score(logits, y), torch.tensor([1.5, -2.0]))
'''


def _cell(kind, text, tags=None):
    cell = {"cell_type": kind, "metadata": {"tags": tags} if tags else {},
            "source": text.strip("\n").splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _notebook(stage, slug, paper):
    md, code = (lambda t: _cell("markdown", t)), (lambda t: _cell("code", t))
    values = {"profile": "default", "seed": 0, "dataset": "fashion_mnist", "device": "auto",
              **{k: v for k, (v, _, _) in KNOBS.items()}, "out_dir": None}
    params_src = "\n".join(f"{k} = {v!r}".ljust(28) + f"# {COMMENTS[k]}"
                           for k, v in values.items())
    cells = [
        md(f"# {stage[:2]} · <Title>\n\n*{paper}. <Full citation; official code: "
           "`owner/repository`.>*\n\n**The question.** <What does the paper ask, and why "
           "should a student care?>\n\n**What you will learn.**\n\n- <1>\n- <2>\n- <3>\n\n"
           "**Time.** <N> minutes on a 2-core laptop (default profile)."),
        md("## The method\n\n<The method as the official code computes it, with its equation "
           "($\\LaTeX$ renders offline in the HTML export).>\n\n### The method from scratch\n\n"
           "<10-20 readable lines that build the method, then a check that the library "
           "version (which does the heavy runs) computes the same thing.>"),
        _cell("code", params_src, tags=["parameters"]),
        code(SETUP.format(stage=stage, slug=slug)),
        code(FROM_SCRATCH.format(slug=slug)),
        md("## The experiment\n\n<What we run, at what scale, and why that scale answers the "
           "question.>"),
        code(DATA),
        code(TRAIN),
        md("## What the run shows\n\n<One figure per message, axis labels with units; the "
           "sentence that reads it is computed from the run:>"),
        code(READING),
        md("## Does the paper's claim hold?\n\n<Each claim with the paper's number, ours with "
           "its interval, and the verdict: holds, does not hold, or inconclusive.>"),
        code(CLAIMS.format(stage=stage)),
        md("## Explore it yourself\n\n<The question the widget helps answer.>  The explorer "
           "appears when you run this notebook in JupyterLab (not under the pipeline); it "
           "updates when you release a slider."),
        code(EXPLORE.format(slug=slug)),
        md("## Summary\n\n- <What the run showed, in three sentences a student can repeat.>"),
        md("## Exercises\n\n1. (★) <A question answered from this run's outputs.> *Expect:* "
           "<what the student should see.>\n2. (★) <A one-knob edit in the parameters cell.> "
           "*Expect:* <...>\n3. (★★) <...> *Expect:* <...>\n4. (★★★) <A change to the "
           "from-scratch code.> *Expect:* <...>"),
        md("## Appendix: reproduction notes\n\n**Faithful to the official code:** <...>\n\n"
           "**Deviations at this scale:** <each one, and why>."),
        md("## Saving the run\n\nThe headline numbers go to `results/`, for `dvc metrics show`."),
        code(SAVE),
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python (advlab)",
                                                      "language": "python", "name": "advlab"},
                                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    for i, c in enumerate(nb["cells"]):
        c["id"] = str(i)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


COMMENTS = {"profile": "default | smoke | paper (the runner sets it)",
            "seed": "seeds data order, initialisation and attacks",
            "dataset": "fashion_mnist | mnist5k | cifar10 (paper profile)",
            "device": "auto | cpu | cuda",
            "n_train_per_class": "training images per class",
            "epochs": "training epochs", "batch_size": "images per step",
            "lr": "SGD learning rate", "eps": "L-inf attack budget, pixels in [0, 1]",
            "n_eval_per_class": "evaluation images per class (stratified)",
            "out_dir": "None: scratch/ (the runner sets outputs/<stage>)"}

SETUP = '''from advlab.core import data, evaluation, training
from advlab.core.claims import Claims
from advlab.papers import {slug}
from advlab.pipeline import notebook

run = notebook.setup("{stage}", globals())
info = run.info'''

FROM_SCRATCH = '''import torch

def margin_from_scratch(logits, y):
    """True-class logit minus the best other logit, one number per example."""
    rows = torch.arange(len(y))
    others = logits.clone()
    others[rows, y] = float("-inf")
    return logits[rows, y] - others.max(dim=1).values

logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
notebook.check_matches("the margin", margin_from_scratch(logits, y),
                       {slug}.placeholder_score(logits, y))'''

DATA = '''split = data.train_val_test(dataset, n_train_per_class, 0, n_eval_per_class, seed,
                            root=run.data_dir)
x_train, y_train = split["train"]
x_eval, y_eval = split["test"]
print(f"{len(x_train)} training and {len(x_eval)} evaluation images")'''

TRAIN = '''model = run.make_model("small_cnn")
cfg = training.TrainConfig(epochs, batch_size, lr, seed=seed)
training.fit(model, (x_train, y_train), training.Method("standard"), cfg,
             checkpoint=run.work_checkpoint("model", vars(cfg)), desc="train")
model.eval()
clean_acc = evaluation.accuracy(model, x_eval, y_eval)'''

READING = '''notebook.say(f"The model classifies **{clean_acc:.1%}** of the {len(x_eval)} "
             "evaluation images correctly.")'''

CLAIMS = '''claims = Claims("{stage}")
claims.check("placeholder_above_chance", "Placeholder: the model beats chance",
             "replace with the paper's claim and number", clean_acc, ">", 1 / info.num_classes)
run.save_claims(claims)
claims'''

EXPLORE = '''if run.live:  # a person in JupyterLab: build the explorer (skipped by the pipeline)
    notebook.say("<display({slug}.<name>_explorer(...)) here>")'''

SAVE = '''run.save_metrics({"clean_acc": clean_acc}, headline=("clean_acc",))'''


def _yaml_section(slug, values, comment):
    lines = [f"\n{slug}:" + (f"  # {comment}" if comment else "")]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def new_paper(stage: str, paper: str, root=None) -> list[Path]:
    """Create every file of a new paper stage (see the module docstring); returns them."""
    root = Path(root or repo_root())
    if not STAGE_RE.match(stage):
        raise ValueError(f"stage name {stage!r} must look like NN_slug (two digits, then "
                         "lower-case letters, digits and underscores), e.g. 03_flat_minima")
    slug = section_of(stage)
    files = {root / "notebooks" / f"{stage}.ipynb": _notebook(stage, slug, paper),
             root / "lib" / "advlab" / "papers" / f"{slug}.py": _module(slug, paper),
             root / "lib" / "advlab" / "pipeline" / "knobs" / f"{slug}.py": _knobs(slug, paper),
             root / "tests" / "papers" / f"test_{slug}.py": _test(slug)}
    taken = [str(p.relative_to(root)) for p in files if p.exists()]
    import yaml

    if taken or slug in (yaml.safe_load((root / "params.yaml").read_text()) or {}):
        raise FileExistsError(f"{stage} exists already ({taken or 'params.yaml: ' + slug})")
    registry = root / "lib" / "advlab" / "pipeline" / "stages.py"
    text = registry.read_text()
    anchor = '    Stage("99_report", datasets=()),\n'
    if anchor not in text:
        raise RuntimeError(f"cannot find the report's entry in {registry}")
    for path, content in files.items():
        path.write_text(content)
    registry.write_text(text.replace(anchor, f'    Stage("{stage}", paper="{paper}"),\n'
                                     + anchor))
    defaults = {k: v for k, (v, _, _) in KNOBS.items()}
    smoke = {k: s for k, (_, _, s) in KNOBS.items() if s is not None}
    with open(root / "params.yaml", "a") as f:
        f.write(_yaml_section(slug, defaults, paper))
    with open(root / "profiles" / "smoke.yaml", "a") as f:
        f.write(_yaml_section(slug, smoke, ""))
    with open(root / "profiles" / "paper.yaml", "a") as f:
        f.write(f"\n{slug}: {{}}  # the paper's own scale: fill in\n")
    import subprocess

    # dvc.yaml from the registry just written (a fresh interpreter reads this checkout's lib/)
    subprocess.run([sys.executable, str(root / "tools" / "gen_dvc.py")], check=True,
                   capture_output=True)
    return [*files, registry, root / "params.yaml", root / "dvc.yaml"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m advlab new-paper", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", help="NN_slug, e.g. 03_flat_minima")
    ap.add_argument("paper", help='short citation, e.g. "Stutz, Hein & Schiele, ICCV 2021"')
    args = ap.parse_args(argv)
    try:
        made = new_paper(args.stage, args.paper)
    except (ValueError, FileExistsError, RuntimeError) as e:
        print(f"new-paper: {e}", file=sys.stderr)
        return 1
    root = repo_root()
    for p in made:
        print("wrote", p.relative_to(root))
    print("next: write the method, knobs and claims; then `make strip lint test`")
    return 0
