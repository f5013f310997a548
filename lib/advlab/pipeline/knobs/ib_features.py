"""Knobs of 06_ib_features (Kim, Lee & Ro, NeurIPS 2021: robust and non-robust features by
Information Bottleneck)."""
from ..schema import Float, Int, List, Size, Text

KNOBS = {
    "checkpoints": List(Text(), min_len=1),
    "split_layer": Int(0),
    "beta": Float(0),
    "ib_iters": Int(1),
    "ib_lr": Float(0, 10),
    "batch_size": Int(2),
    "ratio_tau": Float(0),
    "eps": Float(0, 1),
    "pgd_steps": Int(1),
    "n_eval_per_class": Size("test"),
    "probe_levels": List(Float(0), min_len=2),
    "probe_claim_level": Float(0),
    "n_attack_per_class": Size(within="n_eval_per_class"),
    "cw_c": Float(0),
    "cw_lr": Float(0, 10),
    "cw_steps": Int(1),
    "nrf_gamma": Float(0),
    "l2_budget": Float(0),
    "aa_iter": Int(1),
    "aa_targets": Int(1, 9),
}
