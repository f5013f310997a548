"""Claims: verdicts are computed from the measured number and its interval, never set by
hand; a claim that was not computed stays in the record as not run."""
import json
import math

import numpy as np
import pytest

from advlab.core import claims as claims_mod
from advlab.core.claims import Claims, load_all


def test_verdicts_are_computed():
    c = Claims("x")
    assert c.check("a", "s", "p", 0.7, ">=", 0.6).holds
    assert not c.check("b", "s", "p", 0.5, ">=", 0.6).holds
    nan = c.check("c", "s", "p", math.nan, "<", 1.0)
    assert not nan.holds and nan.verdict == "inconclusive"
    assert c.check("d", "s", "p", -1, "<", 0).criterion == "measured < 0"
    s = c.summary
    assert (s["n"], s["holds"], s["does_not_hold"], s["inconclusive"]) == (4, 2, 1, 1)


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


@pytest.mark.parametrize("measured,interval,op,expected", [
    (0.05, (0.02, 0.08), ">", "holds"),            # clear of the bar
    (0.05, (-0.01, 0.11), ">", "inconclusive"),    # straddles it
    (-0.05, (-0.08, -0.02), ">", "does not hold"),  # clear on the other side
    (0.9, (0.85, 0.95), "<=", "does not hold"),
    (0.9, (0.85, 1.05), ">=", "inconclusive"),
    (0.9, None, ">=", "holds"),                    # no interval: the point decides
])
def test_interval_decides_the_verdict(measured, interval, op, expected):
    thr = 0.0 if op == ">" else 0.9 if op == ">=" else 0.8
    c = Claims("x").check("k", "s", "p", measured, op, thr, interval=interval)
    assert c.verdict == expected and c.holds == (expected == "holds")


def test_interval_must_contain_the_measurement():
    with pytest.raises(ValueError, match="does not contain"):
        Claims("x").check("k", "s", "p", 0.5, ">", 0, interval=(0.6, 0.7))


def test_not_run_and_expected_claims_never_drop_out(tmp_path):
    c = Claims("x")
    c.expect("a", "b", "c")
    c.check("a", "s", "p", 1, ">", 0, kind="sanity")
    c.not_run("b", "claim b", reason="trades: false")
    c.save(tmp_path)
    rec = json.loads((tmp_path / "claims.json").read_text())
    verdicts = {r["id"]: (r["verdict"], r["kind"]) for r in rec["claims"]}
    assert verdicts == {"a": ("holds", "sanity"), "b": ("not run", "headline"),
                        "c": ("not run", "headline")}
    assert rec["by_kind"]["sanity"]["holds"] == 1 and rec["not_run"] == 2
    with pytest.raises(ValueError, match="unknown kind"):
        c.check("d", "s", "p", 1, ">", 0, kind="headlines")


def test_bootstrap_interval_of_an_accuracy_matches_the_binomial_spread():
    correct = np.r_[np.ones(300), np.zeros(200)]          # accuracy 0.6 on 500 images
    lo, hi = claims_mod.bootstrap_interval(correct, n_boot=4000)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 500)               # normal approximation: 0.043
    assert lo < 0.6 < hi and abs((hi - lo) / 2 - half) < 0.006


def test_paired_interval_is_narrower_than_unpaired_for_correlated_arms():
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    flip = rng.random(400) < 0.05
    b[flip] = 1 - b[flip]                                  # b differs from a on ~5% only
    lo, hi = claims_mod.paired_bootstrap_interval(a, b)
    assert lo <= a.mean() - b.mean() <= hi and hi - lo < 0.05


def test_two_sample_interval_matches_the_normal_spread_of_a_difference_of_accuracies():
    a = np.r_[np.ones(120), np.zeros(80)]                   # 0.6 on 200 training images
    b = np.r_[np.ones(400), np.zeros(600)]                  # 0.4 on 1,000 test images
    lo, hi = claims_mod.two_sample_bootstrap_interval(a, b, n_boot=4000)
    half = 1.96 * math.sqrt(0.24 / 200 + 0.24 / 1000)       # normal approximation: 0.074
    assert lo < 0.2 < hi and abs((hi - lo) / 2 - half) < 0.01
    with pytest.raises(ValueError, match="at least 2"):
        claims_mod.two_sample_bootstrap_interval(a, [1.0])


