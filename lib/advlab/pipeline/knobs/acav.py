"""Knobs of the acav stage (Soni, Shah, Chua & Moore, 2020: Adversarial TCAV)."""
from ..schema import Choice, Float, Int, List, Size, Text

GS_NEGATIVES = ("complement_centered", "complement_random", "complement_gaussian")

KNOBS = {
    "n_train_per_class": Size("train"),
    "epochs": Int(1),
    "batch_size": Int(1),
    "lr": Float(0, 10),
    "concept": Choice("stripes", "dots"),
    "inject_in": Float(0, 1),
    "inject_out": Float(0, 1),
    "n_concept": Int(2),
    "n_random": Int(2),
    "n_heldout": Int(1),
    "pool_sizes": List(Int(0), min_len=3),
    "n_recall": Int(1),
    "n_specificity": Int(1),
    "n_tcav": Int(1),
    "layers": List(Text(), min_len=1),
    "effect_layer": Text(),
    "robust_layer": Text(),
    "classifier": Choice("sgd", "logistic"),
    "alpha": Float(0),
    "n_seeds": Int(2),
    "acav_modes": List(Choice("adv_train", "push_away"), min_len=1),
    "acav_eps": List(Float(0, 1), min_len=1),
    "acav_perturb": Choice("both", "concept"),
    "acav_space": Choice("input", "activation"),
    "acav_rounds": Int(1),
    "gs_negatives": List(Choice(*GS_NEGATIVES), min_len=1),
    "gs_K": Int(1),
    "gs_tol": Float(0, 1),
    "n_rand_pairs": Int(2),
}
