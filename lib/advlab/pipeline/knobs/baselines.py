"""Knobs of 00_baselines (standard and PGD adversarial training)."""
from ..schema import AUTOATTACK, MODEL, Bool, Choice, Float, Int, Size

KNOBS = {
    "arch": Choice(MODEL),
    "eps": Float(0, 1),
    "n_val_per_class": Size("train"),
    "n_eval_per_class": Size("test"),
    "std_n_train_per_class": Size("train", disjoint="n_val_per_class", null=True),
    "std_epochs": Int(1),
    "at_n_train_per_class": Size("train", disjoint="n_val_per_class", within="std_n_train_per_class", null=True),
    "at_epochs": Int(1),
    "at_warmup_epochs": Int(0),
    "at_steps": Int(1),
    "deep_arch": Choice(MODEL, null=True),
    "deep_n_train_per_class": Size("train", disjoint="n_val_per_class", within="std_n_train_per_class", null=True),
    "deep_epochs": Int(1),
    "deep_full_eval": Bool(),
    "batch_size": Int(1),
    "lr": Float(0, 10),
    "n_monitor_per_class": Size("train"),   # watched from the validation split (capped at it)
    "eval_steps": Int(1),
    "eval_restarts": Int(1),
    **AUTOATTACK,
}
