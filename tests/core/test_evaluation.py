"""Evaluation metrics match hand-computed values; masking checks pass on a real model and catch
a masked one."""
import pytest
import torch
from torch import nn

from advlab.core import evaluation


class Lookup(nn.Module):
    """Predicts class = round(first pixel * 10) - a model whose accuracy we can count by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 9)
        return nn.functional.one_hot(cls, 10).float() * 10 + self.w


def test_accuracy_and_per_class_match_hand_counts():
    x = torch.zeros(6, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.0, 0.1, 0.1, 0.2, 0.3, 0.3])  # predictions 0 1 1 2 3 3
    y = torch.tensor([0, 1, 2, 2, 3, 0])
    m = Lookup()
    assert evaluation.accuracy(m, x, y) == pytest.approx(4 / 6)
    pc = evaluation.per_class_accuracy(m, x, y, num_classes=4)
    assert pc == [0.5, 1.0, 0.5, 1.0]


def test_masking_checks_pass_on_a_trained_model(trained_model, fmnist):
    x, y = fmnist[2][:100], fmnist[3][:100]
    out = evaluation.gradient_masking_checks(trained_model, x, y, 0.1, steps=10)
    assert out["monotone_in_eps"]["passed"] and out["zero_at_large_eps"]["passed"]
    assert out["all_passed"] is True


class Masked(nn.Module):
    """Gradient masking in its purest form: the input reaches the logits only through a
    zero-gradient path, so PGD cannot move and the model *looks* perfectly robust."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach().round().clamp(0, 1) * 0 + 0.5) + 0 * x.sum()


def test_masking_checks_flag_a_masked_model(trained_model, fmnist):
    masked = Masked(trained_model)
    x = fmnist[2][:100]
    y = evaluation.predict(masked, x)  # labels it gets "right" whatever the input
    out = evaluation.gradient_masking_checks(masked, x, y, 0.1, steps=10)
    assert out["zero_at_large_eps"]["accuracy"] == 1.0
    assert not out["zero_at_large_eps"]["passed"] and out["all_passed"] is False
