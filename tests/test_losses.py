"""Losses pinned on a 1×3×2×2 example whose expected values are written out by hand.

The logits are log-probabilities chosen per voxel, so softmax returns them exactly and every
expected loss below is a literal expression of those probabilities (no call into losses.py).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muscle_pipeline.losses import (
    PartialLabelCrossEntropyLoss,
    PartialLabelLoss,
    WeightedLogDiceLoss,
    dice_ce_loss,
)

torch.set_num_threads(1)

# Voxel probabilities (background, class 1, class 2) for voxels (0,0), (0,1), (1,0), (1,1).
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # target 0, argmax 0 (right)
        [0.5, 0.3, 0.2],  # target 1, argmax 0 (wrong)
        [0.1, 0.3, 0.6],  # target 2, argmax 2 (right)
        [0.2, 0.6, 0.2],  # target 0, argmax 1 (wrong)
    ]
)
TARGET = [0, 1, 2, 0]
CLASS_WEIGHTS = [0.5, 2.0, 1.0]
SMOOTH = 1e-5


def _logits(probs=PROBS) -> torch.Tensor:
    # (4 voxels, 3 classes) -> (1, 3, 2, 2), float64 so that 1e-6 comparisons are meaningful
    return torch.tensor(np.log(probs).T.reshape(1, 3, 2, 2), dtype=torch.float64, requires_grad=True)


def _target(values=TARGET) -> torch.Tensor:
    return torch.tensor(values).reshape(1, 1, 2, 2)


CE = [-math.log(0.7), -math.log(0.3), -math.log(0.6), -math.log(0.2)]
# Weight maps by hand: w_target = [.5, 2, 1, .5], w_argmax = [.5, .5, 1, 2]
HAND_WEIGHTS = {
    "fn": [0.5, 2.0, 1.0, 0.5],
    "fp": [0.5, 0.5, 1.0, 2.0],
    "fn_or_fp": [0.5, 2.5, 1.0, 2.5],  # wrong voxels add the predicted class's weight once
    "fn_plus_fp": [1.0, 2.5, 2.0, 2.5],  # right voxels count their class twice
}


@pytest.mark.parametrize("mode", list(HAND_WEIGHTS))
def test_weighted_cross_entropy_modes_match_hand_values(mode):
    w = HAND_WEIGHTS[mode]
    expected = sum(wi * ci for wi, ci in zip(w, CE)) / sum(w)
    loss = PartialLabelCrossEntropyLoss(mode=mode, class_weights=CLASS_WEIGHTS)(_logits(), _target())
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_unweighted_fn_mode_is_plain_cross_entropy():
    assert PartialLabelCrossEntropyLoss()(_logits(), _target()).item() == pytest.approx(np.mean(CE), abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, 3, generator=gen)
    target = torch.randint(0, 4, (2, 1, 5, 6, 3), generator=gen)
    ours = PartialLabelCrossEntropyLoss()(logits, target)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target[:, 0]).item(), abs=1e-6)


def test_one_hot_target_equals_index_target():
    one_hot = F.one_hot(_target()[:, 0], 3).movedim(-1, 1)
    loss = PartialLabelLoss(mode="fn_or_fp", class_weights=CLASS_WEIGHTS)
    assert loss(_logits(), one_hot).item() == pytest.approx(loss(_logits(), _target()).item(), abs=1e-12)


def test_weighted_log_dice_matches_hand_values():
    # class 0: y=[1,0,0,1], p=[.7,.5,.1,.2] -> inter .9, sum p 1.5, sum y 2
    # class 1: y=[0,1,0,0], p=[.2,.3,.3,.6] -> inter .3, sum p 1.4, sum y 1
    # class 2: y=[0,0,1,0], p=[.1,.2,.6,.2] -> inter .6, sum p 1.1, sum y 1
    d0 = (1.8 + SMOOTH) / (3.5 + SMOOTH)
    d1 = (0.6 + SMOOTH) / (2.4 + SMOOTH)
    d2 = (1.2 + SMOOTH) / (2.1 + SMOOTH)
    expected = -(0.5 * math.log(d0) + 2.0 * math.log(d1) + 1.0 * math.log(d2)) / 3
    loss = WeightedLogDiceLoss(class_weights=CLASS_WEIGHTS)(_logits(), _target())
    assert loss.item() == pytest.approx(expected, abs=1e-6)

    no_background = -(2.0 * math.log(d1) + 1.0 * math.log(d2)) / 2
    loss = WeightedLogDiceLoss(class_weights=CLASS_WEIGHTS, include_background=False)(_logits(), _target())
    assert loss.item() == pytest.approx(no_background, abs=1e-6)


# Partial labels: class 2 is not annotated in this sample, so the target never holds it.
PARTIAL_TARGET = [0, 1, 0, 0]
LABELLED = [[True, True, False]]
# Marginal probabilities q = (p0 + p2, p1): [.8,.2], [.7,.3], [.7,.3], [.4,.6]; argmax q = [0,0,0,1]


def test_marginal_cross_entropy_merges_unlabelled_class_into_background():
    ce = [-math.log(0.8), -math.log(0.3), -math.log(0.7), -math.log(0.4)]
    loss = PartialLabelCrossEntropyLoss()(_logits(), _target(PARTIAL_TARGET), LABELLED)
    assert loss.item() == pytest.approx(np.mean(ce), abs=1e-6)

    # fn_plus_fp: w_target = [.5, 2, .5, .5], w_argmax(q) = [.5, .5, .5, 2]
    w = [1.0, 2.5, 1.0, 2.5]
    expected = sum(wi * ci for wi, ci in zip(w, ce)) / sum(w)
    loss = PartialLabelCrossEntropyLoss("fn_plus_fp", CLASS_WEIGHTS)(_logits(), _target(PARTIAL_TARGET), LABELLED)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_marginal_log_dice_skips_unlabelled_class():
    # class 0: y=[1,0,1,1], q0=[.8,.7,.7,.4] -> inter 1.9, sum q 2.6, sum y 3
    # class 1: y=[0,1,0,0], q1=[.2,.3,.3,.6] -> inter .3, sum q 1.4, sum y 1
    d0 = (3.8 + SMOOTH) / (5.6 + SMOOTH)
    d1 = (0.6 + SMOOTH) / (2.4 + SMOOTH)
    expected = -(0.5 * math.log(d0) + 2.0 * math.log(d1)) / 2
    loss = WeightedLogDiceLoss(CLASS_WEIGHTS)(_logits(), _target(PARTIAL_TARGET), LABELLED)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_unlabelled_class_is_not_pushed_to_background():
    """At a background voxel of a sample that does not annotate class 2, gradient descent must not
    lower class 2's logit (full-label CE does: its gradient there is +p2)."""
    logits = _logits()
    PartialLabelCrossEntropyLoss()(logits, _target(PARTIAL_TARGET), LABELLED).backward()
    grad_class2_at_bg = logits.grad[0, 2, 1, 0].item()  # voxel (1,0): p = (.1, .3, .6)
    # d(-log(p0+p2))/dz2 / 4 voxels = p2 * (1 - 1/(p0+p2)) / 4
    assert grad_class2_at_bg == pytest.approx(0.6 * (1 - 1 / 0.7) / 4, abs=1e-9)
    assert grad_class2_at_bg < 0

    logits = _logits()
    PartialLabelCrossEntropyLoss()(logits, _target(PARTIAL_TARGET)).backward()
    assert logits.grad[0, 2, 1, 0].item() == pytest.approx(0.6 / 4, abs=1e-9)


