"""Winner-takes-all voting of the three views (seed 004).

Rule, per voxel: each view votes for its own arg-max class; the class with the most votes
wins; a tie between classes with the same number of votes (with three views and several
classes: 1-1-1, or 0 votes is never a winner) goes to the tied class with the largest
probability summed over the views. Remaining exact ties go to the lower class index
(``argmax`` order).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["winner_takes_all"]


def winner_takes_all(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """``V`` probability volumes ``(C, *spatial)`` (softmax outputs) -> class indices ``(*spatial)``.

    Implemented as one arg-max of ``votes * (V + 1) + summed_probability``: the summed
    probability lies in ``[0, V]``, so it can only decide between classes with equal votes.
    """
    if not probabilities:
        raise ValueError("winner_takes_all needs at least one view")
    stack = torch.stack([torch.as_tensor(p).float() for p in probabilities])  # (V, C, *spatial)
    n_views, n_classes = stack.shape[:2]
    choice = stack.argmax(dim=1)  # (V, *spatial): each view's vote
    votes = torch.nn.functional.one_hot(choice, n_classes).sum(dim=0)  # (*spatial, C)
    votes = torch.movedim(votes, -1, 0).float()  # (C, *spatial)
    score = votes * (n_views + 1) + stack.sum(dim=0)
    return score.argmax(dim=0)
