"""Leg split and left→right mirroring (QMRITools ``SegmentData`` style preprocessing).

Bilateral scans are cut into one crop per leg, left legs are mirrored so that every crop looks
like a RIGHT leg (one network then serves both sides), and predictions are put back on the
scanner's grid with left-leg structures carrying LEFT label values.

Conventions (see ``docs``/DESIGN.md): images are channel-first MetaTensors ``(C, X, Y, Z)`` whose
``.affine`` maps voxel index → RAS+ world mm (+x = subject's RIGHT). The array axis "along
left–right" is the one most aligned with world x (``nibabel.orientations.io_orientation``), and
which leg is LEFT is always decided from world x (smaller world x = subject's left), never from
array position, so flipping or permuting the input axes cannot change it.

Single leg in the field of view: its side cannot be told from a second leg, so it comes from the
caller's ``side`` hint, otherwise from the leg's world x relative to the scanner isocentre
(x = 0 mm; a right leg lies at x > 0 in RAS). ``muscle_pipeline.transforms.region.recognize_side``
cross-checks that against anatomy.

Public API::

    crops = split_legs(image)                 # list[LegCrop], left leg first
    crops_lab = split_legs(label, like=crops) # same boxes for a label map
    SplitLegs / SplitLegsd                    # MONAI transforms (one→many, invertible crop)
    MirrorToRight / MirrorToRightd            # invertible: flip left legs + swap L/R label values
    merge_legs(leg_label_maps, original)      # one label map on the original grid
    segment_per_leg(image, predict)           # all of it around a right-leg predictor
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cc3d
import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import BorderPad, InvertibleTransform, MapTransform
from monai.transforms.croppad.functional import crop_func
from monai.utils import TraceKeys
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from muscle_pipeline.labels import swap_sides_lut
from muscle_pipeline.profiling import stage

LEG_META_KEY = "leg"  # MetaTensor.meta entry written by SplitLegs, read by MirrorToRight/merge_legs
SIDES = ("left", "right")


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LegAxes:
    """Which spatial array axis is closest to each world axis, and its direction.

    ``lr``/``ap``/``si`` are spatial axis indices (0..2, channel excluded); ``lr_sign`` is +1 when
    world x (towards the subject's right) grows with the index along ``lr``.
    """

    lr: int
    ap: int
    si: int
    lr_sign: int
    ap_sign: int
    si_sign: int


def leg_axes(affine) -> LegAxes:
    """Array axes aligned with world x (left–right), y (anterior) and z (superior)."""
    affine = np.asarray(_to_numpy(affine), dtype=float)
    ornt = nib.orientations.io_orientation(affine)  # row i: (world axis, sign) of array axis i
    by_world = {int(w): (i, int(s)) for i, (w, s) in enumerate(ornt)}
    (lr, lr_s), (ap, ap_s), (si, si_s) = by_world[0], by_world[1], by_world[2]
    return LegAxes(lr, ap, si, lr_s, ap_s, si_s)


def voxel_spacing(affine) -> np.ndarray:
    """Voxel size in mm along each spatial array axis (column norms of the affine)."""
    affine = np.asarray(_to_numpy(affine), dtype=float)
    return np.linalg.norm(affine[:3, :3], axis=0)


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _spatial_array(image) -> np.ndarray:
    """First channel of a channel-first image as a float32 numpy array (X, Y, Z)."""
    arr = _to_numpy(image)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"expected a channel-first 3D image (C, X, Y, Z), got shape {tuple(arr.shape)}")
    return arr.astype(np.float32, copy=False)


def _require_affine(image) -> np.ndarray:
    if not isinstance(image, MetaTensor):
        raise TypeError("the leg split needs a MetaTensor with an affine (load it with monai LoadImage)")
    return np.asarray(_to_numpy(image.affine), dtype=float)


# --------------------------------------------------------------------------------------------
# body mask
# --------------------------------------------------------------------------------------------
def _inplane_structure(spacing: np.ndarray, si: int, radius_mm: float) -> np.ndarray:
    """An ellipse of ``radius_mm`` in the axial plane, one voxel thick along ``si``."""
    radii = [0 if ax == si else max(1, int(round(radius_mm / spacing[ax]))) for ax in range(3)]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist = sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radii))
    return dist <= 1.0


def body_threshold(array: np.ndarray) -> float:
    """Foreground/background threshold for MR or CT: Otsu on log intensities.

    Plain Otsu on MR splits muscle from fat (it drops dark fat in water images and most of a
    fat image); on the log scale the dominant split is air vs. tissue for MR and CT alike
    (measured: ≈ -690 HU on CT, 4–14 on the MR scans in shared/data).
    """
    lo, hi = float(array.min()), float(array.max())
    top = float(np.log1p(np.float32(hi) - np.float32(lo)))
    if top <= 0:
        return lo
    # skimage's own 256-bin histogram of the log image, accumulated in slabs: the same threshold as
    # threshold_otsu(np.log1p(array - lo)) without two full-size float copies (2.5 GB on a
    # 512x512x1200 CT).
    counts = np.zeros(256, np.int64)
    # slabs along the last axis: no flattening, which would copy a non-contiguous view (leg crops)
    step = max(1, (1 << 24) // max(1, array.size // array.shape[-1]))
    for start in range(0, array.shape[-1], step):
        chunk = np.log1p(array[..., start:start + step] - np.float32(lo))
        counts += np.histogram(chunk, bins=256, range=(0.0, top))[0]
    edges = np.linspace(0.0, top, 257)
    centres = (edges[:-1] + edges[1:]) / 2
    return float(np.expm1(threshold_otsu(hist=(counts, centres))) + lo)


def body_mask(
    image,
    affine=None,
    threshold: float | None = None,
    closing_mm: float = 5.0,
    min_component_fraction: float = 0.1,
    working_mm: float = 2.0,
) -> np.ndarray:
    """Boolean body mask (X, Y, Z) of a channel-first image: threshold, in-plane closing, per-slice
    hole filling, and only components of at least ``min_component_fraction`` of the largest, both
    in 3D (drops noise) and per axial slice (drops hands/arms next to the thighs).

    Computed on an in-plane grid no finer than ``working_mm`` (block means) and expanded back:
    a body outline needs no sub-millimetre detail, and morphology on 0.8 mm grids is slow.
    """
    arr = _spatial_array(image)
    affine = _require_affine(image) if affine is None else np.asarray(_to_numpy(affine), dtype=float)
    mask, factors = _working_body_mask(arr, affine, threshold, closing_mm, min_component_fraction, working_mm)
    return expand_blocks(mask, factors, arr.shape)


def expand_blocks(mask: np.ndarray, factors, shape) -> np.ndarray:
    """A mask on a grid of ``factors``-voxel blocks back on the full grid of ``shape`` (each block
    repeated; the last block of an axis may be partial)."""
    if all(f == 1 for f in factors):
        return mask
    for ax, f in enumerate(factors):
        mask = np.repeat(mask, f, axis=ax)
    return np.ascontiguousarray(mask[: shape[0], : shape[1], : shape[2]])


def _working_body_mask(arr, affine, threshold, closing_mm=5.0, min_component_fraction=0.1, working_mm=2.0):
    """:func:`body_mask` on its working grid: (mask, in-plane block factors). Voxel ``v`` of the
    full grid lies in block ``v // factors`` (the last block of an axis may be partial)."""
    axes = leg_axes(affine)
    spacing = voxel_spacing(affine)
    thr = body_threshold(arr) if threshold is None else float(threshold)
    factors = [1 if ax == axes.si else max(1, int(round(working_mm / spacing[ax]))) for ax in range(3)]
    if any(f > 1 for f in factors):
        # block means slab by slab along the superior-inferior axis (never coarsened): no padded
        # full-size copy of the volume
        step = max(1, (1 << 24) // max(1, arr.size // arr.shape[axes.si]))
        slabs = []
        for k in range(0, arr.shape[axes.si], step):
            index = [slice(None)] * 3
            index[axes.si] = slice(k, k + step)
            part = arr[tuple(index)]
            padded = np.pad(part, [(0, (-n) % f) for n, f in zip(part.shape, factors)], mode="edge")
            slabs.append(padded.reshape(
                [d for n, f in zip(padded.shape, factors) for d in (n // f, f)]).mean(axis=(1, 3, 5)))
        coarse = np.concatenate(slabs, axis=axes.si)
        return _body_mask_array(coarse, spacing * factors, axes, thr, closing_mm, min_component_fraction), factors
    return _body_mask_array(arr, spacing, axes, thr, closing_mm, min_component_fraction), factors


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """First and last index per axis, centroid (voxels) and count of a non-empty boolean mask,
    from per-axis projections: ``np.argwhere`` would hold 24 bytes per foreground voxel (2 GB for
    a body in a 512x512x1200 CT)."""
    first, last, centroid = [], [], []
    count = 0
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        profile = np.count_nonzero(mask, axis=others)
        present = np.flatnonzero(profile)
        first.append(present[0])
        last.append(present[-1])
        count = int(profile.sum())
        centroid.append(float(np.dot(profile, np.arange(profile.size, dtype=np.float64))) / count)
    return np.asarray(first), np.asarray(last), np.asarray(centroid), count


def _body_mask_array(arr, spacing, axes, thr, closing_mm, min_component_fraction) -> np.ndarray:
    full = arr > thr
    if not full.any():
        return full
    # morphology only on the bounding box of the foreground (often a third of the field of view)
    lo, last, _, _ = _extent(full)
    box = tuple(slice(a, b + 1) for a, b in zip(lo, last))
    out = np.zeros_like(full)
    out[box] = _body_mask_box(full[box], spacing, axes, closing_mm, min_component_fraction)
    return out


def _body_mask_box(mask, spacing, axes, closing_mm, min_component_fraction) -> np.ndarray:
    # Closing bridges the dark fat/fascia gaps of fat-suppressed images; in-plane only, since
    # slices may be 6–20 mm apart. No opening: on coarse grids it breaks the thin subcutaneous
    # fat ring, and noise specks and the CT table go with the component filter below.
    radius = _inplane_structure(spacing, axes.si, closing_mm)
    pad = [(0, 0) if ax == axes.si else (radius.shape[ax],) * 2 for ax in range(3)]
    mask = ndi.binary_closing(np.pad(mask, pad), structure=radius)
    mask = mask[tuple(slice(p[0], mask.shape[ax] - p[1]) for ax, p in enumerate(pad))]
    inplane = np.zeros((3, 3, 3), bool)
    inplane[tuple(1 if ax == axes.si else slice(None) for ax in range(3))] = True
    mask = ndi.binary_fill_holes(mask, structure=inplane)  # per slice: no links across slices

    labels3d = cc3d.connected_components(mask, connectivity=26)
    counts = np.bincount(labels3d.ravel())
    counts[0] = 0
    if counts.max() == 0:
        return mask
    mask = np.isin(labels3d, np.flatnonzero(counts >= min_component_fraction * counts.max()))

    labels2d, n2d = ndi.label(mask, structure=inplane)
    if n2d:
        areas = np.bincount(labels2d.ravel())
        slice_of = np.zeros(n2d + 1, dtype=int)
        for lab, sl in enumerate(ndi.find_objects(labels2d), start=1):
            slice_of[lab] = sl[axes.si].start
        largest = np.zeros(mask.shape[axes.si], dtype=np.int64)
        np.maximum.at(largest, slice_of[1:], areas[1:])
        keep = np.zeros(n2d + 1, bool)
        keep[1:] = areas[1:] >= min_component_fraction * largest[slice_of[1:]]
        mask = keep[labels2d]
    return mask


# --------------------------------------------------------------------------------------------
# split geometry
# --------------------------------------------------------------------------------------------
@dataclass
class LegSplit:
    """Where a bilateral body is cut: per axial slice, a boundary along the left–right array axis.

    Voxel ``v`` belongs to the "low" part if ``v[lr] < boundary[v[si]]`` and to "high" otherwise.
    ``separate`` flags slices where the legs were two distinct blobs (the boundary sits in the gap).
    """

    n_legs: int
    axes: LegAxes
    boundary: np.ndarray | None  # float, one per index along si; None for a single leg
    separate: np.ndarray  # bool per si index
    method: str  # "components", "midline" or "single"
    valley: np.ndarray | None = None  # per si index: profile valley ratio (1 = none, nan = no body)
    dip_ratio: float = 0.8  # valley ratio at or below which two touching legs are assumed

    @property
    def joined(self) -> np.ndarray:
        """Slices where a bilateral body is one blob without a valley between the legs (pelvis,
        trunk); False for a single leg."""
        if self.n_legs == 1 or self.valley is None:
            return np.zeros_like(self.separate)
        return ~self.separate & np.isfinite(self.valley) & (np.nan_to_num(self.valley, nan=0.0) > self.dip_ratio)


def _fill_nan_nearest(values: np.ndarray) -> np.ndarray:
    good = np.flatnonzero(np.isfinite(values))
    if good.size == 0:
        return values
    idx = np.arange(values.size)
    nearest = good[np.abs(idx[:, None] - good[None, :]).argmin(axis=1)]
    return values[nearest]


def _profile_dip(profile: np.ndarray, min_lobe: int, central: float = 0.2) -> tuple[float, int]:
    """Deepest valley of a column profile between two lobes at least ``min_lobe`` wide.

    Only the central part of the body is searched (from ``central`` to ``1 - central`` of its
    left–right extent): two legs meet near the middle, while a notch near one edge is a bone
    or drop-out next to the skin. Returns ``(ratio, index)``: the profile at the valley divided
    by the lower of the two peaks on either side (1.0 when there is no valley, e.g. one leg or a
    trunk; ≈ 0.3–0.6 where two legs touch). ``index`` is the valley position.
    """
    cols = np.flatnonzero(profile > 0)
    if cols.size < 2 * min_lobe + 1:
        return 1.0, -1
    extent = cols[-1] - cols[0]
    lo = max(cols[0] + min_lobe, cols[0] + int(math.ceil(central * extent)))
    hi = min(cols[-1] - min_lobe, cols[-1] - int(math.ceil(central * extent)))
    if hi < lo:
        return 1.0, -1
    p = ndi.uniform_filter1d(profile.astype(float), size=3)
    left_peak = np.maximum.accumulate(p)
    right_peak = np.maximum.accumulate(p[::-1])[::-1]
    ratio = p[lo : hi + 1] / np.maximum(np.minimum(left_peak[lo : hi + 1], right_peak[lo : hi + 1]), 1e-9)
    j = int(ratio.argmin())
    return float(ratio[j]), lo + j


def _cut_beside(profile: np.ndarray, j: int) -> float:
    """A cut at valley column ``j``: the middle of the run of minimal columns around ``j`` (so a
    flat valley is cut in its centre whichever way the array runs), moved off a column centre
    towards the lower wall (a cut through a column centre would be a tie)."""
    p = ndi.uniform_filter1d(profile.astype(float), size=3)
    floor = p[j] + 1e-6
    j1, j2 = j, j
    while j1 > 0 and p[j1 - 1] <= floor:
        j1 -= 1
    while j2 + 1 < p.size and p[j2 + 1] <= floor:
        j2 += 1
    cut = (j1 + j2) / 2.0
    if cut == int(cut):
        before = p[j1 - 1] if j1 > 0 else np.inf
        after = p[j2 + 1] if j2 + 1 < p.size else np.inf
        cut += -0.5 if before < after else 0.5
    return cut


def find_split(
    mask: np.ndarray,
    affine,
    n_legs: int | None = None,
    max_single_leg_width_mm: float = 260.0,
    min_leg_fraction: float = 0.15,
    dip_ratio: float = 0.8,
    min_leg_width_mm: float = 40.0,
    ap_weights: np.ndarray | None = None,
) -> LegSplit:
    """Decide one or two legs and where to cut them (per axial slice) from a body mask.

    Slices with two large, left–right disjoint blobs are cut in the middle of the gap. Where
    the legs touch or join the pelvis, the cut is the deepest valley of the column profile (body
    voxels per left–right position) — between the two leg centres carried over from the nearest
    slice where they were apart, when there is one — if the valley is real (≤ ``dip_ratio`` of
    the lower neighbouring peak); otherwise (pelvis, trunk) the body's own centroid. The cut is
    median-filtered along z. Two legs are assumed when any slice shows them apart, when the body
    is wider than ``max_single_leg_width_mm``, or when most slices show a valley (legs pressed
    together); ``n_legs`` overrides.

    ``ap_weights``: full-grid voxels that each index along the anterior–posterior axis of
    ``mask`` stands for, when ``mask`` is coarsened along that axis only (``plan_legs`` passes
    its working-grid body mask expanded back along left–right only): column profiles, blob areas
    and centres are then weighted, so the split equals the one of the full-resolution mask.
    """
    affine = np.asarray(_to_numpy(affine), dtype=float)
    axes = leg_axes(affine)
    spacing = voxel_spacing(affine)
    canon = np.transpose(mask, (axes.lr, axes.ap, axes.si))  # (lr, ap, si) view, no copy
    n_lr, n_ap, n_si = canon.shape
    weights = np.ones(n_ap) if ap_weights is None else np.asarray(ap_weights, float)
    if weights.shape != (n_ap,):
        raise ValueError(f"ap_weights needs one weight per anterior-posterior index ({n_ap}), got {weights.shape}")
    lr_index = np.arange(n_lr, dtype=np.float64)
    min_lobe = max(1, int(round(min_leg_width_mm / 2 / spacing[axes.lr])))
    separate = np.zeros(n_si, bool)
    boundary = np.full(n_si, np.nan)
    centres = np.full((n_si, 2), np.nan)
    dips = np.full(n_si, np.nan)
    dip_at = np.full(n_si, -1)
    widths = []
    body_slices = []
    for k in range(n_si):
        sl = canon[:, :, k]
        if not sl.any():
            continue
        body_slices.append(k)
        profile = sl @ weights  # full-grid body voxels per left-right column
        cols = np.flatnonzero(profile)
        widths.append((cols[-1] - cols[0] + 1) * spacing[axes.lr])
        dips[k], dip_at[k] = _profile_dip(profile, min_lobe)
        lab, n = ndi.label(sl)
        if n < 2:
            continue
        areas = np.bincount(lab.ravel(), weights=np.broadcast_to(weights, sl.shape).ravel())[1:]
        order = np.argsort(areas)[::-1][:2]
        if areas[order[1]] < min_leg_fraction * areas.sum():
            continue
        extents = []
        for comp in order:
            per_column = (lab == comp + 1) @ weights
            c = np.flatnonzero(per_column)
            extents.append((c[0], c[-1], float(per_column @ lr_index / per_column.sum())))
        (lo1, hi1, c1), (lo2, hi2, c2) = sorted(extents)
        if hi1 < lo2:  # disjoint along left–right: two legs apart in this slice
            separate[k] = True
            boundary[k] = (hi1 + lo2) / 2.0  # middle of the gap (continuous index)
            centres[k] = (c1, c2)

    # A slice counts as "legs apart" only if its gap agrees with its neighbours: fragmented
    # slices (toes, a coil drop-out) can show two blobs of ONE foot.
    sep_idx = np.flatnonzero(separate)
    if sep_idx.size >= 3:
        consensus = ndi.median_filter(boundary[sep_idx], size=min(7, sep_idx.size), mode="nearest")
        tolerance = 10.0 / spacing[axes.lr]
        for k, ref in zip(sep_idx, consensus):
            cols = np.flatnonzero(canon[:, :, k].any(axis=1))
            left_edge = cols[cols < boundary[k]].max()
            right_edge = cols[cols > boundary[k]].min()
            if not (left_edge - tolerance <= ref <= right_edge + tolerance):
                separate[k] = False
                boundary[k] = np.nan
                centres[k] = np.nan
        sep_idx = np.flatnonzero(separate)

    if n_legs is None:
        wide = bool(widths) and float(np.median(widths)) > max_single_leg_width_mm
        valley = bool(body_slices) and float(np.nanmedian(dips[body_slices])) <= dip_ratio
        n_legs = 2 if (sep_idx.size or wide or valley) else 1
    if n_legs == 1 or not body_slices:
        return LegSplit(1, axes, None, separate, "single", dips, dip_ratio)

    for k in body_slices:
        if separate[k]:
            continue
        profile = (canon[:, :, k] @ weights).astype(float)
        boundary[k] = float((profile * np.arange(n_lr)).sum() / profile.sum())  # centroid
        if sep_idx.size:
            # search the valley only between the leg centres seen where the legs were apart
            c1, c2 = centres[sep_idx[np.abs(sep_idx - k).argmin()]]
            lo, hi = int(round(c1)), int(round(c2))
            if hi - lo >= 3:
                window = profile.copy()
                window[:lo] = 0
                window[hi + 1 :] = 0
                ratio, j = _profile_dip(window, 1, central=0.0)
                if ratio <= dip_ratio:
                    boundary[k] = _cut_beside(profile, j)
        elif dips[k] <= dip_ratio:
            boundary[k] = _cut_beside(profile, dip_at[k])
    # Smooth the cut along z (a noisy slice must not jump), but keep it inside real gaps.
    valid = np.flatnonzero(np.isfinite(boundary))
    smoothed = boundary.copy()
    smoothed[valid] = ndi.median_filter(boundary[valid], size=5, mode="nearest")
    for k in sep_idx:
        cols = np.flatnonzero(canon[:, :, k].any(axis=1))
        gap_lo = cols[cols < boundary[k]].max() + 0.5
        gap_hi = cols[cols > boundary[k]].min() - 0.5
        smoothed[k] = float(np.clip(smoothed[k], gap_lo, gap_hi))
    boundary = _fill_nan_nearest(smoothed)
    method = "components" if sep_idx.size == len(body_slices) else "midline"
    return LegSplit(2, axes, boundary, separate, method, dips, dip_ratio)


def owned_mask(info: Mapping, full: bool = False) -> np.ndarray:
    """Boolean mask of the voxels a leg owns, on its crop (default) or on the original grid.

    Every voxel of the original grid is owned by exactly one leg, so pasting each leg's result
    through its owned mask never double-writes (crops overlap by their margins).
    """
    shape = tuple(int(s) for s in info["spatial_shape"])
    start = np.asarray(info["roi_start"], dtype=int)
    end = np.asarray(info["roi_end"], dtype=int)
    if not full:
        region = tuple(slice(s, e) for s, e in zip(start, end))
    else:
        region = tuple(slice(0, s) for s in shape)
    if info["part"] == "all":
        return np.ones(tuple(r.stop - r.start for r in region), bool)
    lr, si = int(info["lr_axis"]), int(info["si_axis"])
    boundary = np.asarray(info["boundary"], dtype=float)
    lr_idx = np.arange(region[lr].start, region[lr].stop, dtype=float)
    bnd = boundary[region[si].start : region[si].stop]
    shape_b = [1, 1, 1]
    shape_b[lr] = lr_idx.size
    shape_s = [1, 1, 1]
    shape_s[si] = bnd.size
    low = lr_idx.reshape(shape_b) < bnd.reshape(shape_s)
    own = low if info["part"] == "low" else ~low
    return np.broadcast_to(own, tuple(r.stop - r.start for r in region)).copy()


@dataclass
class LegCrop:
    """One leg cut out of a scan: ``image`` is the cropped MetaTensor (affine updated); ``info`` is
    ``image.meta['leg']`` (side, crop box in the original grid, split boundary, statistics)."""

    image: MetaTensor
    side: str
    info: dict = field(repr=False)

    @property
    def roi(self) -> tuple[slice, ...]:
        return tuple(slice(s, e) for s, e in zip(self.info["roi_start"], self.info["roi_end"]))


def split_on_working_grid(arr: np.ndarray, affine, threshold: float | None = None,
                          n_legs: int | None = None) -> tuple[np.ndarray, np.ndarray, LegSplit]:
    """:func:`find_split` of :func:`body_mask` without a full-resolution mask: the split is found
    on the body mask's working grid (in-plane blocks of ~2 mm) expanded back along left-right only
    (where the cut lies), its rows weighted along anterior-posterior by the full voxels they stand
    for (``ap_weights``), which gives the full-resolution mask's split.

    ``arr``: (X, Y, Z) intensities. Returns ``(mask, factors, split)``: the body mask on the full
    grid along left-right and superior-inferior and in blocks of ``factors[ap]`` voxels along
    anterior-posterior (``factors``: 1 along the other two; :func:`expand_blocks` gives the
    full-resolution mask), and the split (boundaries in full-grid left-right indices)."""
    affine = np.asarray(_to_numpy(affine), dtype=float)
    shape = tuple(arr.shape)
    coarse, factors = _working_body_mask(arr, affine, threshold)
    axes = leg_axes(affine)
    if factors[axes.lr] > 1:
        coarse = np.repeat(coarse, factors[axes.lr], axis=axes.lr)[
            tuple(slice(0, shape[ax]) if ax == axes.lr else slice(None) for ax in range(3))]
    factors = np.asarray(factors)
    factors[axes.lr] = 1
    f_ap = int(factors[axes.ap])
    ap_weights = np.minimum(f_ap, shape[axes.ap] - np.arange(coarse.shape[axes.ap]) * f_ap)
    coarse_affine = affine.copy()
    coarse_affine[:3, axes.ap] *= f_ap
    coarse_affine[:3, 3] += affine[:3, axes.ap] * (f_ap - 1) / 2.0  # a block's centre
    return coarse, factors, find_split(coarse, coarse_affine, n_legs=n_legs, ap_weights=ap_weights)


def plan_legs(
    image,
    margin_mm: float = 10.0,
    side: str | None = None,
    n_legs: int | None = None,
    threshold: float | None = None,
    body: dict | None = None,
) -> list[dict]:
    """Compute the leg crops of ``image`` without cropping: one info dict per leg, left first.

    ``margin_mm`` widens the box in-plane; along superior–inferior every slice is kept.
    ``side`` is only used for a single leg (see module docstring). Each dict holds ``side``,
    ``part`` ("low"/"high"/"all"), ``roi_start``/``roi_end`` (original voxel indices),
    ``boundary`` (the split per slice along si), axes, ``spatial_shape``, ``volume_ml`` and
    ``centroid_mm`` (world RAS) of the leg's body voxels, ``side_source``, and ``joined`` (per
    slice: the body was one blob without a valley between the legs, i.e. pelvis or trunk).
    ``body``: a dict that receives the body mask the split was planned on (``"mask"``, on the
    working grid, and ``"factors"``: :func:`expand_blocks` puts it on the full grid), for callers
    that need the body outline too without computing it again.
    """
    if side is not None and side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    affine = _require_affine(image)
    arr = _spatial_array(image)
    shape = tuple(arr.shape)
    # The split is planned on the body mask's own working grid (in-plane blocks of ~2 mm), never
    # on a full-resolution copy of it; the boundaries, boxes, volumes and centroids are still those
    # of the full-resolution mask (see find_split's ap_weights and _owned_extent).
    coarse, factors, split = split_on_working_grid(arr, affine, threshold, n_legs)
    if body is not None:
        body.update(mask=coarse, factors=tuple(int(f) for f in factors))
    boundary = split.boundary
    spacing = voxel_spacing(affine)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    margin = np.ceil(margin_mm / spacing).astype(int)
    base = {
        "lr_axis": split.axes.lr,
        "si_axis": split.axes.si,
        "spatial_shape": list(shape),
        "boundary": None if boundary is None else boundary.tolist(),
        "n_legs": split.n_legs,
        "split_method": split.method,
        # per slice along si: a bilateral body without a valley (pelvis/trunk) — region.py's hip cue
        "joined": split.joined.tolist(),
    }
    parts = ["all"] if split.n_legs == 1 else ["low", "high"]
    legs = []
    stats: dict = {}
    for part in parts:
        info = dict(base, part=part, roi_start=[0, 0, 0], roi_end=list(shape))
        extent = _owned_extent(coarse, factors, shape, split.axes, boundary, part, stats)
        if extent is None:
            continue
        first, last, centroid_vox, count = extent
        lo = np.maximum(first - margin, 0)
        hi = np.minimum(last + 1 + margin, shape)
        # Keep every slice along superior–inferior: a leg runs through the field of view, and a
        # signal drop-out at an end slice must not cut it off.
        lo[split.axes.si], hi[split.axes.si] = 0, shape[split.axes.si]
        centroid_mm = affine[:3, :3] @ centroid_vox + affine[:3, 3]
        info.update(
            roi_start=lo.tolist(),
            roi_end=hi.tolist(),
            volume_ml=count * voxel_ml,
            centroid_mm=centroid_mm.tolist(),
        )
        legs.append(info)
    if len(legs) == 2:
        # Side from world x (RAS: the subject's left leg has the smaller x), not array order.
        legs.sort(key=lambda leg: leg["centroid_mm"][0])
        legs[0].update(side="left", side_source="world x relative to the other leg")
        legs[1].update(side="right", side_source="world x relative to the other leg")
    elif len(legs) == 1:
        if side is not None:
            legs[0].update(side=side, side_source="caller")
        else:
            x = legs[0]["centroid_mm"][0]
            legs[0].update(side="right" if x > 0 else "left", side_source="world x relative to isocentre x=0")
    return legs


def _ap_statistics(body: np.ndarray, w_ap: np.ndarray, a0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_lr, n_ap, n_si = body.shape
    weights = np.stack([w_ap, w_ap * a0 + w_ap * (w_ap - 1) / 2.0], axis=1).astype(np.float32)
    rows = np.ascontiguousarray(np.moveaxis(body, 1, 2)).reshape(-1, n_ap).astype(np.float32)
    out = (rows @ weights).astype(np.float64).reshape(n_lr, n_si, 2)
    return out[..., 0], out[..., 1]


def _owned_extent(coarse: np.ndarray, factors, shape, axes: LegAxes, boundary, part: str, stats=None):
    """First/last full-grid index per axis, centroid (full voxels) and voxel count of the body
    voxels a leg owns, i.e. of ``owned_mask(..., full=True) & body_mask(...)`` on the full grid,
    computed from the working-grid mask ``coarse`` (each block stands for its full voxels; the
    last block of an axis may be partial) without building that full-size mask. None if empty."""
    lr, ap, si = axes.lr, axes.ap, axes.si
    body = np.transpose(coarse, (lr, ap, si))  # (lr blocks, ap blocks, slices), a view
    f_lr, f_ap = int(factors[lr]), int(factors[ap])
    n_lr, n_ap, n_si = shape[lr], shape[ap], shape[si]
    c0 = np.arange(body.shape[0]) * f_lr  # first full index of each lr block
    w_lr = np.minimum(f_lr, n_lr - c0)  # full voxels in each lr block
    a0 = np.arange(body.shape[1]) * f_ap
    w_ap = np.minimum(f_ap, n_ap - a0)
    if part == "all":
        own_from = np.broadcast_to(c0[:, None], (c0.size, n_si))
        own_n = np.broadcast_to(w_lr[:, None], (c0.size, n_si))
    else:
        # full index i of slice k is "low" when i < boundary[k], i.e. i <= ceil(boundary[k]) - 1
        n_low = np.clip(np.ceil(np.asarray(boundary, float))[None, :] - c0[:, None], 0, w_lr[:, None]).astype(np.int64)
        own_from = np.broadcast_to(c0[:, None] + (0 if part == "low" else n_low), n_low.shape)
        own_n = n_low if part == "low" else w_lr[:, None] - n_low
    # per (lr block, slice): full voxels with body along ap, and the sum of their ap indices (one
    # float32 matrix product; exact: integer sums far below 2**24)
    stats = {} if stats is None else stats  # shared by the legs of one plan
    if "ap" not in stats:
        stats["ap"] = _ap_statistics(body, w_ap, a0)
    ap_count, ap_sum = stats["ap"]
    present = (ap_count > 0) & (own_n > 0)
    if not present.any():
        return None
    count = float((ap_count * own_n).sum())
    lr_sum = own_n * own_from + own_n * (own_n - 1) / 2.0  # sum of the owned lr indices per block
    centroid = np.empty(3)
    centroid[lr] = (ap_count * lr_sum).sum() / count
    centroid[ap] = (ap_sum * own_n).sum() / count
    centroid[si] = ((ap_count * own_n).sum(axis=0) * np.arange(n_si)).sum() / count
    first, last = np.empty(3, int), np.empty(3, int)
    first[lr] = int(own_from[present].min())
    last[lr] = int((own_from + own_n - 1)[present].max())
    ap_blocks = np.flatnonzero((body & present[:, None, :]).any(axis=(0, 2)))
    first[ap], last[ap] = int(a0[ap_blocks[0]]), int(a0[ap_blocks[-1]] + w_ap[ap_blocks[-1]] - 1)
    slices = np.flatnonzero(present.any(axis=0))
    first[si], last[si] = int(slices[0]), int(slices[-1])
    return first, last, centroid, int(round(count))


class SplitLegs(InvertibleTransform):
    """Cut a channel-first MetaTensor ``(C, X, Y, Z)`` into one crop per leg (left leg first).

    Returns a list of MetaTensors (like MONAI's crop-samples transforms); each has its affine
    updated, ``meta['leg']`` (see :func:`plan_legs`), and an invertible crop record, so
    ``inverse`` pads a crop (or a prediction carrying its ``applied_operations``) back onto the
    original grid. ``margin_mm``: context kept around each leg; ``side``: hint for a single leg.
    Pass ``legs=`` (the info dicts of an earlier split) to cut another image (a label map) the
    same way.
    """

    def __init__(self, margin_mm: float = 10.0, side: str | None = None, n_legs: int | None = None,
                 threshold: float | None = None) -> None:
        self.margin_mm = margin_mm
        self.side = side
        self.n_legs = n_legs
        self.threshold = threshold

    def plan(self, img) -> list[dict]:
        return plan_legs(img, self.margin_mm, self.side, self.n_legs, self.threshold)

    def __call__(self, img: torch.Tensor, legs: Sequence[Mapping] | None = None) -> list[MetaTensor]:
        if not isinstance(img, MetaTensor):
            raise TypeError("SplitLegs needs a MetaTensor with an affine")
        legs = self.plan(img) if legs is None else legs
        out = []
        for info in legs:
            if list(info["spatial_shape"]) != list(img.shape[1:]):
                raise ValueError(f"leg plan is for shape {info['spatial_shape']}, image is {tuple(img.shape[1:])}")
            slices = (slice(None),) + tuple(slice(s, e) for s, e in zip(info["roi_start"], info["roi_end"]))
            crop = crop_func(img, slices, lazy=False, transform_info=self.get_transform_info())
            crop.meta[LEG_META_KEY] = dict(info)
            out.append(crop)
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        pad = BorderPad(transform[TraceKeys.EXTRA_INFO]["cropped"])
        with pad.trace_transform(False):
            return pad(data)


class SplitLegsd(MapTransform, InvertibleTransform):
    """Dictionary twin of :class:`SplitLegs`: the split is planned on ``source_key`` (default the
    first key) and applied to all ``keys``; returns one dict per leg, with ``leg_side`` added."""

    def __init__(self, keys: KeysCollection, source_key: str | None = None, margin_mm: float = 10.0,
                 side: str | None = None, n_legs: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key or self.keys[0]
        self.splitter = SplitLegs(margin_mm=margin_mm, side=side, n_legs=n_legs)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict]:
        legs = self.splitter.plan(data[self.source_key])
        samples = [dict(data) for _ in legs]
        for key in self.key_iterator(dict(data)):
            for sample, crop in zip(samples, self.splitter(data[key], legs=legs)):
                sample[key] = crop
        for sample, info in zip(samples, legs):
            sample["leg_side"] = info["side"]
        return samples

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.splitter.inverse(d[key])
        return d


def split_legs(image: MetaTensor, margin_mm: float = 10.0, side: str | None = None,
               n_legs: int | None = None, like: Sequence[LegCrop] | None = None,
               threshold: float | None = None, body: dict | None = None) -> list[LegCrop]:
    """Split ``image`` into legs (left first). ``like``: reuse the crops of an earlier split (for a
    label map on the same grid). ``threshold``: body = image above it (None: found from the
    intensities; 0.5 for a label map). ``body``: receives the body mask (see :func:`plan_legs`)."""
    splitter = SplitLegs(margin_mm=margin_mm, side=side, n_legs=n_legs, threshold=threshold)
    legs = None if like is None else [c.info for c in like]
    if legs is None and body is not None:
        legs = plan_legs(image, margin_mm, side, n_legs, threshold, body=body)
    crops = splitter(image, legs=legs)
    return [LegCrop(c, c.meta[LEG_META_KEY]["side"], c.meta[LEG_META_KEY]) for c in crops]


def right_looking_legs(image: MetaTensor, label: MetaTensor, sides: Sequence[str] | None = None,
                       margin_mm: float = 15.0, threshold: float | None = None) -> list[dict]:
    """The training twin of :func:`segment_per_leg`: cut a scan and its ontology label map into
    legs exactly as inference does, left legs mirrored with their label values swapped to the
    right side, so a network trains on the crops it will be given.

    ``image``/``label``: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` MetaTensors on one grid (``image`` may be
    the label map itself, a scene to synthesise from: then give ``threshold=0.5``). Returns
    ``[{"image": (1, ...), "label": (1, ...), "side": ...}]`` for the legs in ``sides`` (default
    both), left first.
    """
    image = image if image.ndim == 4 else image[None]
    label = label if label.ndim == 4 else label[None]
    crops = split_legs(image, margin_mm=margin_mm, threshold=threshold)
    label_crops = split_legs(label, like=crops)
    out = []
    for crop, label_crop in zip(crops, label_crops):
        if sides is not None and crop.side not in sides:
            continue
        out.append({"image": MirrorToRight()(crop.image, side=crop.side),
                    "label": MirrorToRight(labels=True)(label_crop.image, side=crop.side),
                    "side": crop.side})
    return out


def merge_legs(leg_label_maps: Sequence, original: MetaTensor, legs: Sequence[Mapping] | None = None) -> MetaTensor:
    """Paste per-leg label maps back into one label map on ``original``'s grid.

    ``leg_label_maps``: MetaTensors/arrays/LegCrops, each either crop-sized or already padded back
    to the full grid (``SplitLegs.inverse``); their leg info comes from ``legs`` or from each
    map's ``meta['leg']``. Each leg writes only the voxels it owns (see :func:`owned_mask`).
    Returns a ``(1, X, Y, Z)`` MetaTensor with ``original``'s affine and meta.
    """
    shape = tuple(original.shape[1:])
    out = None
    for i, item in enumerate(leg_label_maps):
        if isinstance(item, LegCrop):
            info, arr = item.info, item.image
        else:
            info = legs[i] if legs is not None else item.meta[LEG_META_KEY]
            arr = item
        arr = _to_numpy(arr)
        if arr.ndim == 4:
            arr = arr[0]
        if out is None:
            out = np.zeros(shape, dtype=arr.dtype)
        if tuple(arr.shape) == shape:  # already on the full grid
            own = owned_mask(info, full=True)
            np.copyto(out, arr, where=own, casting="unsafe")
        else:
            roi = tuple(slice(s, e) for s, e in zip(info["roi_start"], info["roi_end"]))
            if tuple(arr.shape) != tuple(r.stop - r.start for r in roi):
                raise ValueError(f"leg label map of shape {arr.shape} does not match its crop box {roi}")
            own = owned_mask(info)
            np.copyto(out[roi], arr, where=own, casting="unsafe")  # in place, no gathered copies
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    meta = {k: v for k, v in original.meta.items() if k != LEG_META_KEY}
    meta["affine"] = original.affine.clone()
    return MetaTensor(torch.as_tensor(out[None]), meta=meta)


# --------------------------------------------------------------------------------------------
# mirroring
# --------------------------------------------------------------------------------------------
def mirror_affine(affine: np.ndarray, lr_axis: int, size: int) -> np.ndarray:
    """Affine of an image flipped along ``lr_axis`` and reflected in the world plane x = 0.

    ``S @ A @ F``: F maps index i → size-1-i, S negates world x. The result keeps the input's
    orientation codes (RAS stays RAS, so a later Orientation transform does not undo the flip)
    and places the mirrored left leg where a right leg would be: world x → -x.
    """
    flip = np.eye(4)
    flip[lr_axis, lr_axis] = -1.0
    flip[lr_axis, 3] = size - 1
    reflect = np.diag([-1.0, 1.0, 1.0, 1.0])
    return reflect @ np.asarray(affine, dtype=float) @ flip


def _swap_label_values(arr: torch.Tensor) -> torch.Tensor:
    if arr.dtype == torch.uint8 and arr.device.type == "cpu":
        # a uint8 table indexed by the uint8 map itself: no int64 copy of a full-size crop
        lut = swap_sides_lut(255).astype(np.uint8)
        return torch.from_numpy(lut[arr.numpy()])
    max_value = int(arr.max()) if arr.numel() else 0
    lut = torch.as_tensor(swap_sides_lut(max(255, max_value)), device=arr.device)
    return lut[arr.long()].to(arr.dtype)


class MirrorToRight(InvertibleTransform):
    """Make a left leg look like a right leg; right legs pass unchanged (but are recorded).

    Input: channel-first MetaTensor ``(C, X, Y, Z)`` with ``meta['leg']['side']`` (from
    :class:`SplitLegs`) or an explicit ``side``. A left leg is flipped along the array axis most
    aligned with world x and its affine becomes ``S·A·F`` (:func:`mirror_affine`: the world is
    reflected too, so the mirrored leg *is* a right leg in world coordinates, not just in array
    order — MONAI's ``Flip`` instead updates the affine so world positions stay put, which a later
    ``Orientation`` would undo). With ``labels=True`` left/right label values are swapped via
    :func:`muscle_pipeline.labels.swap_sides_lut` (``soleus_left`` ↔ ``soleus_right``).

    ``inverse`` restores array, affine and label values exactly; any instance can invert (a
    prediction that copied the image's ``applied_operations`` is inverted with
    ``MirrorToRight(labels=True).inverse(pred)``).
    """

    def __init__(self, side: str | None = None, labels: bool = False) -> None:
        if side is not None and side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        self.side = side
        self.labels = labels

    def __call__(self, img: torch.Tensor, side: str | None = None) -> MetaTensor:
        if not isinstance(img, MetaTensor):
            raise TypeError("MirrorToRight needs a MetaTensor with an affine")
        side = side or self.side or img.meta.get(LEG_META_KEY, {}).get("side")
        if side not in SIDES:
            raise ValueError("MirrorToRight: leg side unknown (give side= or split with SplitLegs first)")
        affine = np.asarray(_to_numpy(img.affine), dtype=float)
        lr = leg_axes(affine).lr
        out = img.clone()
        if side == "left":
            flipped = torch.flip(out.as_tensor(), dims=(lr + 1,))
            out.set_array(_swap_label_values(flipped) if self.labels else flipped)
            out.affine = torch.as_tensor(mirror_affine(affine, lr, img.shape[lr + 1]), dtype=torch.float64)
            if LEG_META_KEY in out.meta:  # it now is, anatomically and in world x, a right leg
                out.meta[LEG_META_KEY] = dict(out.meta[LEG_META_KEY], side="right", mirrored_from="left")
        extra = {"mirrored": side == "left", "lr_axis": lr, "affine": affine.tolist(), "labels": self.labels}
        self.push_transform(out, extra_info=extra)
        return out

    def inverse(self, data: torch.Tensor, labels: bool | None = None) -> MetaTensor:
        # any MirrorToRight may invert (a prediction carries the image's record), so match by class
        transform = self.get_most_recent_transform(data, check=False)
        if transform.get(TraceKeys.CLASS_NAME) != type(self).__name__:
            raise RuntimeError(f"most recent transform is {transform.get(TraceKeys.CLASS_NAME)}, not MirrorToRight")
        self.pop_transform(data, check=False)
        extra = transform[TraceKeys.EXTRA_INFO]
        if not extra["mirrored"]:
            return data
        labels = (self.labels or extra["labels"]) if labels is None else labels
        lr = int(extra["lr_axis"])
        out = data.clone()
        flipped = torch.flip(out.as_tensor(), dims=(lr + 1,))
        out.set_array(_swap_label_values(flipped) if labels else flipped)
        out.affine = torch.as_tensor(np.asarray(extra["affine"]), dtype=torch.float64)
        leg = out.meta.get(LEG_META_KEY)
        if isinstance(leg, Mapping) and leg.get("mirrored_from"):
            out.meta[LEG_META_KEY] = {k: v for k, v in leg.items() if k != "mirrored_from"} | {"side": leg["mirrored_from"]}
        return out


class MirrorToRightd(MapTransform, InvertibleTransform):
    """Dictionary twin of :class:`MirrorToRight`. ``label_keys`` (a subset of ``keys``) get their
    left/right values swapped; the side comes from ``side_key`` in the dict (default
    ``leg_side``, written by :class:`SplitLegsd`) or from each tensor's ``meta['leg']``.

    ``invert_as_labels``: swap label values on ``inverse`` for every key. MONAI's
    ``Invertd(keys="pred", orig_keys="image")`` inverts a prediction with the *image's* record,
    which swaps nothing; build the inference Compose with ``invert_as_labels=True`` so that a
    mirrored left leg's prediction comes back with LEFT values.
    """

    def __init__(self, keys: KeysCollection, label_keys: KeysCollection = (), side_key: str = "leg_side",
                 invert_as_labels: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = set([label_keys] if isinstance(label_keys, str) else label_keys)
        self.side_key = side_key
        self.invert_as_labels = invert_as_labels
        self.image_mirror = MirrorToRight(labels=False)
        self.label_mirror = MirrorToRight(labels=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        side = d.get(self.side_key)
        for key in self.key_iterator(d):
            mirror = self.label_mirror if key in self.label_keys else self.image_mirror
            d[key] = mirror(d[key], side=side)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            as_labels = self.invert_as_labels or key in self.label_keys
            d[key] = self.image_mirror.inverse(d[key], labels=as_labels)
        return d


def segment_per_leg(image: MetaTensor, predict, margin_mm: float = 10.0, side: str | None = None,
                    n_legs: int | None = None, crops: Sequence[LegCrop] | None = None) -> MetaTensor:
    """Run ``predict`` on every leg of ``image`` as a right leg and merge the label maps: the one
    split -> mirror -> predict -> un-mirror -> merge path (``segment_image`` runs it).

    ``predict(crop) -> label map``: takes a ``(C, X, Y, Z)`` right-looking leg crop (a mirrored
    left leg, or a right leg; ``crop.meta['leg']`` says which) and returns integer ontology labels
    of shape ``(X, Y, Z)`` or ``(1, X, Y, Z)`` on the crop's grid, with RIGHT values. Left legs'
    results come back un-mirrored with LEFT values (``base + 100``). ``crops``: legs split
    earlier by :func:`split_legs` (then ``margin_mm``, ``side``, ``n_legs`` are not used). Returns
    a ``(1, X, Y, Z)`` uint8 MetaTensor on ``image``'s grid.
    """
    if crops is None:
        crops = split_legs(image, margin_mm=margin_mm, side=side, n_legs=n_legs)
    mirror = MirrorToRight()
    results = []
    for crop in crops:
        with stage("mirror_merge"):
            mirrored = mirror(crop.image, side=crop.side)
        labels = torch.as_tensor(np.asarray(predict(mirrored)))
        if labels.ndim == 3:
            labels = labels[None]
        if tuple(labels.shape[1:]) != tuple(mirrored.shape[1:]):
            raise ValueError(f"predict returned shape {tuple(labels.shape)} for a crop of {tuple(mirrored.shape)}")
        meta = {k: v for k, v in mirrored.meta.items() if k != "affine"}
        labels = MetaTensor(labels.to(torch.uint8), affine=mirrored.affine.clone(), meta=meta,
                            applied_operations=list(mirrored.applied_operations))
        with stage("mirror_merge"):
            results.append(mirror.inverse(labels, labels=True))
    with stage("mirror_merge"):
        return merge_legs(results, image, legs=[c.info for c in crops])
