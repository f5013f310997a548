"""Unit tests of advlab.papers.adml."""
import torch

from advlab.papers import adml


def test_placeholder_score_is_the_true_class_margin():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(adml.placeholder_score(logits, y), torch.tensor([1.5, -2.0]))
