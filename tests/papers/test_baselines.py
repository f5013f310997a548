"""Tests of 00_baselines' own logic (the notebook has no paper module): the matched
clean-accuracy comparison, the validation monitor that leaves training's random stream alone,
and no class-sorted slices in the notebooks of 00 and 02 (MNIST-5k's arrays are sorted by
class, so ``x[:N]`` would see only a few digits)."""
import json
import re
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def code_cells(stage):
    nb = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def cell(stage, start):
    hits = [c for c in code_cells(stage) if c.startswith(start)]
    assert len(hits) == 1, f"{stage}: no single code cell starting with {start!r}"
    return hits[0]


def test_no_prefix_slice_of_a_data_array():
    slice_ = re.compile(r"\b[xy]_\w*\[:")      # x_train[:16], y_land[:100], ...
    for stage in ("00_baselines", "02_awp"):
        bad = [m.group(0) for src in code_cells(stage) for m in slice_.finditer(src)]
        assert not bad, f"{stage} slices a (possibly class-sorted) array: {bad}"


def test_clean_cost_claim_compares_pgd_at_with_a_matched_standard_model():
    train = cell("00_baselines", "at_cfg = ")
    assert '"pgd_at": at_cfg, "standard_matched": at_cfg' in train          # same schedule
    assert '"pgd_at": (x_at, y_at), "standard_matched": (x_at, y_at)' in train  # same images
    claims = cell("00_baselines", 'attack = f"PGD-')
    claim = claims[claims.index('"at_costs_clean_accuracy"'):]
    assert 'matched["clean_acc"] - at["clean_acc"]' in claim
    assert 'paired_proportions_interval(clean["standard_matched"]' in claim


def test_validation_monitor_leaves_the_training_random_stream_alone():
    from advlab.core import data, evaluation

    ns = {"torch": torch, "evaluation": evaluation, "data": data,
          "n_monitor_per_class": 2, "n_val_per_class": 3, "seed": 0, "eps": 0.1,
          "deep_arch": None, "y_val": torch.arange(12) % 4,
          "x_val": torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(0))}
    src = cell("00_baselines", "mon = data.stratified_indices")
    exec(src[:src.index("def train(")], ns)    # mon, NAMES and val_callback only
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).eval()
    before = torch.get_rng_state()
    row = ns["val_callback"](net, 1)
    assert set(row) == {"val_clean_acc", "val_pgd10_acc"}
    assert torch.equal(torch.get_rng_state(), before)   # training's next random start unchanged
