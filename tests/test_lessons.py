"""Every notebook (the baselines and each paper) is a lesson: the frame of the notebooks-that-teach convention.

Checked on the notebook source (no execution): the question and learning goals up front, the
method built from scratch and checked against the library (``notebook.check_matches``), a
summary, 4-6 graded exercises each saying what to expect, reproduction notes in an appendix,
short code cells, a comment on every knob, no internal labels, widgets only in a live kernel,
and no result typed into prose: every decimal or percentage in a markdown cell must also occur
in a code cell (a knob, or a paper's number the code compares against); the run's own results
are written with ``notebook.say(f"...")``.

Notebooks written before the convention are listed in ``NOT_YET``: their test is an expected
failure, strict, so a notebook that reaches the frame fails the suite until it leaves the list.
"""
import json
import re

import pytest

from advlab.pipeline import stages

from .conftest import ROOT

NOT_YET = {"00_baselines", "01_regional", "02_awp", "05_mad", "09_aae_anomaly",
           "03_flat_minima", "04_weight_backdoor", "06_ib_features", "07_adml", "08_acav"}

MAX_CODE_LINES = 25
HEADINGS = ("## The method", "## Summary", "## Exercises", "## Appendix: reproduction notes")
INTERNAL = re.compile(r"UNVERIFIED|\bthe spec\b|\bspec's\b|\b[AB]\d\b|TODO|FIXME|<[A-Z0-9][^>]*>")
NUMBER = re.compile(r"(?<![\w.$\\])(\d+\.\d+|\d+(?:\.\d+)?\s?%)")


def cells(stage):
    nb = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())
    return [(c["cell_type"], "".join(c["source"]), c.get("metadata", {}).get("tags", []))
            for c in nb["cells"]]


def lesson_problems(stage) -> list[str]:
    cs = cells(stage)
    md = [s for k, s, _ in cs if k == "markdown"]
    code = [s for k, s, _ in cs if k == "code"]
    params = next((s for k, s, t in cs if "parameters" in t), "")
    problems = []
    first = md[0] if md else ""
    for need in ("**The question.**", "**What you will learn.**"):
        if need not in first:
            problems.append(f"the first cell lacks {need}")
    text = "\n".join(md)
    problems += [f"no heading {h!r}" for h in HEADINGS if h not in text]
    ex = text.split("## Exercises", 1)[-1].split("\n## ", 1)[0]
    items = re.split(r"^\d+\.\s", ex, flags=re.M)[1:]
    if not 4 <= len(items) <= 6:
        problems.append(f"{len(items)} exercises (want 4-6)")
    problems += [f"exercise without a level (★) or an *Expect:*: {i[:50]!r}"
                 for i in items if "★" not in i or "Expect" not in i]
    if not any("notebook.check_matches(" in s for s in code):
        problems.append("no from-scratch method checked with notebook.check_matches")
    for s in code:
        n = len(s.strip().splitlines())
        if n > MAX_CODE_LINES:
            problems.append(f"a code cell of {n} lines (> {MAX_CODE_LINES}): {s[:40]!r}")
    for line in params.splitlines():
        if re.match(r"^\w+\s*=", line) and "#" not in line:
            problems.append(f"knob without a comment: {line.strip()!r}")
    if "interactive" in params:
        problems.append("an `interactive` knob: build widgets under `if run.live:` instead")
    for s in md:
        for m in INTERNAL.finditer(re.sub(r"`[^`]*`", "", s)):
            problems.append(f"internal label or placeholder in prose: {m.group(0)!r}")
    code_text = "\n".join(code)
    for s in md:
        for m in NUMBER.finditer(re.sub(r"\$[^$]*\$|`[^`]*`", "", s)):
            num = m.group(1).replace(" ", "").rstrip("%")
            if num not in code_text:
                problems.append(f"a number typed into prose that no code cell holds: "
                                f"{m.group(1)!r} (compute it with notebook.say)")
    return problems


@pytest.mark.parametrize("stage", [
    pytest.param(s.name, marks=pytest.mark.xfail(s.name in NOT_YET, strict=True,
                                                 reason="written before the lesson frame"))
    for s in stages.STAGES if s.name != stages.REPORT])
def test_paper_notebook_is_a_lesson(stage):
    problems = lesson_problems(stage)
    assert not problems, f"{stage}:\n  " + "\n  ".join(problems)


def test_the_checks_can_fail():
    """A notebook with a typed result, an unlabelled exercise and no from-scratch check is
    caught (guards the checker itself against asserting nothing)."""
    assert len(lesson_problems("01_regional")) >= 3
