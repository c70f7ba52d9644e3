"""Femur-axis alignment: resample a leg so that the femoral shaft runs along the volume's z axis.

Muscles run along the femur, so cross-sections perpendicular to it are the most comparable
between subjects and the leg's network sees the same geometry whatever the leg's pose.

The femur is found per leg (CT: bone > ``bone_threshold`` HU with the marrow filled, split
into sides by the body midline in world x, the largest elongated component; MR: the same
with the dark cortical ring, filled, as bone -- a best effort; any modality: a femur mask,
or an explicit axis, from the caller). Its long axis is the principal
axis of the shaft voxels in world mm (bulky ends -- head, neck, trochanters, condyles -- are
trimmed, see :func:`femur_shaft_axis`). The volume is then resampled onto a grid rotated about
the femur centroid so that the grid's z axis is parallel to that axis. World coordinates are
preserved (the new affine carries the rotation), so left/right and every mm position stay
true, and the step is an ``InvertibleTransform``: ``inverse`` / MONAI's ``Invertd`` resample
back onto the exact original grid (shape and affine), labels with nearest neighbour.

Two legs: ``femur="largest"`` (one leg per volume, after the leg split: what the pipeline
uses), ``"left"`` / ``"right"`` (that side's femur defines the rotation), or ``"mean"`` (one
shared rotation from the mean of both femurs' axes).
"""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, SpatialResample
from monai.utils import convert_to_numpy, ensure_tuple_rep

from muscle_pipeline.transforms.intensity import _slice_axis, otsu_body_mask

__all__ = [
    "FemurAxisFit",
    "principal_axis",
    "femur_shaft_axis",
    "detect_femur_ct",
    "detect_femur_mr",
    "select_femur_components",
    "body_midline_x",
    "rotation_between",
    "axis_angle_deg",
    "FemurAxisAlign",
    "FemurAxisAlignd",
]

FEMUR_CHOICES = ("largest", "left", "right", "mean")


@dataclass
class FemurAxisFit:
    """Result of a femur-axis fit, all in world RAS mm.

    ``axis``: unit vector of the femoral shaft (sign chosen along the grid's +z);
    ``centroid``: the rotation centre (shaft centroid); ``angle_deg``: angle between the axis
    and the input grid's z axis; ``source``: "ct", "mr", "mask" or "given"; ``rotated``: False when
    the rotation was refused (angle above ``max_angle_deg``) and the grid kept.
    """

    axis: np.ndarray
    centroid: np.ndarray
    angle_deg: float
    source: str
    rotated: bool = True


