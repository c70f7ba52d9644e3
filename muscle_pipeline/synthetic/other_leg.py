"""A simulated "other leg" of a labelled leg: unseen data to measure generalisation on.

With one labelled leg, in-sample Dice measures memory. The other leg of the same subject differs
from the mirrored first one by anatomy (shape, a slightly different rotation and size) and by
signal (coil sensitivity, noise). :func:`simulate_other_leg` draws such a leg from the labelled
one: a smooth random elastic warp, a small rotation (≤ 3° about x/y, ≤ 8° about the long axis)
and in-plane scaling (±6 %) of image and labels together (MONAI ``RandAffined`` and
``Rand3DElasticd``), then a smooth multiplicative bias field, gamma 0.8–1.25, ±10 % scaling and
Gaussian noise (``RandBiasFieldd`` …). :func:`as_opposite_half` then flips it into the opposite
half of the scan it came from, with LEFT label values, which is what a contralateral leg of a
half-cropped scan looks like.

Used by ``muscle_pipeline.evaluation.evaluate_datalist`` (``simulate_other_leg`` entries: the
declared list of ``bundles/calf_mri/configs/evaluate.json``), ``benchmarks/heldout_proxy.py``
(both methods of the benchmark on legs neither has seen) and the tests (a floor on the shipped
calf model's Dice on one such leg).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import labels as ontology

__all__ = ["simulate_other_leg", "as_opposite_half", "label_overlap"]


def _perturbation(seed: int):
    from monai.transforms import (Compose, Rand3DElasticd, RandAdjustContrastd, RandAffined, RandBiasFieldd,
                                  RandGaussianNoised, RandScaleIntensityd)

    keys = ["image", "label", "body"]
    modes = ("bilinear", "nearest", "nearest")
    chain = Compose([
        RandAffined(keys, prob=1.0, rotate_range=(0.05, 0.05, 0.14), scale_range=(0.06, 0.06, 0.0), mode=modes,
                    padding_mode="border"),
        # sigma and magnitude are in voxels; on a 3 x 3 x 6 mm grid this moves boundaries by a few mm
        Rand3DElasticd(keys, sigma_range=(4, 6), magnitude_range=(40, 80), prob=1.0, mode=modes, padding_mode="border"),
        RandBiasFieldd("image", prob=1.0, coeff_range=(0.1, 0.25), degree=3),
        RandAdjustContrastd("image", prob=1.0, gamma=(0.8, 1.25)),
        RandScaleIntensityd("image", prob=1.0, factors=0.1),
        RandGaussianNoised("image", prob=1.0, std=0.01),
    ])
    chain.set_random_state(seed=seed)
    return chain


def simulate_other_leg(image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A warped, re-contrasted copy of a labelled leg on the same grid.

    Args:
        image: (X, Y, Z) intensities. Voxels that are exactly 0 (a masked scan's background) stay
            0 after the warp, as they would in the other half of that scan (nnU-Net's z-score
            normalisation, for one, uses the non-zero region).
        labels: (X, Y, Z) integer label map (values < 256).
        seed: the random state; the same seed gives the same leg.

    Returns:
        (image float32, labels uint8), both (X, Y, Z).
    """
    from monai.data import get_track_meta, set_track_meta

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or np.shape(labels) != image.shape:
        raise ValueError(f"need (X, Y, Z) image and labels of one shape, got {image.shape} and {np.shape(labels)}")
    # intensities to about [0, 1] so that the noise and bias magnitudes mean the same for any scanner
    lo, hi = np.percentile(image, [0.5, 99.5])
    scale = max(float(hi - lo), 1e-6)
    data = {"image": torch.as_tensor((image - lo) / scale)[None],
            "label": torch.as_tensor(np.asarray(labels, dtype=np.float32))[None],
            "body": torch.as_tensor((image != 0).astype(np.float32))[None]}
    tracking = get_track_meta()
    set_track_meta(False)
    try:
        data = _perturbation(seed)(data)
    finally:
        set_track_meta(tracking)
    warped = np.clip(np.asarray(data["image"][0]) * scale + lo, 0 if image.min() >= 0 else None, None)
    out_image = np.where(np.asarray(data["body"][0]) > 0.5, warped, 0).astype(np.float32)
    out_labels = np.rint(np.asarray(data["label"][0])).astype(np.uint8)
    return out_image, out_labels


def as_opposite_half(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, full_width: int,
                     first_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip a half-scan crop along array x into the scan's other half, labels to the other side.

    ``image``/``labels`` are the crop ``[first_index : first_index + width]`` (array axis 0) of a
    scan ``full_width`` voxels wide, with right-side label values if the crop holds the right leg.
    The flip is about the scan's centre, so the leg lands where the opposite leg would lie, and its
    affine is the one the opposite crop of that scan would have. Right values become left (+100),
    left values right, unsided ones stay (``labels.swap_sides_lut``).

    Returns:
        (image, labels, affine) of the opposite half.
    """
    affine = np.asarray(affine, dtype=float)
    width = image.shape[0]
    opposite_first = full_width - first_index - width
    out_affine = affine.copy()
    out_affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (opposite_first - first_index)
    swapped = ontology.swap_sides_lut()[np.asarray(labels)].astype(np.uint8)
    return (np.ascontiguousarray(np.asarray(image)[::-1]), np.ascontiguousarray(swapped[::-1]), out_affine)


def label_overlap(a: np.ndarray, b: np.ndarray, values) -> dict[int, float]:
    """Dice per value between two label maps on one grid (how far a simulated leg moved)."""
    from ..metrics import dice

    return {int(v): float(dice(a, b, int(v))) for v in values}
