"""The seed scorecard: verdicts per seed and the spread of each claim (the queue itself is
driven end to end by tests/test_pipeline.py)."""
import pytest

from advlab.pipeline import seeds


def blob(stage, verdict, measured):
    return {"stage": stage, "claims": [{"id": "c", "statement": "AWP helps", "unit": "pts",
                                        "verdict": verdict, "measured": measured}]}


def test_markdown_shows_each_seed_the_spread_and_how_many_hold():
    md = seeds.seeds_markdown({0: {"02_awp": blob("02_awp", "holds", 1.0)},
                               1: {"02_awp": blob("02_awp", "does not hold", 3.0)},
                               2: {"02_awp": blob("02_awp", "holds", 2.0)}})
    row = next(ln for ln in md.splitlines() if ln.startswith("| AWP helps"))
    assert "| holds | **no** | holds |" in row
    assert "2 ± 1 [1, 3]" in row and "2 of 3" in row


def test_a_seed_without_the_stage_shows_not_run():
    md = seeds.seeds_markdown({0: {"02_awp": blob("02_awp", "holds", 1.0)}, 1: {}})
    row = next(ln for ln in md.splitlines() if ln.startswith("| AWP helps"))
    assert "| holds | not run |" in row and "1 of 1" in row


def test_command_line_refuses_unknown_stages_and_no_seeds(capsys):
    with pytest.raises(SystemExit):
        seeds.main(["1", "--stages", "07_nope"])
    assert "unknown stage(s) ['07_nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        seeds.main([])
