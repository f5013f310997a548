"""Knobs every stage has (``params.yaml: common``)."""
from ..schema import DATASET, Choice, Int

KNOBS = {
    "profile": Choice("default", "smoke", "paper"),
    "seed": Int(0),
    "dataset": Choice(DATASET),
    "device": Choice("auto", "cpu", "cuda"),
}
