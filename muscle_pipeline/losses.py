"""Training losses for multi-class segmentation.

Shapes: ``logits`` (B, C, *spatial) raw network outputs (class 0 = background);
``target`` either class indices (B, 1, *spatial) with values 0..C-1, or one-hot (B, C, *spatial).

- :func:`dice_ce_loss` — MONAI's ``DiceCELoss`` with this project's defaults.
- :class:`PartialLabelCrossEntropyLoss` — the weighted cross-entropy of Wong et al. (ISMRM 2019),
  with its four weight-map modes, made safe for *partially labelled* datasets.
- :class:`WeightedLogDiceLoss` — ``-(1/C) * sum_c w_c * log(dice_c)`` (Wong et al.).
- :class:`PartialLabelLoss` — the weighted sum of both.

Partial labels
--------------
Datasets annotate different subsets of the ontology (one annotates the calf muscles only,
another the thigh). ``labelled_classes`` (B, C) bool says, per sample, which channels its
dataset annotated. In such a sample a voxel marked background (0) may really belong to an
unannotated class, so the losses must not push it towards background. We use the *marginal*
formulation (Fang & Yan, "Multi-organ segmentation over partially labeled datasets with
multi-scale feature abstraction", IEEE TMI 2020; Shi et al., "Marginal loss and exclusion
loss for partially supervised multi-organ segmentation", MedIA 2021): per sample, the
softmax probabilities of the unannotated classes U are merged into background::

    q_0 = p_0 + sum_{c in U} p_c,   q_c = p_c (c annotated),   q_c = 0 (c in U)

and both losses are computed on ``q`` (in log space, with ``logsumexp``, so it stays stable).
A background voxel therefore costs ``-log(p_0 + sum_U p_c)``: predicting any unannotated class
there is not penalised, while annotated classes are learnt exactly as with full labels. With
every class annotated (the default) ``q == p`` and the losses reduce to the plain ones.
Background (channel 0) always counts as annotated. A target voxel carrying a class that its
sample declares unannotated is a contradiction and raises ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

WEIGHT_MODES = ("fn", "fp", "fn_or_fp", "fn_plus_fp")


def dice_ce_loss(include_background: bool = True, **kwargs) -> DiceCELoss:
    """MONAI ``DiceCELoss`` for logits (B, C, ...) and index targets (B, 1, ...).

    Defaults: ``to_onehot_y=True, softmax=True``; ``kwargs`` go to ``DiceCELoss`` unchanged
    (``lambda_dice``, ``lambda_ce``, ``batch``, ``weight``, ...).
    """
    kwargs.setdefault("to_onehot_y", True)
    kwargs.setdefault("softmax", True)
    return DiceCELoss(include_background=include_background, **kwargs)


def _index_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices (B, *spatial) int64 from an index (B, 1, ...) or one-hot (B, C, ...) target."""
    target = torch.as_tensor(target, device=logits.device)
    if target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    if target.shape[1] == 1:
        index = target[:, 0].long()
    elif target.shape[1] == logits.shape[1]:
        index = target.argmax(dim=1)
    else:
        raise ValueError(
            f"target must have 1 channel (class indices) or {logits.shape[1]} (one-hot), got {target.shape[1]}"
        )
    if index.numel() and (index.min() < 0 or index.max() >= logits.shape[1]):
        raise ValueError(f"target class indices must lie in [0, {logits.shape[1] - 1}]")
    return index


def _labelled_mask(labelled_classes, logits: torch.Tensor) -> torch.Tensor:
    """(B, C) bool with background forced to annotated; all True when ``labelled_classes`` is None."""
    batch, channels = logits.shape[:2]
    if labelled_classes is None:
        return torch.ones(batch, channels, dtype=torch.bool, device=logits.device)
    mask = torch.as_tensor(labelled_classes, device=logits.device).bool()
    if mask.ndim == 1:
        mask = mask.unsqueeze(0)
    mask = mask.expand(batch, channels).clone()
    mask[:, 0] = True
    return mask


