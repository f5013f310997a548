"""Knobs of 01_regional (regional perturbations, Ozbulak et al. 2020)."""
from ..schema import MODEL, Choice, Float, Int, List, Mapping, Size

KNOBS = {
    "arch": List(Choice(MODEL), min_len=2),
    "arch_kwargs": Mapping(keys=Choice(MODEL)),
    "n_train_per_class": Size("train", null=True),
    "train_epochs": Int(1),
    "batch_size": Int(1),
    "lr": Float(0, 10),
    "n_eval_per_class": Size("test"),
    "n_images": Int(1),
    "step_size": Float(0, 1),
    "max_steps": Int(1),
    "masks": Mapping(keys=Choice("center", "frame", "random")),
    "n_gallery": Int(1),
}
