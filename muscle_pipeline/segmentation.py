"""Segment one scan: legs split, left legs mirrored, per-leg model, results back on the scan's grid.

    image (X, Y, Z) on the scanner's grid
      └─ split_legs            one crop per leg (side from world x, never array order)
          └─ MirrorToRight     left legs reflected so every crop is a right leg
              └─ model.predict right-side ontology values on the crop's grid
          └─ MirrorToRight.inverse(labels=True)  un-mirrored, values swapped to LEFT for left legs
      └─ merge_legs            one label map on the input's own grid and affine

The model (a cascade bundle, or any object with ``predict`` and ``structures``) never sees
which side it works on: naming the side is this module's job, from the header's patient axes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from monai.data import MetaTensor

from muscle_pipeline.errors import UnsupportedImageError
from muscle_pipeline import labels as ontology
from muscle_pipeline.profiling import stage as profiled
from muscle_pipeline.transforms.legs import LEG_META_KEY, expand_blocks, leg_axes, segment_per_leg, split_legs
from muscle_pipeline.transforms.region import recognize_side, voting_copy


SIDE_CHECK_SLICES = 32  # evenly spaced slices voting on each leg's side: enough votes, bounded cost
SIDE_CHECK_MM = 1.5  # in-plane grid of the side check: region.slice_features' own working grid


def _side_check_copy(crop, max_slices: int = SIDE_CHECK_SLICES) -> MetaTensor:
    """What the side check measures, as a small copy of a leg crop (``region.voting_copy``): the
    ``max_slices`` evenly spaced slices it votes with (the ones ``region.slice_features`` picks),
    block-averaged in-plane to about ``SIDE_CHECK_MM`` (the blocks ``slice_features`` would
    average), with the crop's leg record (split boundary, joined slices) mapped onto that grid.
    The check's body mask and ownership are then computed on that copy, not on the whole
    full-resolution crop."""
    image = crop.image
    info = image.meta.get(LEG_META_KEY)
    if not isinstance(info, dict):
        return image
    copy, ks, factor = voting_copy(image, max_slices, SIDE_CHECK_MM)
    if copy is image:
        return image
    axes = leg_axes(np.asarray(image.affine, dtype=float))
    shape = list(copy.shape[1:])
    leg = dict(info, roi_start=[0, 0, 0], roi_end=shape,
               # a crop of a (virtual) larger grid, so that the check takes it for one leg's crop
               spatial_shape=[n + (0 if ax == axes.si else 1) for ax, n in enumerate(shape)])
    si_start = int(info["roi_start"][axes.si])
    if info.get("joined") is not None:
        leg["joined"] = [bool(info["joined"][si_start + k]) for k in ks]
    if info.get("boundary") is not None:
        # block c (crop index c * factor + (factor - 1) / 2) is "low" where that index lies below
        # the boundary: the boundary moved from the full grid's index to the block grid's
        start = float(info["roi_start"][int(info["lr_axis"])])
        boundary = np.asarray(info["boundary"], float)[si_start + ks]
        leg["boundary"] = ((boundary - start - (factor - 1) / 2.0) / factor).tolist()
    copy.meta[LEG_META_KEY] = leg
    return copy


def _check_side(crop, warnings: list[str]) -> str | None:
    """Compare the header's side of a leg with what its bones say (fibula lateral to the tibia,
    femur lateral of the thigh's centre); a disagreement becomes a warning in report.json. The
    header still decides: anatomy cannot see a whole scan mirrored, and is undecided at the hip."""
    import warnings as pywarnings

    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            result = recognize_side(_side_check_copy(crop), header_side=crop.side, warn=False,
                                    max_slices=SIDE_CHECK_SLICES)
    except Exception as exc:  # the check is advisory: never fail a case because of it
        warnings.append(f"{crop.side} leg: anatomical side check failed ({type(exc).__name__}: {exc})")
        return None
    if result.agree is False:
        warnings.append(
            f"{crop.side} leg: the header says {crop.side} but the anatomy ({result.evidence.get('rule', 'bones')}) "
            f"looks {result.anatomical}; check the scan's orientation header"
        )
    return result.anatomical


def channel_first(image: MetaTensor) -> MetaTensor:
    """(X, Y, Z) → (1, X, Y, Z) as a new MetaTensor built from the 4D array.

    Not ``image[None]``: MONAI 1.6 caches ``spatial_ndim`` when a MetaTensor is created, and a 3D
    tensor made without ``original_channel_dim`` caches 2 (its first axis taken for a channel);
    indexing keeps that, and later crops then silently skip the affine shift of the last axis.
    """
    if image.ndim == 4:
        return image
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    return MetaTensor(image.as_tensor()[None], affine=image.affine.clone(), meta=meta)


@dataclass
class SegmentationResult:
    labels: MetaTensor  # (X, Y, Z) uint8 ontology values on the input's grid and affine
    legs: list[dict]  # per leg: side, how the side was decided, crop box, volume
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    warnings: list[str] = field(default_factory=list)


def _voxels_by_side(values: np.ndarray) -> dict[str, int]:
    """Labelled voxels per side (the ontology's side of each value; unsided ones count for neither)."""
    # torch counts uint8 as it is; numpy's bincount would first copy the map into int64 (0.8 GB for a 512^2 CT)
    counts = torch.bincount(torch.as_tensor(np.ascontiguousarray(values)).ravel()).numpy()
    out = {"left": 0, "right": 0}
    for value in np.flatnonzero(counts[1:]) + 1:
        side = ontology.label(int(value)).side
        if side in out:
            out[side] += int(counts[value])
    return out


def segment_image(
    image: MetaTensor,
    model,
    side: str | None = None,
    margin_mm: float = 15.0,
    stage: Callable[[str], None] | None = None,
) -> SegmentationResult:
    """Segment ``image`` ((X, Y, Z) or (1, X, Y, Z) MetaTensor, voxel→RAS affine) with ``model``.

    ``side`` is a hint used only when the scan holds a single leg. Returns ontology values with
    left-leg structures on LEFT values, on exactly the input's grid.
    """
    stage = stage or (lambda name: None)
    if not isinstance(image, MetaTensor):
        raise TypeError("segment_image needs a MetaTensor (use muscle_pipeline.io.read_image)")
    img = channel_first(image)
    if img.ndim != 4 or img.shape[0] != 1:
        raise UnsupportedImageError(image.meta.get("filename_or_obj"), f"expected one 3D volume, got shape {tuple(image.shape)}")
    timings: dict[str, float] = {}
    warnings: list[str] = []

    stage("split legs")
    t0 = time.perf_counter()
    body: dict = {}
    with profiled("split_legs"):
        crops = split_legs(img, margin_mm=margin_mm, side=side, body=body)
    timings["split_legs"] = time.perf_counter() - t0
    if not crops:
        raise UnsupportedImageError(image.meta.get("filename_or_obj"), "no body found in the image (is it empty?)")
    if len(crops) == 1 and crops[0].info.get("side_source", "").startswith("world x relative to isocentre"):
        warnings.append(
            f"single leg: side '{crops[0].side}' taken from its position relative to the scanner isocentre; "
            "pass side= if that is wrong"
        )

    stage("check sides")
    t0 = time.perf_counter()
    with profiled("side_check"):
        side_checks = [_check_side(crop, warnings) for crop in crops]
    timings["side_check"] = time.perf_counter() - t0

    legs = []

    def predict(right_looking: MetaTensor):
        leg = right_looking.meta[LEG_META_KEY]
        side = leg.get("mirrored_from") or leg["side"]  # a mirrored left leg looks right by now
        stage(f"segment {side} leg")
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred = model.predict(right_looking)
        timings[f"model_{side}"] = time.perf_counter() - t0
        return torch.as_tensor(np.asarray(pred)).reshape(right_looking.shape[1:])

    for crop, side_check in zip(crops, side_checks):
        legs.append({**{k: crop.info.get(k) for k in ("side", "side_source", "roi_start", "roi_end", "volume_ml",
                                                      "centroid_mm")}, "anatomical_side": side_check})
    t0 = time.perf_counter()
    merged = segment_per_leg(img, predict, crops=crops)
    # mirroring and merging: what the legs took beyond their models
    timings["mirror_merge"] = time.perf_counter() - t0 - sum(v for k, v in timings.items() if k.startswith("model_"))
    # muscle is never in air: labels outside the body outline the legs were split on are a model's
    # spill past the skin (seen on the demo calf and the 3D Dixon calf); they are dropped, and
    # counted per leg
    t0 = time.perf_counter()
    with profiled("body_outline"):
        labels = merged[0].numpy()
        outside = ~expand_blocks(body["mask"], body["factors"], labels.shape) & (labels > 0)
        if outside.any():
            # voxels per label value, all and outside: one histogram each instead of a pass per side
            dropped, kept = _voxels_by_side(labels[outside]), _voxels_by_side(labels)
            for leg_side in ("right", "left"):
                if dropped[leg_side] > 0.01 * max(kept[leg_side], 1):
                    warnings.append(f"{leg_side} leg: {100 * dropped[leg_side] / kept[leg_side]:.0f} % of the "
                                    "labelled voxels lay outside the body and were dropped: check the segmentation")
            labels[outside] = 0
    timings["body_outline"] = time.perf_counter() - t0
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    out = MetaTensor(merged[0].to(torch.uint8), affine=image.affine.clone(), meta=meta)  # labels is its view
    return SegmentationResult(labels=out, legs=legs, timings=timings, warnings=warnings)