def test_target_in_unlabelled_class_is_rejected():
    with pytest.raises(ValueError, match="not annotated"):
        PartialLabelCrossEntropyLoss()(_logits(), _target(), LABELLED)


def test_batch_log_dice_pools_only_samples_that_label_the_class():
    probs_b = np.array([[0.6, 0.1, 0.3], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.5, 0.25, 0.25]])
    logits = torch.cat([_logits(), _logits(probs_b)]).detach().requires_grad_(True)
    target = torch.cat([_target(PARTIAL_TARGET), _target([0, 2, 0, 0])])
    labelled = [[True, True, False], [True, False, True]]
    # sample b, marginal over class 1: q0 = [.7,.4,.7,.75], q2 = [.3,.6,.3,.25]; y0=[1,0,1,1], y2=[0,1,0,0]
    # pooled class 0: inter 1.9 + 2.15, sum q 2.6 + 2.55, sum y 3 + 3
    d0 = (2 * 4.05 + SMOOTH) / (5.15 + 6 + SMOOTH)
    d1 = (0.6 + SMOOTH) / (2.4 + SMOOTH)  # only sample a labels class 1
    d2 = (1.2 + SMOOTH) / (1.45 + 1 + SMOOTH)  # only sample b labels class 2
    expected = -(math.log(d0) + math.log(d1) + math.log(d2)) / 3
    loss = WeightedLogDiceLoss(batch=True)(logits, target, labelled)
    assert loss.item() == pytest.approx(expected, abs=1e-6)

    # per-sample: mean over samples of each sample's mean over its annotated classes
    da0 = (3.8 + SMOOTH) / (5.6 + SMOOTH)
    db0 = (4.3 + SMOOTH) / (5.55 + SMOOTH)
    per_sample = (-(math.log(da0) + math.log(d1)) / 2 - (math.log(db0) + math.log(d2)) / 2) / 2
    assert WeightedLogDiceLoss()(logits, target, labelled).item() == pytest.approx(per_sample, abs=1e-6)


def test_combined_loss_weights_its_terms_and_backpropagates():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, 4, generator=gen, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8, 4), generator=gen)
    labelled = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ce = PartialLabelCrossEntropyLoss("fn_or_fp", [0.2, 1, 1, 3])(logits, target, labelled)
    dice = WeightedLogDiceLoss([0.2, 1, 1, 3])(logits, target, labelled)
    combined = PartialLabelLoss("fn_or_fp", [0.2, 1, 1, 3], lambda_ce=0.3, lambda_dice=2.0)
    total = combined(logits, target, labelled)
    assert total.item() == pytest.approx(0.3 * ce.item() + 2.0 * dice.item(), rel=1e-6)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_zero_weights_give_zero_loss_not_nan():
    loss = PartialLabelCrossEntropyLoss(class_weights=[0.0, 0.0, 0.0])(_logits(), _target())
    assert loss.item() == 0.0


def test_dice_ce_factory_takes_index_targets():
    target = _target()
    perfect = torch.tensor(np.eye(3)[TARGET].T.reshape(1, 3, 2, 2) * 20.0)
    wrong = torch.roll(perfect, 1, dims=1)
    loss = dice_ce_loss()
    assert loss.dice.include_background and loss(perfect, target) < 0.01 < loss(wrong, target)
    assert not dice_ce_loss(include_background=False).dice.include_background
