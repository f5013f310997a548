"""Knobs of the flat_minima stage (Stutz, Hein & Schiele, ICCV 2021)."""
from ..schema import Float, Int, List, Size

KNOBS = {
    "train_epochs": Int(1, null=True),
    "trades_beta": Float(0),
    "label_noise_tau": Float(0, 1),
    "strong_weight_decay": Float(0, 1),
    "snapshot_every": Int(0),
    "n_test_per_class": Size("test"),
    "n_train_per_class": Size("train"),
    "ref_steps": Int(1),
    "ref_restarts": Int(1),
    "flat_steps": Int(1),
    "avg_xi": Float(0, 10),
    "avg_samples": Int(1),
    "snapshot_avg_samples": Int(1),
    "worst_xi": Float(0, 1),
    "worst_iters": Int(1),
    "worst_restarts": Int(1),
    "xi_sweep": List(Float(0, 10), min_len=1),
    "worst_xi_sweep": List(Float(0, 1), min_len=1),
    "landscape_alphas": List(Float(-10, 10), min_len=3),
    "n_landscape_per_class": Size(within="n_test_per_class"),
}
