"""Knobs of the acav stage (Soni, Shah, Chua & Moore, 2020)."""
from ..schema import Float, Int

KNOBS = {
    "n_train_per_class": Int(1),
    "epochs": Int(1),
    "batch_size": Int(1),
    "lr": Float(0, 10),
    "eps": Float(0, 1),
    "n_eval_per_class": Int(1),
}
