"""Segmentation metrics per label value, in physical units.

Volumes: integer label maps (X, Y, Z) (numpy, torch or MetaTensor), prediction and reference on
the same grid; ``spacing`` is the voxel size in mm per array axis (taken from a MetaTensor's
affine when not given, else 1 mm). The numbers come from MONAI (``compute_dice``,
``compute_average_surface_distance(symmetric=True)``, ``compute_hausdorff_distance(percentile=95)``),
evaluated on the bounding box of ``pred | ref`` plus one voxel, which MONAI's own edge
extraction also does, so cropping changes speed, not values.

Empty masks, per label (documented so that tables can be read without guessing):

=====================  ======  ================  ===================
case                   dice    asd_mm, hd95_mm   volume_error_pct
=====================  ======  ================  ===================
both empty             nan     nan               nan
reference empty only   0.0     inf               nan (no reference)
prediction empty only  0.0     inf               -100.0
=====================  ======  ================  ===================

``nan`` means "not defined, leave out of means" (``numpy.nanmean``); ``inf`` means "a structure
was missed or invented", which keeps a mean distance honest (inf) instead of silently better.

Photos (2D, several classes): :func:`photo_metrics` gives IoU per class, mIoU and pixel accuracy
from a confusion matrix that can be accumulated over a data set (:class:`ConfusionMatrix`).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from monai.utils import convert_to_numpy

METRIC_KEYS = ("dice", "asd_mm", "hd95_mm", "volume_ref_ml", "volume_pred_ml", "volume_error_pct")


def spacing_of(image, ndim: int | None = None) -> tuple[float, ...] | None:
    """Voxel size (mm per array axis) of a MetaTensor without a channel axis, else None."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    affine = convert_to_numpy(affine)
    ndim = ndim or len(image.shape)
    return tuple(float(v) for v in np.linalg.norm(affine[:ndim, :ndim], axis=0))


@contextlib.contextmanager
def _single_torch_thread():
    """Run MONAI's metric code on one torch thread: its tensors are small crops, and a thread
    pool only adds synchronisation (Dice and volumes of the 61 labels of the TotalSegmentator
    example took 0.7 s on one thread, 9.7 s on two, on our busy 2-core machine)."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def _as_array(image) -> np.ndarray:
    return np.asarray(convert_to_numpy(image))


def _masks(pred, ref, label: int | None) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _as_array(pred), _as_array(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if label is None:
        return pred != 0, ref != 0
    return pred == label, ref == label


def _resolve_spacing(spacing, pred, ref, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        spacing = spacing_of(ref, ndim) or spacing_of(pred, ndim) or (1.0,) * ndim
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,))
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
    return tuple(float(s) for s in spacing)


def _crop_to_union(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    union = pred_mask | ref_mask
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    box = tuple(box)
    return pred_mask[box], ref_mask[box]


def _batched(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()


def _mask_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: tuple[float, ...], distances: bool) -> dict:
    pred_any, ref_any = bool(pred_mask.any()), bool(ref_mask.any())
    if not pred_any and not ref_any:
        return {"dice": float("nan"), "asd_mm": float("nan"), "hd95_mm": float("nan")}
    if not pred_any or not ref_any:
        return {"dice": 0.0, "asd_mm": float("inf"), "hd95_mm": float("inf")}
    pred_crop, ref_crop = _crop_to_union(pred_mask, ref_mask)
    p, r = _batched(pred_crop), _batched(ref_crop)
    out = {"dice": float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])}
    if distances:
        # MONAI 1.6 passes its own deprecated argument internally; the warning is not ours to fix
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            out.update(_distances(p, r, spacing))
    return out


def _distances(p: torch.Tensor, r: torch.Tensor, spacing: tuple[float, ...]) -> dict:
    asd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=list(spacing))
    hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing))
    return {"asd_mm": float(asd[0, 0]), "hd95_mm": float(hd95[0, 0])}


def _volume_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: tuple[float, ...]) -> dict:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ref_ml = float(np.count_nonzero(ref_mask)) * voxel_ml
    pred_ml = float(np.count_nonzero(pred_mask)) * voxel_ml
    error = (pred_ml - ref_ml) / ref_ml * 100.0 if ref_ml > 0 else float("nan")
    return {"volume_ref_ml": ref_ml, "volume_pred_ml": pred_ml, "volume_error_pct": error}


def label_metrics(pred, ref, label: int | None = None, spacing: Sequence[float] | None = None, distances: bool = True) -> dict:
    """All metrics of one label value: a dict with the keys of ``METRIC_KEYS``.

    ``label=None`` treats every non-zero voxel as foreground (binary masks). ``distances=False``
    skips ASD/HD95 (left out of the dict), the slow part on large structures.
    """
    pred_mask, ref_mask = _masks(pred, ref, label)
    spacing = _resolve_spacing(spacing, pred, ref, pred_mask.ndim)
    with _single_torch_thread():
        overlap = _mask_metrics(pred_mask, ref_mask, spacing, distances)
    return {**overlap, **_volume_metrics(pred_mask, ref_mask, spacing)}


def segmentation_metrics(
    pred, ref, labels: Iterable[int] | None = None, spacing: Sequence[float] | None = None, distances: bool = True
) -> dict[int, dict]:
    """:func:`label_metrics` for several label values: ``{value: {metric: number}}``.

    ``labels=None``: every non-zero value found in the prediction or the reference.
    """
    pred_arr, ref_arr = _as_array(pred), _as_array(ref)
    if labels is None:
        labels = sorted((set(np.unique(pred_arr).tolist()) | set(np.unique(ref_arr).tolist())) - {0})
    spacing = _resolve_spacing(spacing, pred, ref, pred_arr.ndim)
    with _single_torch_thread():
        return {int(v): label_metrics(pred_arr, ref_arr, int(v), spacing, distances) for v in labels}


def dice(pred, ref, label: int | None = None) -> float:
    """Dice of one label value (see the module table for empty masks)."""
    pred_mask, ref_mask = _masks(pred, ref, label)
    with _single_torch_thread():
        return _mask_metrics(pred_mask, ref_mask, (1.0,) * pred_mask.ndim, distances=False)["dice"]


def average_surface_distance(pred, ref, label: int | None = None, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (mm): mean over both surfaces' points of the distance
    to the other surface (MONAI ``symmetric=True``)."""
    return label_metrics(pred, ref, label, spacing)["asd_mm"]


