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
from pathlib import Path

import pytest

from advlab.pipeline import stages

from .conftest import ROOT

NOT_YET: set = set()  # every notebook follows the frame

MAX_CODE_LINES = 25
HEADINGS = ("## The method", "## Summary", "## Exercises", "## Appendix: reproduction notes")
INTERNAL = re.compile(r"UNVERIFIED|\bthe spec\b|\bspec's\b|\b[AB]\d\b|TODO|FIXME|<[A-Z0-9][^>]*>")
NUMBER = re.compile(r"(?<![\w.$\\])(\d+(?:\.\d+)?\s?%|\d+\.\d+)")


def cells(stage, path=None):
    nb = json.loads(Path(path or ROOT / "notebooks" / f"{stage}.ipynb").read_text())
    return [(c["cell_type"], "".join(c["source"]), c.get("metadata", {}).get("tags", []))
            for c in nb["cells"]]


def lesson_problems(stage, path=None) -> list[str]:
    cs = cells(stage, path)
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
        if s == params:  # the settings cell: one commented knob per line, however many
            continue
        n = len(s.strip().splitlines())
        if n > MAX_CODE_LINES:
            problems.append(f"a code cell of {n} lines (> {MAX_CODE_LINES}): {s[:40]!r}")
    for line in params.splitlines():
        if re.match(r"^\w+\s*=", line) and "#" not in line:
            problems.append(f"knob without a comment: {line.strip()!r}")
        if re.match(r"^\w+\s*=[^#]*;", line):
            problems.append(f"two knobs on one line (papermill cannot parse it): {line!r}")
        if "#" in line and "=" in line.split("#", 1)[1]:
            problems.append(f"'=' in a knob's comment (papermill cannot parse it): {line!r}")
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


def test_the_checks_can_fail(tmp_path):
    """A notebook with a typed result, an unlabelled exercise, an uncommented knob, a long cell
    and no from-scratch check is caught (guards the checker against asserting nothing)."""
    def cell(kind, text, tags=()):
        return {"cell_type": kind, "source": text, "metadata": {"tags": list(tags)}}

    nb = {"cells": [
        cell("markdown", "# 42 · Demo\n\n**The question.** Why?\n\n**What you will learn.**\n- x"),
        cell("code", "eps = 0.1\nseed = 0  # seeds", ["parameters"]),
        cell("markdown", "## The method\n\nThe robust model keeps 61.2% of its accuracy (A1)."),
        cell("code", "\n".join(f"x{i} = {i}" for i in range(30))),
        cell("markdown", "## Summary\n\n- s\n\n## Exercises\n\n1. Do this.\n"
                         "2. (★) And this. *Expect:* a change."),
        cell("markdown", "## Appendix: reproduction notes\n\nnone")]}
    path = tmp_path / "42_demo.ipynb"
    path.write_text(json.dumps(nb))
    problems = "\n".join(lesson_problems("42_demo", path))
    for expected in ("2 exercises", "without a level", "knob without a comment: 'eps = 0.1'",
                     "a code cell of 30 lines", "no from-scratch method",
                     "'A1'", "typed into prose that no code cell holds: '61.2%'"):
        assert expected in problems, (expected, problems)
