"""Knobs of the adml stage (Lee, Kim & Ro, ICCV 2023)."""
from ..schema import AUTOATTACK, Choice, Float, Int, List, Size, Text

KNOBS = {
    "base_checkpoint": Text(),
    "other_checkpoint": Text(null=True),
    "eps": Float(0, 1),
    "n_train_per_class": Size("train"),
    "finetune_seeds": List(Int(0), min_len=1),
    "epochs": Int(1),
    "batch_size": Int(2),
    "lr": Float(0, 10),
    "up_frac": Float(0, 1),
    "train_steps": Int(1),
    "trades_beta": Float(0, 100),
    "variants": List(Choice("trades", "mart")),
    "variant_beta": Float(0, 100),
    "n_eval_per_class": Size("test"),
    "eval_steps": Int(1),
    "eval_restarts": Int(1),
    "other_steps": Int(1),
    **AUTOATTACK,
    "n_boot": Int(10),
}
