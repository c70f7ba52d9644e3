"""Which body region a scan shows (foot, leg, knee, thigh, hip, or no lower limb) and which side a
leg is, from its bones.

As QMRITools' ``SegmentData`` does before choosing a network, every axial slice of every leg is
classified from its cross-section and its bones, and the slices vote. The rule (no trained
model; the thresholds were set by looking at the real scans in ``shared/data`` and the
synthetic phantoms, and are listed in :data:`RULES`), applied per leg and slice in this order:

1. **hip** — a bilateral body that is one blob with no valley between the legs (pelvis, or the
   trunk above it), or a leg cross-section of at least 180 cm² holding a bone of at least
   12 cm² (half a pelvis with the femoral head and acetabulum or the iliac wing);
   **none** (not a lower limb) instead of hip: on CT, when that half of the body holds no
   pelvic bone (≥ 5 cm², not at the midline cut, not under the skin: iliac wing, acetabulum,
   femoral head — the abdomen's vertebra sits on the cut, its ribs under the skin; on the real
   pelvis CT this keeps slices 0–46 of the hip bone's 0–60 and calls the abdomen above none);
   on MR (whose dark-blob "bones" in a trunk are kidneys, bowel gas and vessels), when the whole
   scan never shows two separate legs and fewer than 10 % of its votes are thigh/knee/leg/foot
   (the lumbar spine, the upper abdomen). An MR of the pelvis alone, cut above the thighs, is
   therefore called none too: a known limit, on the safe side (refused, not segmented);
2. **foot** — an elongated outline (major/minor axis ≥ 1.6: a foot cut across is long
   front-to-back), or at least four bones in an outline elongated ≥ 1.4;
3. **knee** — a bone near the centre (within half a radius) of at least 13 cm² filling at least
   12 % of the cross-section: femoral condyles, tibial plateau (the femoral shaft fills 3–5 % of a
   thigh, the tibial shaft 4–6 % of a calf; the knee slices of the whole-leg stations 12–32 %);
4. **thigh / leg** — the *principal bone* is the bone of at least 2 cm² nearest the centre of
   the cross-section. The femur lies deep in the thigh (shortest distance to the skin ≥ 25 % of
   the cross-section's equivalent radius; measured 0.30–0.55), while the tibia's front is just
   under the skin (measured 0.02–0.22): deep → thigh, superficial → leg.

Bones: CT > 200 HU (holes filled). MR cortex is dark in every contrast while marrow is bright
(T1, in-phase, fat) or dark (water, fat-suppressed), so two detectors are united: dark rings or
blobs not touching the skin, hole-filled; and thick dark blobs (opened with a 2.5 mm disk)
inside the convex hull of the muscle (the not-dark tissue), which finds a dark tibia lying
against the dark subcutaneous fat of a water image. Intensities are relative to the median of
the leg's interior, so no contrast has to be named.

Side (:func:`recognize_side`): the header side (``meta['leg']['side']`` of a split leg, a
caller's hint, or world x relative to the isocentre) is checked against anatomy read in world
coordinates: in a leg (calf) the fibula lies lateral to the tibia, in a thigh the femur lies
lateral to the centre of the cross-section (the adductors make the medial side bulky); lateral
is +x (RAS) for a right leg. A disagreement is returned and warned about. Anatomy cannot catch a
pure left–right mirror error of the whole header (a mirrored right leg *is* a left leg); it
catches a wrong position-based guess, e.g. a single leg whose header origin is arbitrary.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi
from skimage.measure import label as label_components
from skimage.measure import regionprops
from skimage.morphology import convex_hull_image, disk

from muscle_pipeline.regions import NOT_LOWER_LIMB, REGIONS
from muscle_pipeline.transforms.intensity import has_hounsfield_air
from muscle_pipeline.transforms.legs import (
    LEG_META_KEY,
    body_mask,
    expand_blocks,
    leg_axes,
    owned_mask,
    split_on_working_grid,
    voxel_spacing,
)

WORKING_MM = 1.5  # in-plane grid (mm) of the slice features: bones and outlines need no finer one

RULES = {
    "min_leg_area_cm2": 20.0,  # smaller cross-sections (toes, a scan's edge) do not vote
    "hip_leg_area_cm2": 180.0,
    "hip_bone_area_cm2": 12.0,
    "foot_elongation": 1.6,
    "foot_many_bones": 4,
    "foot_many_bones_elongation": 1.4,
    "principal_bone_cm2": 2.0,
    "thigh_depth_ratio": 0.25,
    "knee_bone_cm2": 13.0,
    "knee_bone_fraction": 0.12,
    "knee_central_ratio": 0.5,
    "ct_pelvic_bone_cm2": 5.0,
    "ct_pelvic_bone_depth": 0.1,
    "ct_pelvic_bone_centre": 0.6,
    "mr_trunk_limb_share": 0.1,
    "min_bone_mm2": 30.0,
    "ct_bone_hu": 200.0,
    "mr_dark_fraction": 0.45,  # dark = below this fraction of the leg interior's median
    "thigh_femur_offset": 0.08,  # side vote only when the femur is this many radii off-centre
    "side_min_votes": 3,
    "side_agreement": 0.7,
}


@dataclass
class Bone:
    """One bone cross-section in a slice (in-plane array coordinates of the (lr, ap) slice)."""

    area_mm2: float
    centroid: np.ndarray  # (lr, ap) index
    depth_ratio: float  # shortest distance to the skin / equivalent radius of the cross-section
    centre_ratio: float  # distance from the cross-section's centroid / equivalent radius


@dataclass
class SliceFeatures:
    """Cross-section of one leg in one axial slice."""

    index: int  # along the array axis closest to world z
    area_cm2: float
    elongation: float
    centroid: np.ndarray  # (lr, ap) index
    radius_mm: float
    bones: list[Bone]
    joined: bool  # part of a bilateral body without a valley (pelvis/trunk)

    @property
    def principal_bone(self) -> Bone | None:
        big = [b for b in self.bones if b.area_mm2 >= RULES["principal_bone_cm2"] * 100]
        return min(big, key=lambda b: b.centre_ratio) if big else None


@dataclass
class RegionResult:
    """``region``: the lower-limb region most slices show, "foot" | "leg" | "knee" | "thigh" |
    "hip" (None when no slice shows a lower limb); ``per_slice``: the vote of each slice along
    the array axis closest to world z, one of :data:`REGIONS` or "none" (None: no vote or legs
    disagreeing); ``confidence``: share of the lower-limb votes that agree with ``region``;
    ``votes``: the counts, "none" included."""

    region: str | None
    per_slice: list[str | None]
    confidence: float
    votes: dict = field(default_factory=dict)
    legs: list[str] = field(default_factory=list)  # "right"/"left" of a bilateral scan, or ["one"]

    @property
    def present(self) -> dict[str, int]:
        """Slices per region (``"none"`` included), inferior to superior."""
        counts = Counter(v for v in self.per_slice if v)
        return {r: counts[r] for r in (*REGIONS, NOT_LOWER_LIMB) if counts[r]}


@dataclass
class SideResult:
    """``side``: the header side (what the pipeline uses); ``anatomical``: what the bones say
    (None when undecided); ``agree``: None when anatomy is undecided; ``evidence``: how many
    slices voted right/left and with which rule."""

    side: str
    header_source: str
    anatomical: str | None
    agree: bool | None
    evidence: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
def _bones_in_slice(image2d: np.ndarray, leg2d: np.ndarray, pixel_mm: float, ct: bool) -> list[Bone]:
    if ct:
        bone = ndi.binary_fill_holes(ndi.binary_closing((image2d > RULES["ct_bone_hu"]) & leg2d)) & leg2d
    else:
        inner = ndi.binary_erosion(leg2d, iterations=max(1, int(round(4.0 / pixel_mm))))
        if inner.sum() < 20:
            return []
        dark = (image2d < RULES["mr_dark_fraction"] * float(np.median(image2d[inner]))) & leg2d
        # (a) dark cortex rings / blobs that do not touch the skin, hole-filled (bright marrow)
        rings = ndi.binary_opening(dark, structure=np.ones((2, 2), bool))
        lab, _ = ndi.label(rings)
        rings &= ~np.isin(lab, np.unique(lab[rings & ~inner]))
        bone = ndi.binary_fill_holes(rings)
        # (b) thick dark blobs inside the hull of the muscle (fat-suppressed marrow is dark, and
        # the tibia may touch the dark subcutaneous fat)
        muscle = ndi.binary_opening(leg2d & ~dark, structure=disk(max(1, int(round(2.0 / pixel_mm)))))
        lab, n = ndi.label(muscle)
        if n:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            muscle = np.isin(lab, np.flatnonzero(sizes >= 0.02 * sizes.max()))
            hull = convex_hull_image(muscle)
            bone |= ndi.binary_opening(dark & hull, structure=disk(max(1, int(round(2.5 / pixel_mm)))))
    radius = np.sqrt(leg2d.sum() / np.pi)
    centre = np.array(ndi.center_of_mass(leg2d))
    depth = ndi.distance_transform_edt(leg2d)
    bones = []
    for region in regionprops(label_components(bone)):
        area = region.area * pixel_mm * pixel_mm
        if area < RULES["min_bone_mm2"]:
            continue
        coords = region.coords
        bones.append(Bone(
            area_mm2=float(area),
            centroid=np.asarray(region.centroid),
            depth_ratio=float(depth[coords[:, 0], coords[:, 1]].min() / radius),
            centre_ratio=float(np.linalg.norm(np.asarray(region.centroid) - centre) / radius),
        ))
    return bones


def _leg_parts(image: MetaTensor):
    """(canonical image (lr, ap, si), legs): ``legs`` yields (canonical leg mask (lr, ap, si), joined
    per slice) per leg."""
    affine = np.asarray(image.affine, dtype=float)
    axes = leg_axes(affine)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = (array[0] if array.ndim == 4 else array).astype(np.float32, copy=False)
    info = image.meta.get(LEG_META_KEY) if isinstance(image, MetaTensor) else None
    canon = (axes.lr, axes.ap, axes.si)

    def legs():
        if info is not None and list(info["spatial_shape"]) != list(array.shape):
            # a crop from SplitLegs: one leg, only the voxels it owns
            mask = body_mask(image, affine)
            own = owned_mask(info)
            si_range = slice(info["roi_start"][axes.si], info["roi_end"][axes.si])
            joined = np.asarray(info.get("joined") or [False] * info["spatial_shape"][axes.si], bool)[si_range]
            yield np.transpose(mask & own, canon), joined
            return
        # the split of the full-resolution body mask, found on the mask's working grid (not on
        # 512x512 slices); the mask itself is needed at full resolution for the block means
        mask, factors, split = split_on_working_grid(array, affine)
        mask = expand_blocks(mask, factors, array.shape)
        parts = ["all"] if split.n_legs == 1 else ["low", "high"]
        for part in parts:
            part_info = {"part": part, "lr_axis": axes.lr, "si_axis": axes.si, "spatial_shape": list(mask.shape),
                         "roi_start": [0, 0, 0], "roi_end": list(mask.shape),
                         "boundary": None if split.boundary is None else split.boundary.tolist()}
            own = owned_mask(part_info, full=True)
            yield np.transpose(mask & own, canon), split.joined

    return np.transpose(array, canon), legs()


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` in-plane blocks of an (lr, ap, si) array."""
    nx, ny = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    trimmed = array[:nx, :ny]
    return trimmed.reshape(nx // factor, factor, ny // factor, factor, -1).mean(axis=(1, 3))


def _voting_stack(array: np.ndarray, ks: np.ndarray, factor: int) -> np.ndarray:
    """Slices ``ks`` of an (lr, ap, si) array, block-averaged in-plane by ``factor`` (whole blocks
    only; a boolean mask keeps the blocks at least half inside), as a (slice, lr', ap') stack with
    each slice contiguous: each is read a dozen times."""
    if ks.size < array.shape[2]:
        array = array[:, :, ks]
    if factor > 1 and array.dtype == bool:
        array = _block_mean(array.astype(np.float32), factor) >= 0.5
    elif factor > 1:
        array = _block_mean(array, factor)
    return np.ascontiguousarray(np.moveaxis(array, 2, 0))


def _pixel_mm(affine: np.ndarray) -> float:
    """Mean in-plane pixel size (mm) of the axial plane."""
    axes, spacing = leg_axes(affine), voxel_spacing(affine)
    return float(np.sqrt(spacing[axes.lr] * spacing[axes.ap]))


def working_factor(affine, working_mm: float = WORKING_MM) -> int:
    """In-plane block size (pixels per side) of the grid of about ``working_mm`` that
    :func:`slice_features` measures on: the most whole pixels that fit in ``working_mm``."""
    return max(1, int(working_mm // _pixel_mm(np.asarray(affine, dtype=float))))


def voting_slices(n_slices: int, max_slices: int | None) -> np.ndarray:
    """Indices of the at most ``max_slices`` evenly spaced slices (of ``n_slices`` along the axis
    closest to world z) that vote; all of them when ``max_slices`` is None or not smaller."""
    if not max_slices or n_slices <= max_slices:
        return np.arange(n_slices)
    return np.unique(np.linspace(0, n_slices - 1, int(max_slices)).round().astype(int))


def voting_copy(image: MetaTensor, max_slices: int | None,
                working_mm: float | None = WORKING_MM) -> tuple[MetaTensor, np.ndarray, int]:
    """What :func:`slice_features` measures, as a small copy of a channel-first ``(C, X, Y, Z)``
    image: its :func:`voting_slices` along the axis closest to world z, block-averaged in-plane to
    the ``working_mm`` grid (whole blocks only, as ``slice_features`` trims; first channel;
    ``working_mm=None``: the in-plane grid kept).

    Returns ``(copy (1, X', Y', Z'), ks, factor)``: ``ks`` the original index of each slice of the
    copy, ``factor`` the in-plane block size. The copy's affine maps its voxels to the blocks'
    centres (axis order and directions kept, so left and right stay where they are; along z the
    kept slices' mean spacing). The copy carries no leg record (``meta['leg']``): a caller that
    copies a leg crop maps that itself. Returns ``image`` itself when nothing would change."""
    affine = np.asarray(image.affine, dtype=float)
    axes = leg_axes(affine)
    factor = 1 if working_mm is None else working_factor(affine, working_mm)
    n_si = image.shape[1 + axes.si]
    ks = voting_slices(n_si, max_slices)
    if factor == 1 and ks.size == n_si:
        return image, ks, factor
    factors = np.array([1 if ax == axes.si else factor for ax in range(3)])
    array = (image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image))[0]
    coarse = np.take(array, ks, axis=axes.si).astype(np.float32, copy=False)
    if factor > 1:
        keep = [(n // f) * f for n, f in zip(coarse.shape, factors)]  # whole blocks, as slice_features trims
        coarse = coarse[: keep[0], : keep[1], : keep[2]].reshape(
            [d for n, f in zip(keep, factors) for d in (n // f, f)]).mean(axis=(1, 3, 5))
    grid = np.diag([*factors.astype(float), 1.0])
    grid[:3, 3] = (factors - 1) / 2.0  # a block's centre
    if ks.size > 1:  # the kept slices, evenly spaced on average
        grid[axes.si, axes.si] = (ks[-1] - ks[0]) / (ks.size - 1)
    meta = {k: v for k, v in image.meta.items() if k not in ("affine", LEG_META_KEY)}
    return MetaTensor(torch.as_tensor(coarse)[None], affine=torch.as_tensor(affine @ grid), meta=meta), ks, factor


def slice_features(image: MetaTensor, working_mm: float = WORKING_MM, max_slices: int | None = None,
                   ct: bool | None = None) -> list[list[SliceFeatures]]:
    """Per leg (left/right or one), the cross-section features of every axial slice with body.

    In-plane coordinates (``centroid``) are on a grid coarsened to about ``working_mm``.
    ``max_slices``: look at most at that many evenly spaced slices (a 96-slice 3D Dixon needs
    no more than ~32 to vote on a side; each slice's bone search costs ~25 ms). ``ct``:
    intensities are HU (None: decided from this image's intensities).
    """
    affine = np.asarray(image.affine, dtype=float)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    ct = has_hounsfield_air(array) if ct is None else ct
    # bones and outlines need no sub-millimetre grid: blocks of ~working_mm (4x fewer pixels at 0.7 mm)
    factor = working_factor(affine, working_mm)
    pixel_mm = _pixel_mm(affine) * factor
    values, leg_masks = _leg_parts(image)
    ks = voting_slices(values.shape[2], max_slices)
    values = _voting_stack(values, ks, factor)  # the legs of a scan share it
    legs = []
    for leg_mask, joined in leg_masks:
        leg_mask = _voting_stack(leg_mask, ks, factor)
        features = []
        for i, k in enumerate(ks):
            leg2d = leg_mask[i]
            if not leg2d.any():
                continue
            lab, n = ndi.label(leg2d)
            if n > 1:  # one leg is one blob: drop hands or fragments beside it
                sizes = np.bincount(lab.ravel())
                sizes[0] = 0
                leg2d = np.isin(lab, np.flatnonzero(sizes >= 0.3 * sizes.max()))
            area_cm2 = leg2d.sum() * pixel_mm * pixel_mm / 100.0
            if area_cm2 < RULES["min_leg_area_cm2"]:
                continue
            # work on the leg's bounding box (plus a rim): the slice may be mostly air
            inside = np.argwhere(leg2d)
            (x0, y0), (x1, y1) = inside.min(axis=0), inside.max(axis=0)
            box = (slice(max(x0 - 3, 0), x1 + 4), slice(max(y0 - 3, 0), y1 + 4))
            offset = np.array([box[0].start, box[1].start], dtype=float)
            leg_box = leg2d[box]
            props = regionprops(leg_box.astype(np.uint8))[0]
            elongation = props.axis_major_length / max(props.axis_minor_length, 1.0)
            bones = _bones_in_slice(values[i][box], leg_box, pixel_mm, ct)
            for bone in bones:
                bone.centroid = bone.centroid + offset
            features.append(SliceFeatures(
                index=int(k), area_cm2=float(area_cm2), elongation=float(elongation),
                centroid=np.asarray(props.centroid) + offset,
                radius_mm=float(np.sqrt(leg2d.sum() / np.pi) * pixel_mm), bones=bones, joined=bool(joined[k]),
            ))
        legs.append(features)
    return legs


def _has_pelvic_bone(f: SliceFeatures) -> bool:
    """A CT bone that a pelvis has and a trunk lacks (see the module docstring, rule 1)."""
    return any(b.area_mm2 >= RULES["ct_pelvic_bone_cm2"] * 100 and b.depth_ratio >= RULES["ct_pelvic_bone_depth"]
               and b.centre_ratio <= RULES["ct_pelvic_bone_centre"] for b in f.bones)


def classify_slice(f: SliceFeatures, ct: bool = False) -> str | None:
    """The region one leg's cross-section shows (rules in the module docstring), or None.
    ``ct``: intensities are HU (pelvis and trunk then told apart by their bones)."""
    largest = max((b.area_mm2 for b in f.bones), default=0.0)
    if f.joined or (f.area_cm2 >= RULES["hip_leg_area_cm2"] and largest >= RULES["hip_bone_area_cm2"] * 100):
        return NOT_LOWER_LIMB if ct and not _has_pelvic_bone(f) else "hip"
    many = sum(b.area_mm2 >= 50 for b in f.bones) >= RULES["foot_many_bones"]
    if f.elongation >= RULES["foot_elongation"] or (many and f.elongation >= RULES["foot_many_bones_elongation"]):
        return "foot"
    central = [b for b in f.bones if b.centre_ratio <= RULES["knee_central_ratio"]]
    biggest = max((b.area_mm2 for b in central), default=0.0) / 100.0
    if biggest >= RULES["knee_bone_cm2"] and biggest >= RULES["knee_bone_fraction"] * f.area_cm2:
        return "knee"
    principal = f.principal_bone
    if principal is None:
        return None
    return "thigh" if principal.depth_ratio >= RULES["thigh_depth_ratio"] else "leg"


def recognize_region(image: MetaTensor, max_slices: int | None = None, full_resolution: bool = False) -> RegionResult:
    """Hip, thigh, knee, leg (lower leg), foot or none (no lower limb) for a channel-first
    MetaTensor ``(C, X, Y, Z)``: a bilateral scan, a single leg, or a crop from
    :class:`~muscle_pipeline.transforms.legs.SplitLegs`. ``per_slice`` runs along the array axis
    closest to world z, in array order. ``max_slices``: vote with at most that many evenly
    spaced slices (the others stay None): a 400-slice CT needs no more than ~64 to be known.

    A whole scan is measured on its voting slices only (:func:`voting_copy`): its body mask and
    leg split are found on those slices, not on the whole volume (a 512x512x400 CT: 64 of 400
    slices). The copy keeps the in-plane grid, so that the body mask stays on its own ~2 mm working
    grid: block-averaged to the 1.5 mm feature grid first, the mask came out on another grid (2 %
    smaller cross-sections on that CT, and a borderline slice voted differently).
    ``full_resolution=True`` measures on the whole volume. A leg crop (``meta['leg']``) is always
    measured on itself: its leg record (split boundary, joined slices) is on its own grid."""
    axes = leg_axes(image.affine)
    n_slices = image.shape[1 + axes.si]
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    ct = has_hounsfield_air(array)  # from all the scan's intensities, as on the full-resolution path
    measured, ks = image, np.arange(n_slices)
    if not full_resolution and LEG_META_KEY not in image.meta:
        measured, ks, _ = voting_copy(image, max_slices, working_mm=None)
        max_slices = None  # the copy holds only the voting slices
    per_slice_votes: list[list[str]] = [[] for _ in range(n_slices)]
    legs = slice_features(measured, max_slices=max_slices, ct=ct)
    for leg in legs:
        for f in leg:
            vote = classify_slice(f, ct=ct)
            if vote is not None:
                per_slice_votes[ks[f.index]].append(vote)
    if not ct and _looks_like_trunk(image, legs, per_slice_votes):
        per_slice_votes = [[NOT_LOWER_LIMB if v == "hip" else v for v in votes] for votes in per_slice_votes]
    votes = Counter(v for slice_votes in per_slice_votes for v in slice_votes)
    per_slice: list[str | None] = []
    for slice_votes in per_slice_votes:
        counts = Counter(slice_votes).most_common()
        tied = len(counts) > 1 and counts[0][1] == counts[1][1]
        per_slice.append(counts[0][0] if counts and not tied else None)
    # _leg_parts gives the low-index part first; which side it is follows the lr axis' world x
    # direction (RAS: +x is the subject's right)
    low_is_right = float(np.asarray(image.affine, dtype=float)[0, axes.lr]) < 0
    sides = ["one"] if len(legs) != 2 else (["right", "left"] if low_is_right else ["left", "right"])
    limb_votes = Counter({r: n for r, n in votes.items() if r != NOT_LOWER_LIMB})
    # a stray limb-like slice in a trunk (1 of the lumbar MR's 20) does not make a lower limb
    if not limb_votes or sum(limb_votes.values()) < RULES["mr_trunk_limb_share"] * sum(votes.values()):
        return RegionResult(None, per_slice, 0.0, dict(votes), sides)
    region, count = limb_votes.most_common(1)[0]
    return RegionResult(region, per_slice, count / sum(limb_votes.values()), dict(votes), sides)


def _looks_like_trunk(image: MetaTensor, legs: list[list[SliceFeatures]], per_slice_votes: list[list[str]]) -> bool:
    """MR rule of the module docstring: no slice with two separate legs, and (almost) no
    thigh/knee/leg/foot votes."""
    limb = sum(v in REGIONS and v != "hip" for votes in per_slice_votes for v in votes)
    total = sum(len(votes) for votes in per_slice_votes)
    if total == 0 or limb > RULES["mr_trunk_limb_share"] * total:
        return False
    info = image.meta.get(LEG_META_KEY) if isinstance(image, MetaTensor) else None
    if info is not None:  # a crop of one leg: the bilateral scan decides, not the crop
        return False
    two_legs = len(legs) == 2 and not all(f.joined for leg in legs for f in leg)
    return not two_legs


# --------------------------------------------------------------------------------------------
def _world_dx(affine: np.ndarray, axes, d_lr: float, d_ap: float) -> float:
    """World x difference of an in-plane displacement given in (lr, ap) index units."""
    step = np.zeros(3)
    step[axes.lr], step[axes.ap] = d_lr, d_ap
    return float((affine[:3, :3] @ step)[0])


def recognize_side(leg_image: MetaTensor, header_side: str | None = None, region: str | None = None,
                   warn: bool = True, max_slices: int | None = None) -> SideResult:
    """Side of a single-leg image (a crop from ``SplitLegs`` or a one-leg scan), from the header
    and confirmed by anatomy (see module docstring). ``header_side`` overrides the header;
    ``region`` skips region recognition; ``max_slices`` bounds the slices looked at. Warns
    (``UserWarning``) when the two disagree."""
    affine = np.asarray(leg_image.affine, dtype=float)
    axes = leg_axes(affine)
    info = leg_image.meta.get(LEG_META_KEY, {}) if isinstance(leg_image, MetaTensor) else {}
    if header_side is not None:
        source = "caller"
    elif info.get("side") in ("left", "right"):
        header_side, source = info["side"], info.get("side_source", "leg split")
    else:
        mask = body_mask(leg_image, affine)
        centroid = affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]
        header_side, source = ("right" if centroid[0] > 0 else "left"), "world x relative to isocentre x=0"

    legs = slice_features(leg_image, max_slices=max_slices)
    features = max(legs, key=len) if legs else []
    if region is None:
        region_votes = Counter(v for v in (classify_slice(f) for f in features) if v)
        region = region_votes.most_common(1)[0][0] if region_votes else None

    right = left = 0
    for f in features:
        principal = f.principal_bone
        if principal is None:
            continue
        if region == "leg":
            # fibula: a deep, small bone beside the tibia
            fibulae = [b for b in f.bones if b is not principal and 40 <= b.area_mm2 <= 400 and b.depth_ratio >= 0.2]
            if not fibulae:
                continue
            # the fibula lies next to the tibia; dark vessels in the calf muscles lie further away
            fibula = min(fibulae, key=lambda b: np.linalg.norm(b.centroid - principal.centroid))
            d = fibula.centroid - principal.centroid
            dx = _world_dx(affine, axes, d[0], d[1])
        elif region == "thigh":
            d = principal.centroid - f.centroid
            dx = _world_dx(affine, axes, d[0], d[1])  # mm
            # real thighs: femur 0.10–0.22 radii lateral of the centre (J5, J6, test_up, SWastling);
            # nearer the centre it cannot tell
            if abs(dx) < RULES["thigh_femur_offset"] * f.radius_mm:
                continue
        else:
            continue
        # lateral is +x (towards the subject's right) for a right leg
        right += dx > 0
        left += dx < 0
    evidence = {"region": region, "right_votes": int(right), "left_votes": int(left),
                "rule": {"leg": "fibula lateral to tibia", "thigh": "femur lateral to thigh centre"}.get(region)}
    total = right + left
    anatomical = None
    if total >= RULES["side_min_votes"] and max(right, left) >= RULES["side_agreement"] * total:
        anatomical = "right" if right > left else "left"
    agree = None if anatomical is None else anatomical == header_side
    if agree is False and warn:
        warnings.warn(f"leg side from the header ({header_side}, {source}) disagrees with anatomy "
                      f"({anatomical}: {evidence['rule']}, {max(right, left)}/{total} slices)", stacklevel=2)
    return SideResult(header_side, source, anatomical, agree, evidence)
