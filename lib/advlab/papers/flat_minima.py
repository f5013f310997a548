"""Stutz, Hein & Schiele, ICCV 2021: <the paper's title> (venue, arXiv id).

<One paragraph: what the method computes, as the official code computes it, with its equation
in plain text and the shapes of its inputs and outputs.>

Official code: <owner/repository, or "none released">.  Deviations: <every choice that differs
from the paper or the official code, and why>.

Shapes: images ``x`` [B, C, H, W] in [0, 1]; labels ``y`` int64 [B].
"""
from __future__ import annotations

import torch


def placeholder_score(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin of the true class over the best other class, per example: [B] from logits
    [B, K] and labels [B].  Replace with the paper's own method."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other
