"""Knobs of the ib_features stage (Kim, Lee & Ro, NeurIPS 2021)."""
from ..schema import Float, Int

KNOBS = {
    "n_train_per_class": Int(1),
    "epochs": Int(1),
    "batch_size": Int(1),
    "lr": Float(0, 10),
    "eps": Float(0, 1),
    "n_eval_per_class": Int(1),
}
