"""Knobs of 05_mad (Masking Adversarial Damage, Lee et al. 2022)."""
from ..schema import AUTOATTACK, Bool, Choice, Float, Int, List, Size, Text

METHODS = ("mad", "mad_largest", "mad_no_mask", "mad_diagonal", "kfac_obd", "mad_abs",
           "mask_value", "random", "magnitude", "taylor", "fisher", "hydra")

KNOBS = {
    "base_checkpoint": Text(),
    "eps": Float(0, 1),
    "sal_n_batches": Int(1),
    "sal_batch_size": Int(1),
    "sal_attack_steps": Int(1),
    "mask_steps": Int(1),
    "mask_lr": Float(0, 10),
    "methods": List(Choice(*METHODS), min_len=1),
    "sparsities": List(Float(0, 1, open_hi=True), min_len=1),
    "classifier_rule": Choice("per_row", "global"),
    "bn_recalibrate": Bool(),
    "hydra_epochs": Int(1),
    "hydra_lr": Float(0, 10),
    "hydra_attack_steps": Int(0),
    "hydra_sparsities": List(Float(0, 1, open_hi=True)),
    "n_eval_per_class": Size("test"),
    "eval_steps": Int(1),
    "eval_restarts": Int(1),
    **AUTOATTACK,
    "finetune_methods": List(Choice(*METHODS)),
    "finetune_sparsities": List(Float(0, 1, open_hi=True)),
    "finetune_n_per_class": Size("train", null=True),
    "finetune_epochs": Int(1),
    "finetune_loss": Choice("mart", "pgd_at", "trades"),
    "finetune_beta": Float(0),
    "finetune_lr": Float(0, 10),
    "finetune_steps": Int(1),
}