def hausdorff95(pred, ref, label: int | None = None, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance (mm): the larger of the two directed 95th percentiles."""
    return label_metrics(pred, ref, label, spacing)["hd95_mm"]


def volume_error_pct(pred, ref, label: int | None = None) -> float:
    """(V_pred - V_ref) / V_ref * 100; nan when the reference is empty (spacing cancels)."""
    pred_mask, ref_mask = _masks(pred, ref, label)
    return _volume_metrics(pred_mask, ref_mask, (1.0,) * pred_mask.ndim)["volume_error_pct"]


def per_slice_dice(pred, ref, label: int | None = None, axis: int = -1) -> np.ndarray:
    """Dice of each slice along ``axis`` (array of length ``shape[axis]``); nan where the slice
    holds the label in neither map, 0 where only one does. Shows where along the limb a model
    fails (Wong et al. report poorer edge slices)."""
    pred_mask, ref_mask = _masks(pred, ref, label)
    p = torch.from_numpy(np.moveaxis(pred_mask, axis, 0).copy())[:, None].float()
    r = torch.from_numpy(np.moveaxis(ref_mask, axis, 0).copy())[:, None].float()
    with warnings.catch_warnings(), _single_torch_thread():
        warnings.simplefilter("ignore")
        values = compute_dice(p, r, include_background=True, ignore_empty=False)[:, 0].numpy().astype(float)
    both_empty = ~(p.flatten(1).any(1) | r.flatten(1).any(1)).numpy()
    values[both_empty] = np.nan
    return values


class ConfusionMatrix:
    """Pixel confusion matrix of class maps, accumulated over images (rows: reference, columns:
    prediction). Pixels whose reference is ``ignore_index`` are left out."""

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, ref) -> "ConfusionMatrix":
        pred, ref = _as_array(pred).astype(np.int64).ravel(), _as_array(ref).astype(np.int64).ravel()
        if pred.shape != ref.shape:
            raise ValueError(f"prediction has {pred.size} pixels, reference {ref.size}")
        keep = np.ones(ref.shape, bool) if self.ignore_index is None else ref != self.ignore_index
        pred, ref = pred[keep], ref[keep]
        for name, values in (("prediction", pred), ("reference", ref)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{name} holds class values outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(ref * self.num_classes + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )
        return self

    def result(self, include_background: bool = True) -> dict:
        """``{"iou": array (C,), "miou": float, "pixel_accuracy": float}``.

        IoU of a class present in neither map is nan and left out of mIoU; a class present in
        only one map has IoU 0. ``include_background=False`` leaves class 0 out of mIoU only.
        """
        true_positive = np.diag(self.matrix).astype(float)
        union = self.matrix.sum(0) + self.matrix.sum(1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
        counted = iou if include_background else iou[1:]
        total = self.matrix.sum()
        return {
            "iou": iou,
            "miou": float(np.nanmean(counted)) if np.isfinite(counted).any() else float("nan"),
            "pixel_accuracy": float(true_positive.sum() / total) if total else float("nan"),
        }


def photo_metrics(pred, ref, num_classes: int, include_background: bool = True, ignore_index: int | None = None) -> dict:
    """IoU per class, mIoU and pixel accuracy of class maps (H, W) or (N, H, W), pooled over all
    pixels (data-set level, as in semantic-segmentation benchmarks). See :class:`ConfusionMatrix`."""
    return ConfusionMatrix(num_classes, ignore_index).update(pred, ref).result(include_background)
