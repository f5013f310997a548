"""Claims: verdicts are computed from the measured number, never set by hand."""
import json
import math

import pytest

from advlab.core.claims import Claims, load_all


def test_verdicts_are_computed():
    c = Claims("x")
    assert c.check("a", "s", "p", 0.7, ">=", 0.6).holds
    assert not c.check("b", "s", "p", 0.5, ">=", 0.6).holds
    assert not c.check("c", "s", "p", math.nan, "<", 1.0).holds
    assert c.check("d", "s", "p", -1, "<", 0).criterion == "measured < 0"
    assert c.summary == {"stage": "x", "n": 4, "holds": 2}


def test_duplicate_ids_and_bad_ops_are_rejected():
    c = Claims("x")
    c.check("a", "s", "p", 1, ">", 0)
    with pytest.raises(ValueError, match="twice"):
        c.check("a", "s", "p", 1, ">", 0)
    with pytest.raises(ValueError, match="unknown op"):
        c.check("b", "s", "p", 1, "==", 0)


def test_save_and_load_all(tmp_path):
    for stage, v in [("01_a", 1.0), ("00_b", -1.0)]:
        c = Claims(stage)
        c.check("k", "s", "p", v, ">", 0)
        c.save(tmp_path / stage)
    recs = load_all(tmp_path)
    assert [r["stage"] for r in recs] == ["00_b", "01_a"]
    assert [r["claims"][0]["holds"] for r in recs] == [False, True]
    assert json.loads((tmp_path / "01_a" / "claims.json").read_text())["holds"] == 1


def test_markdown_marks_failures():
    c = Claims("z")
    c.check("ok", "holds claim", "p", 1, ">", 0)
    c.check("no", "failing claim", "p", 0, ">", 1)
    md = c.to_markdown().splitlines()
    assert md[2].endswith("| holds |") and md[3].endswith("| **does not hold** |")
