"""Unit tests of advlab.papers.flat_minima."""
import torch

from advlab.papers import flat_minima


def test_placeholder_score_is_the_true_class_margin():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(flat_minima.placeholder_score(logits, y), torch.tensor([1.5, -2.0]))
