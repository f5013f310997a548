"""Knobs of the weight_backdoor stage (Garg, Kumar, Goel & Liang, CIKM 2020)."""
from ..schema import Choice, Float, Int, List, Size

VICTIMS = ("standard", "pgd_at", "at_awp")

KNOBS = {
    "victims": List(Choice(*VICTIMS), min_len=1),
    "sign_victims": List(Choice(*VICTIMS)),
    "target": Int(0),
    "trigger_size": Int(1),
    "trigger_value": Float(0, 1),
    "n_attack_per_class": Size("train"),
    "n_val_per_class": Size("train", disjoint="n_attack_per_class"),
    "n_test_per_class": Size("test", null=True),
    "abs_budgets": List(Float(1e-9, 1), min_len=2),
    "rel_budgets": List(Float(1e-9, 10), min_len=2),
    "epochs": Int(1),
    "batch_size": Int(1),
    "lr": Float(0, 1),
    "mu": Float(0),
    "sign_step": Float(0, 1),
    "asr_bar": Float(0, 1),
    "fidelity_bar": Float(0, 1),
    "clean_drop_bar": Float(0, 1),
    "median_change_bar": Float(0, 10),
    "noise_margin": Float(0, 1),
}