def test_seed_interval_is_the_t_interval_and_none_for_one_seed():
    assert claims_mod.seed_interval([0.3]) is None
    lo, hi = claims_mod.seed_interval([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0) and (hi - lo) / 2 == pytest.approx(2.4841, rel=1e-3)


def test_scorecard_tallies_kinds_and_verdicts(tmp_path):
    c = Claims("00_x")
    c.check("h", "headline holds", "p", 1, ">", 0)
    c.check("m", "mechanism inconclusive", "p", 0.1, ">", 0, interval=(-0.1, 0.3),
            interval_kind="seed range", kind="mechanism")
    c.save(tmp_path / "00_x")
    recs = load_all(tmp_path)
    t = claims_mod.tally(recs)
    assert t["headline"]["holds"] == 1 and t["mechanism"]["inconclusive"] == 1
    md = claims_mod.scorecard_markdown(recs, "smoke", titles={"00_x": "Demo paper"},
                                       link=lambda s: f"outputs/{s}/{s}.html")
    assert md.startswith("1 of 1 headline claims hold, 0 inconclusive")
    assert "## 00_x: Demo paper" in md and "(outputs/00_x/00_x.html)" in md
    row = next(ln for ln in md.splitlines() if "mechanism inconclusive" in ln)
    assert "0.1 [-0.1, 0.3]" in row and "| > 0 |" in row and "*inconclusive*" in row
    assert "2. seed range" in md  # the interval's kind, as a note below the table


def test_old_records_without_verdict_states_still_load(tmp_path):
    (tmp_path / "00_old").mkdir()
    (tmp_path / "00_old" / "claims.json").write_text(json.dumps(
        {"stage": "00_old", "n": 1, "holds": 0, "claims": [
            {"id": "k", "statement": "s", "paper": "p", "measured": 0.1, "criterion": "c",
             "holds": False}]}))
    rec = load_all(tmp_path)[0]["claims"][0]
    assert rec["verdict"] == "does not hold" and rec["kind"] == "headline"


def test_a_caveat_turns_a_holding_claim_inconclusive_and_says_why():
    c = Claims("x")
    a = c.check("a", "s", "p", 0.5, ">", 0, caveat="gradient-masking checks failed")
    b = c.check("b", "s", "p", -0.5, ">", 0, caveat="gradient-masking checks failed")
    assert a.verdict == "inconclusive" and "gradient-masking" in a.note
    assert b.verdict == "does not hold"


def test_an_accuracy_of_zero_still_has_an_upper_bound():
    """0 of 20 correct is not 'exactly 0': the Wilson interval reaches ~16%."""
    lo, hi = claims_mod.bootstrap_interval(np.zeros(20))
    assert lo == 0.0 and 0.15 < hi < 0.18
    lo, hi = claims_mod.wilson_interval(20, 20)
    assert hi == 1.0 and 0.82 < lo < 0.85


def test_an_uninformative_comparison_is_inconclusive_either_way():
    c = Claims("x")
    for cid, m in (("win", 5.0), ("loss", -5.0)):
        r = c.check(cid, "s", "p", m, ">", 0, uninformative="both at chance level")
        assert r.verdict == "inconclusive" and "uninformative: both at chance" in r.note


@pytest.mark.parametrize("probs", [(0.5, 0.2, 0.1, 0.2), (0.85, 0.1, 0.02, 0.03)])
def test_paired_proportions_interval_covers_the_true_difference(probs):
    """Coverage by simulation: pairs drawn from a known joint distribution (both right, only
    a right, only b right, both wrong); the 95% interval must contain the true difference
    p_a - p_b in about 95% of 1,000 samples of 50 pairs (Newcombe's method 10 is close to
    nominal, a little conservative when the outcomes are skewed)."""
    rng = np.random.default_rng(0)
    truth = probs[1] - probs[2]
    hits = 0
    for _ in range(1000):
        cell = rng.choice(4, size=50, p=probs)
        a, b = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
        lo, hi = claims_mod.paired_proportions_interval(a, b)
        hits += lo <= truth <= hi
    assert 0.925 <= hits / 1000 <= 0.99, hits


def test_paired_interval_of_a_difference_never_uses_wilson_on_the_differences():
    a = np.zeros(30)
    lo, hi = claims_mod.paired_bootstrap_interval(a, a)   # no pair disagrees
    assert lo < 0 < hi                                    # ... but n = 30 leaves room
    lo2, hi2 = claims_mod.paired_bootstrap_interval(np.ones(30), np.zeros(30))
    assert lo2 > 0.8 and hi2 == 1.0


def test_a_nan_interval_is_dropped_and_said():
    c = Claims("x")
    rec = c.check("k", "s", "p", float("nan"), ">", 0, interval=(float("nan"), float("nan")))
    assert rec.interval is None and rec.verdict == "inconclusive"
    assert "no interval" in rec.note
    rec = c.check("k2", "s", "p", 0.5, ">", 0, interval=(0.2, float("nan")))
    assert rec.interval is None and rec.verdict == "holds"  # the point estimate decides


def test_a_claim_shown_at_the_end_of_a_cell_reads_as_its_verdict():
    c = Claims("demo").check("gain", "AWP helps", "+3 pts", 0.05, ">", 0.0,
                             interval=(0.01, 0.09))
    text = c._repr_markdown_()
    assert text.startswith("**AWP helps**: ") and "holds" in text and "measured > 0" in text