def marginal_log_probs(logits: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Log of the marginal probabilities ``q`` (B, C, *spatial) described in the module docstring.

    Channel 0 holds ``log(p_0 + sum_U p_c)``; unannotated channels hold ``-inf`` (q = 0).
    """
    # half-precision (AMP) logits are promoted: log-probabilities of small classes underflow in fp16
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    log_p = F.log_softmax(logits, dim=1)
    if bool(labelled.all()):
        return log_p
    view = (*labelled.shape, *([1] * (logits.ndim - 2)))
    unlabelled = (~labelled).view(view)
    background_set = unlabelled.clone()
    background_set[:, 0] = True
    merged_background = torch.logsumexp(log_p.masked_fill(~background_set, float("-inf")), dim=1, keepdim=True)
    others = log_p[:, 1:].masked_fill(unlabelled[:, 1:], float("-inf"))
    return torch.cat([merged_background, others], dim=1)


def _check_target_annotated(index: torch.Tensor, labelled: torch.Tensor) -> None:
    if bool(labelled.all()):
        return
    hits_unlabelled = (~labelled).gather(1, index.flatten(1)).any()
    if bool(hits_unlabelled):
        raise ValueError("target contains a class that labelled_classes marks as not annotated in that sample")


def _class_weights(class_weights, channels: int, like: torch.Tensor) -> torch.Tensor:
    if class_weights is None:
        return torch.ones(channels, dtype=torch.float32, device=like.device)
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=like.device).flatten()
    if weights.numel() != channels:
        raise ValueError(f"class_weights has {weights.numel()} entries for {channels} classes")
    if bool((weights < 0).any()):
        raise ValueError("class_weights must be non-negative")
    return weights


class PartialLabelCrossEntropyLoss(nn.Module):
    """Weighted cross-entropy of Wong et al. (ISMRM 2019) on marginal probabilities.

    Per voxel i: ``ce(i) = -log q_{t(i)}(i)`` (``q`` as in the module docstring, ``t`` the target
    class). The weight map, with ``y`` the one-hot target, ``pred`` the one-hot argmax of ``q``
    (detached: no gradient flows through the weights) and ``w_c`` the class weights:

    - ``"fn"``:         w(i) = sum_c w_c * y_c(i)                  (= w_{t(i)})
    - ``"fp"``:         w(i) = sum_c w_c * pred_c(i)               (= w_{argmax(i)})
    - ``"fn_or_fp"``:   w(i) = sum_c w_c * (y_c(i) OR pred_c(i))   (w_t, plus w_pred where wrong)
    - ``"fn_plus_fp"``: w(i) = sum_c w_c * (y_c(i) + pred_c(i))    (w_t + w_pred, 2 w_t where right)

    Loss = sum_i w(i) ce(i) / sum_i w(i) over the whole batch (0 when every weight is 0).
    With ``mode="fn"``, no class weights and all classes annotated this equals
    ``torch.nn.functional.cross_entropy``.
    """

    def __init__(self, mode: str = "fn", class_weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
        self.mode = mode
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

    def weight_map(self, index: torch.Tensor, prediction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """w(i) (B, *spatial) from target and predicted class indices."""
        w_target, w_pred = weights[index], weights[prediction]
        if self.mode == "fn":
            return w_target
        if self.mode == "fp":
            return w_pred
        if self.mode == "fn_or_fp":
            return torch.where(index == prediction, w_target, w_target + w_pred)
        return w_target + w_pred

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled_classes=None) -> torch.Tensor:
        index = _index_target(target, logits)
        labelled = _labelled_mask(labelled_classes, logits)
        _check_target_annotated(index, labelled)
        log_q = marginal_log_probs(logits, labelled)
        ce = -log_q.gather(1, index.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            prediction = log_q.argmax(dim=1)
            weights = _class_weights(self.class_weights, logits.shape[1], logits)
            voxel_weights = self.weight_map(index, prediction, weights)
            total = voxel_weights.sum()
        if float(total) == 0.0:
            return (ce * 0.0).sum()
        return (voxel_weights * ce).sum() / total


class WeightedLogDiceLoss(nn.Module):
    """``-(1/|K|) * sum_{c in K} w_c * log(dice_c)`` (Wong et al.), soft Dice on marginal ``q``.

    ``dice_c = (2 * sum_i q_c y_c + smooth_nr) / (sum_i q_c + sum_i y_c + smooth_dr)``, sums over
    the spatial voxels of one sample (``batch=False``: the loss is then the mean over samples of
    each sample's term) or over the voxels of every sample that annotates ``c``
    (``batch=True``: one Dice per class for the batch). ``K`` are the classes counted: those the
    sample (any sample, with ``batch=True``) annotates, minus background unless
    ``include_background``. The default smooth terms (1e-5) are MONAI's ``DiceLoss`` defaults: they
    avoid 0/0 and give Dice 1 (no loss) only when a class is absent from the target and its
    predicted probability mass is ~0; a class absent from the target but given mass m costs
    ``-log(1e-5 / (m + 1e-5))``, steep because of the log, so prefer ``batch=True`` (or larger
    smooth terms) when crops often miss a class.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        include_background: bool = True,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ):
        super().__init__()
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.include_background = include_background
        self.batch = batch
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled_classes=None) -> torch.Tensor:
        index = _index_target(target, logits)
        labelled = _labelled_mask(labelled_classes, logits)
        _check_target_annotated(index, labelled)
        channels = logits.shape[1]
        q = marginal_log_probs(logits, labelled).exp()
        y = F.one_hot(index, channels).movedim(-1, 1).to(q.dtype)
        spatial = tuple(range(2, logits.ndim))
        intersection = (q * y).sum(spatial)  # (B, C)
        denominator = q.sum(spatial) + y.sum(spatial)
        counted = labelled.clone()
        if not self.include_background:
            counted[:, 0] = False
        weights = _class_weights(self.class_weights, channels, logits)
        if self.batch:
            intersection = (intersection * counted).sum(0)
            denominator = (denominator * counted).sum(0)
            counted = counted.any(0)
        dice = (2.0 * intersection + self.smooth_nr) / (denominator + self.smooth_dr)
        terms = -weights * torch.log(dice) * counted
        if self.batch:
            return terms.sum() / counted.sum().clamp(min=1)
        return (terms.sum(1) / counted.sum(1).clamp(min=1)).mean()


class PartialLabelLoss(nn.Module):
    """``lambda_ce * PartialLabelCrossEntropyLoss + lambda_dice * WeightedLogDiceLoss``.

    ``forward(logits, target, labelled_classes=None)``; the same class weights serve both terms.
    """

    def __init__(
        self,
        mode: str = "fn",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        include_background: bool = True,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ):
        super().__init__()
        self.cross_entropy = PartialLabelCrossEntropyLoss(mode=mode, class_weights=class_weights)
        self.log_dice = WeightedLogDiceLoss(
            class_weights=class_weights,
            include_background=include_background,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )
        self.lambda_ce = lambda_ce
        self.lambda_dice = lambda_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled_classes=None) -> torch.Tensor:
        return self.lambda_ce * self.cross_entropy(logits, target, labelled_classes) + self.lambda_dice * self.log_dice(
            logits, target, labelled_classes
        )