def _world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def principal_axis(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(axis, centroid, eigenvalues descending) of an ``(N, 3)`` point cloud in mm."""
    centroid = points_mm.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov((points_mm - centroid).T))
    return eigenvectors[:, -1], centroid, eigenvalues[::-1]


def axis_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees between two lines (sign-free), 0..90."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    cosine = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def femur_shaft_axis(mask: np.ndarray, affine: np.ndarray, trim_factor: float = 1.5,
                     radial_factor: float = 1.6, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(axis, centroid) of the femoral shaft in a femur mask ``(X, Y, Z)``, world mm.

    Start from the principal axis of all voxels; cut the bone into slabs perpendicular to it
    (slab thickness = the coarsest voxel size) and drop slabs whose volume exceeds
    ``trim_factor`` x the median slab (the femoral head/neck/trochanters and the condyles
    are bulkier than the shaft) and voxels further from the axis than ``radial_factor`` x
    the median radius, then refit on what is left; repeat. When the shaft is most
    of the bone this removes the ends' pull on the axis; when little shaft is in view (a
    hip scan ending at the trochanters) no slab stands out and the axis stays that of the
    whole bone.
    """
    affine = np.asarray(affine, dtype=float)
    points = _world_points(np.asarray(mask).astype(bool), affine)
    if len(points) < 10:
        raise ValueError(f"femur mask has only {len(points)} voxels; cannot fit an axis")
    axis, centroid, _ = principal_axis(points)
    slab = float(np.linalg.norm(affine[:3, :3], axis=0).max())
    kept = points
    for _ in range(iterations):
        relative = points - centroid
        position = relative @ axis
        bins = np.floor((position - position.min()) / slab).astype(int)
        counts = np.bincount(bins)
        limit = trim_factor * np.median(counts[counts > 0])
        in_shaft_slab = counts[bins] <= limit
        # Within the kept slabs, the edge of a bulky end (a cap of the femoral head) still
        # lies off the shaft: drop voxels further from the axis than a solid cylinder holds
        # (its largest radius is sqrt(2) x its median radius).
        radial = np.linalg.norm(relative - np.outer(position, axis), axis=1)
        if in_shaft_slab.any():
            in_shaft_slab &= radial <= radial_factor * np.median(radial[in_shaft_slab])
        candidate = points[in_shaft_slab]
        if len(candidate) < max(10, 0.2 * len(points)):
            break
        kept = candidate
        new_axis, centroid, _ = principal_axis(kept)
        converged = axis_angle_deg(new_axis, axis) < 0.05
        axis = new_axis
        if converged:
            break
    return axis / np.linalg.norm(axis), kept.mean(axis=0)


def body_midline_x(image: np.ndarray, affine: np.ndarray) -> float:
    """World x (RAS mm) of the body midline: the median x of the Otsu body voxels."""
    body = otsu_body_mask(image, affine)
    if not body.any():
        raise ValueError("no body found to split the legs")
    index = np.argwhere(body)
    return float(np.median(index @ affine[0, :3] + affine[0, 3]))


def select_femur_components(candidates: np.ndarray, affine: np.ndarray, femur: str, midline_x: float | None,
                            min_volume_ml: float = 5.0, min_elongation: float = 1.0) -> list[np.ndarray]:
    """Pick the femur component(s) from a candidate mask ``(X, Y, Z)``.

    Components (26-connected) of at least ``min_volume_ml`` and principal-component
    elongation ``sqrt(l1 / l2) >= min_elongation`` compete; ``femur`` picks the largest one
    overall ("largest"), on the subject's left (world x < midline) or right, or one per side
    ("mean"). Side comes from world x, never from array position.
    """
    import cc3d

    if femur not in FEMUR_CHOICES:
        raise ValueError(f"femur must be one of {FEMUR_CHOICES}, got {femur!r}")
    labels = cc3d.connected_components(np.asarray(candidates).astype(bool), connectivity=26)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    sizes = np.bincount(labels.ravel())
    found = []  # (size, side, component mask)
    for label in np.argsort(sizes)[::-1]:
        if label == 0:
            continue
        if sizes[label] * voxel_ml < min_volume_ml:
            break
        component = labels == label
        points = _world_points(component, affine)
        _, centroid, eigenvalues = principal_axis(points)
        if np.sqrt(eigenvalues[0] / max(eigenvalues[1], 1e-9)) < min_elongation:
            continue
        side = None if midline_x is None else ("left" if centroid[0] < midline_x else "right")
        found.append((sizes[label], side, component))
    if femur == "largest":
        chosen = found[:1]
    elif femur in ("left", "right"):
        chosen = [f for f in found if f[1] == femur][:1]
    else:
        chosen = [f for f in found if f[1] == "left"][:1] + [f for f in found if f[1] == "right"][:1]
    needed = 2 if femur == "mean" else 1
    if len(chosen) < needed:
        raise ValueError(f"femur={femur!r}: found {len(chosen)} femur candidate(s) "
                         f"(>= {min_volume_ml} mL, elongation >= {min_elongation}), need {needed}; "
                         "pass a femur mask or an explicit axis")
    return [c[2] for c in chosen]


def detect_femur_ct(image: np.ndarray, affine: np.ndarray, bone_threshold: float = 200.0) -> np.ndarray:
    """Candidate bone mask of a CT ``(X, Y, Z)`` in HU: bone > ``bone_threshold``, marrow filled.

    Cortex is > 200 HU, fatty marrow is not; filling holes in axial slices turns each
    cortical ring into a solid bone cross-section, so the femur's volume and axis are those
    of the whole bone. A femur touching the acetabulum at a coarse slice spacing merges
    with the pelvis: for hip scans pass a femur mask instead.
    """
    from scipy import ndimage

    bone = np.asarray(image) > bone_threshold
    axis = _slice_axis(affine)
    bone = np.moveaxis(bone, axis, 0)
    bone = np.stack([ndimage.binary_fill_holes(plane) for plane in bone])
    return np.moveaxis(bone, 0, axis)


def detect_femur_mr(image: np.ndarray, affine: np.ndarray, dark_fraction: float = 0.4, min_depth_mm: float = 15.0,
                    opening_mm: float = 3.0) -> np.ndarray:
    """Candidate bone mask of an MR volume ``(X, Y, Z)`` (any contrast; a best effort).

    Cortical bone is dark in every MR sequence, marrow is bright (fat, T1) or dark (water,
    STIR): so take body voxels darker than ``dark_fraction`` x the body's median, at least
    ``min_depth_mm`` below the skin (a dark subcutaneous fat ring must not enclose the
    whole thigh), fill holes slice by slice (the cortical ring becomes a solid bone
    cross-section whatever the marrow's contrast), and open with a disc of ``opening_mm``
    to cut the thin dark fascia lines that touch the ring. The femur is then the largest
    elongated candidate per leg (:func:`select_femur_components`). Checked on the QMRITools
    thigh scans (water-like, Dixon water and fat); verify on other sequences.
    """
    from scipy import ndimage

    volume = np.asarray(image, dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    body = otsu_body_mask(volume, affine)
    if not body.any():
        return body
    # Depth in-plane only: a slab's first and last slices are not skin.
    axis = _slice_axis(affine)
    in_plane = [i for i in range(3) if i != axis]
    depth = np.moveaxis(np.stack([ndimage.distance_transform_edt(plane, sampling=spacing[in_plane])
                                  for plane in np.moveaxis(body, axis, 0)]), 0, axis)
    dark = body & (depth >= min_depth_mm) & (volume < dark_fraction * np.median(volume[body]))
    radius = np.maximum(1, np.round(opening_mm / spacing[in_plane])).astype(int)
    yy, xx = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
    disc = (yy / radius[0]) ** 2 + (xx / radius[1]) ** 2 <= 1.0
    planes = [ndimage.binary_opening(ndimage.binary_fill_holes(plane), disc)
              for plane in np.moveaxis(dark, axis, 0)]
    return np.moveaxis(np.stack(planes), 0, axis)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation matrix ``R`` with ``R @ a`` parallel to ``b`` (unit vectors)."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    if np.linalg.norm(v) < 1e-12:
        if c > 0:
            return np.eye(3)
        # 180 degrees: rotate about any axis perpendicular to a.
        perpendicular = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        perpendicular /= np.linalg.norm(perpendicular)
        return 2.0 * np.outer(perpendicular, perpendicular) - np.eye(3)
    skew = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + skew + skew @ skew * (1.0 / (1.0 + c))


class FemurAxisAlign(SpatialResample):
    """Resample ``(C, X, Y, Z)`` so that the femoral shaft is parallel to the grid's z axis.

    Args:
        femur: which femur defines the rotation: "largest" (one leg per volume), "left",
            "right" (side by world x against the body midline) or "mean" (both legs, one
            shared rotation from the mean axis).
        modality: "ct" finds the femur by bone > ``bone_threshold`` (in the image's units:
            HU, so run this before any intensity window); "mr" by the dark cortical ring
            (:func:`detect_femur_mr`, a best effort checked on thigh scans). Either way a
            ``femur_mask`` or an ``axis`` in the call overrides the search.
        bone_threshold: CT bone threshold (200 HU).
        max_angle_deg: a fitted axis further than this from the grid's z axis is not
            trusted (a wrong bone, or a hip scan with no shaft): the grid is kept, with a
            warning. Set 90 to always rotate.
        keep_size: keep the input's shape (True) or enlarge the grid so that the whole
            rotated input fits (False).
        mode, padding_mode, align_corners, dtype: resampling options, as for MONAI's
            ``SpatialResample`` (padding "zeros": outside the input is 0).
        femur_labels: values of a ``femur_mask`` label map that are femur (e.g. (75, 76) for
            TotalSegmentator); None: every nonzero voxel is femur.
        trim_factor: slab-volume ratio above which bulky ends are trimmed from the shaft.
        min_volume_ml, min_elongation: femur candidates must be at least this big and
            this elongated (``sqrt`` of the ratio of the two largest PCA eigenvalues).

    The fit of the last call is in ``self.last_fit`` (a :class:`FemurAxisFit`) and in the
    output's ``meta["femur_axis"]`` (RAS unit vector) and ``meta["femur_angle_deg"]``.
    """

    def __init__(self, femur: str = "largest", modality: str = "ct", bone_threshold: float = 200.0,
                 max_angle_deg: float = 30.0, keep_size: bool = True, mode: str | int = "bilinear",
                 padding_mode: str = "zeros", align_corners: bool = False, dtype=torch.float32,
                 femur_labels: Sequence[int] | None = None, trim_factor: float = 1.5, min_volume_ml: float = 5.0,
                 min_elongation: float = 2.0) -> None:
        super().__init__(mode=mode, padding_mode=padding_mode, align_corners=align_corners, dtype=dtype)
        if femur not in FEMUR_CHOICES:
            raise ValueError(f"femur must be one of {FEMUR_CHOICES}, got {femur!r}")
        if modality not in ("ct", "mr"):
            raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
        self.femur = femur
        self.modality = modality
        self.bone_threshold = float(bone_threshold)
        self.max_angle_deg = float(max_angle_deg)
        self.keep_size = keep_size
        self.femur_labels = None if femur_labels is None else [int(v) for v in femur_labels]
        self.trim_factor = float(trim_factor)
        self.min_volume_ml = float(min_volume_ml)
        self.min_elongation = float(min_elongation)
        self.last_fit: FemurAxisFit | None = None

    def fit(self, img: NdarrayOrTensor, femur_mask: NdarrayOrTensor | None = None,
            axis: Sequence[float] | None = None) -> FemurAxisFit:
        """Find the femur axis of ``img`` ``(C, X, Y, Z)`` (its first channel) in world RAS mm.

        ``axis`` (RAS vector) is taken as given (rotation about the grid's centre unless a
        ``femur_mask`` gives the centroid); else the femur comes from ``femur_mask``
        (``(X, Y, Z)`` or ``(1, X, Y, Z)``, voxels in ``femur_labels`` or nonzero; components
        chosen by ``femur``) or from the automatic CT/MR search. An axis further than
        ``max_angle_deg`` from the grid's z axis comes back with ``rotated=False`` and a warning.
        """
        affine = self._affine_of(img)
        volume = convert_to_numpy(img)[0].astype(np.float32, copy=False)
        grid_z = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
        mask = None
        if femur_mask is not None:
            mask = convert_to_numpy(femur_mask)
            mask = mask[0] if mask.ndim == 4 else mask
            mask = mask != 0 if self.femur_labels is None else np.isin(mask, self.femur_labels)
            if mask.shape != volume.shape:
                raise ValueError(f"femur mask shape {mask.shape} does not match image {volume.shape}")
        if axis is not None:
            direction = np.asarray(axis, dtype=float)
            if mask is not None and mask.any():
                centroid = _world_points(mask, affine).mean(axis=0)
            else:
                centroid = affine[:3, :3] @ ((np.asarray(volume.shape) - 1) / 2.0) + affine[:3, 3]
            source = "given"
        else:
            if mask is not None:
                candidates, source, min_elongation = mask, "mask", 1.0
            elif self.modality == "ct":
                candidates = detect_femur_ct(volume, affine, self.bone_threshold)
                source, min_elongation = "ct", self.min_elongation
            else:
                candidates = detect_femur_mr(volume, affine)
                source, min_elongation = "mr", self.min_elongation
            midline = None if self.femur == "largest" else body_midline_x(volume, affine)
            components = select_femur_components(candidates, affine, self.femur, midline,
                                                 self.min_volume_ml, min_elongation)
            fits = [femur_shaft_axis(c, affine, self.trim_factor) for c in components]
            axes = [a if a @ grid_z >= 0 else -a for a, _ in fits]
            direction = np.mean(axes, axis=0)
            centroid = np.mean([c for _, c in fits], axis=0)
        direction = direction / np.linalg.norm(direction)
        if direction @ grid_z < 0:
            direction = -direction
        fit = FemurAxisFit(axis=direction, centroid=centroid, angle_deg=axis_angle_deg(direction, grid_z),
                           source=source)
        if fit.angle_deg > self.max_angle_deg:
            warnings.warn(f"femur axis is {fit.angle_deg:.1f} deg from the grid's z axis "
                          f"(> max_angle_deg={self.max_angle_deg}); grid kept unrotated", stacklevel=2)
            fit.rotated = False
        return fit

    @staticmethod
    def _affine_of(img: NdarrayOrTensor) -> np.ndarray:
        affine = img.peek_pending_affine() if isinstance(img, MetaTensor) else None
        return np.eye(4) if affine is None else convert_to_numpy(affine).astype(np.float64)

    def target_grid(self, affine: np.ndarray, spatial_shape: Sequence[int],
                    fit: FemurAxisFit) -> tuple[np.ndarray, list[int]]:
        """(dst_affine, spatial_size) of the grid rotated about ``fit.centroid``.

        The rotation turns the grid's z direction onto the femur axis, so in the new grid the
        femur runs along z; it is the smallest such rotation, so in-plane directions (and
        thus which array side is anterior, left, ...) change as little as possible.
        """
        affine = np.asarray(affine, dtype=float)
        if not fit.rotated:
            return affine, list(spatial_shape)
        grid_z = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
        rotation = np.eye(4)
        rotation[:3, :3] = rotation_between(grid_z, fit.axis)
        rotation[:3, 3] = fit.centroid - rotation[:3, :3] @ fit.centroid
        rotated = rotation @ affine
        if self.keep_size:
            return rotated, list(spatial_shape)
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in spatial_shape], indexing="ij")).reshape(3, -1)
        world = affine[:3, :3] @ corners + affine[:3, 3:4]
        new_index = np.linalg.solve(rotated[:3, :3], world - rotated[:3, 3:4])
        low = np.floor(new_index.min(axis=1) + 1e-6)
        high = np.ceil(new_index.max(axis=1) - 1e-6)
        shift = np.eye(4)
        shift[:3, 3] = low
        return rotated @ shift, [int(n) for n in high - low + 1]

    def __call__(self, img: NdarrayOrTensor, femur_mask: NdarrayOrTensor | None = None,
                 axis: Sequence[float] | None = None, fit: FemurAxisFit | None = None,
                 mode: str | int | None = None, padding_mode: str | None = None) -> torch.Tensor:
        """Align ``img`` ``(C, X, Y, Z)``; a precomputed ``fit`` (e.g. from the image, applied
        to its label map) skips the search. Returns a float32 MetaTensor on the rotated grid."""
        if not isinstance(img, MetaTensor):
            img = MetaTensor(img)
        if fit is None:
            fit = self.fit(img, femur_mask, axis)
        self.last_fit = fit
        dst_affine, spatial_size = self.target_grid(self._affine_of(img), img.peek_pending_shape(), fit)
        out = super().__call__(img, dst_affine=torch.as_tensor(dst_affine, dtype=torch.float64),
                               spatial_size=spatial_size, mode=mode, padding_mode=padding_mode, lazy=False)
        if isinstance(out, MetaTensor):
            out.meta["femur_axis"] = fit.axis.copy()
            out.meta["femur_angle_deg"] = fit.angle_deg
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Resample back onto the grid the last :meth:`__call__` on ``data`` started from."""
        from monai.utils import TraceKeys

        source_affine = self.get_most_recent_transform(data)[TraceKeys.EXTRA_INFO]["src_affine"]
        out = super().inverse(data)
        if isinstance(out, MetaTensor):
            # MONAI composes the inverse affine by matrix products (round-off ~1e-13); the
            # original grid is known exactly, so restore it bit for bit.
            out.affine = torch.as_tensor(convert_to_numpy(source_affine)).clone()
        return out


class FemurAxisAlignd(MapTransform, InvertibleTransform):
    """Dictionary twin of :class:`FemurAxisAlign`: one rotation, found once, applied to all keys.

    The femur is searched in ``source_key`` (default: the first key), or given by
    ``femur_mask_key`` (a mask, or a label map with ``femur_labels`` naming the femur
    values), or by an explicit RAS axis under ``axis_key``. Every key must be a MetaTensor
    on the source's grid (as ``LoadImaged`` gives). ``mode``/``padding_mode`` may be one per key
    (e.g. ``("bilinear", "nearest")`` for image and label). ``inverse`` restores every key's
    original grid.
    """

    def __init__(self, keys: KeysCollection, source_key: str | None = None, femur_mask_key: str | None = None,
                 axis_key: str | None = None, femur: str = "largest", modality: str = "ct",
                 bone_threshold: float = 200.0, max_angle_deg: float = 30.0, keep_size: bool = True,
                 mode: str | Sequence[str] = "bilinear", padding_mode: str | Sequence[str] = "zeros",
                 align_corners: bool = False, dtype=torch.float32, femur_labels: Sequence[int] | None = None,
                 trim_factor: float = 1.5, min_volume_ml: float = 5.0, min_elongation: float = 2.0,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.aligner = FemurAxisAlign(femur, modality, bone_threshold, max_angle_deg, keep_size,
                                      align_corners=align_corners, dtype=dtype, femur_labels=femur_labels,
                                      trim_factor=trim_factor, min_volume_ml=min_volume_ml,
                                      min_elongation=min_elongation)
        self.source_key = source_key
        self.femur_mask_key = femur_mask_key
        self.axis_key = axis_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        source = d[self.source_key if self.source_key is not None else self.first_key(d)]
        femur_mask = d[self.femur_mask_key] if self.femur_mask_key is not None else None
        axis = convert_to_numpy(d[self.axis_key]) if self.axis_key is not None else None
        if not isinstance(source, MetaTensor):
            source = MetaTensor(source)
        fit = self.aligner.fit(source, femur_mask, axis)
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            d[key] = self.aligner(d[key], fit=fit, mode=mode, padding_mode=padding_mode)
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.aligner.inverse(d[key])
        return d
